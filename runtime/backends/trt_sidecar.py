"""The engine sidecar (``model.engine.json``): the ONE reader, writer and path rule.

An engine file alone says neither how its crops must be cut nor which TensorRT and GPU it runs on. The
sidecar stores, once each: the I/O contract (``contract``: crop rule, normalisation, tensors, precision
and the rest of the model metadata), the engine's facts (``contract["engine"]``: size, sha256, TensorRT
version, GPU and compute capability, batch profile) and how it was built (``onnx``, ``build``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from chs.runtime.artifact import ModelMeta
from chs.runtime.contract import contract_meta, validate_contract
from chs.runtime.errors import ChsError
from chs.runtime.files import atomic_output, read_json

SIDECAR_VERSION = 2


def sidecar_path_for(engine_path: str | os.PathLike) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class EngineSidecar:
    """A read, validated sidecar; ``data`` is the JSON as stored."""

    path: Path
    data: dict

    @property
    def contract(self) -> dict:
        return self.data["contract"]

    @property
    def engine(self) -> dict:
        return self.contract.get("engine") or {}

    @property
    def meta(self) -> ModelMeta:
        return contract_meta(self.contract)

    @property
    def inputs(self) -> list[dict]:
        return list(self.contract.get("inputs", []))

    @property
    def outputs(self) -> list[dict]:
        return list(self.contract.get("outputs", []))

    @property
    def profile(self) -> dict:
        return self.engine.get("profile") or {}

    @property
    def tensorrt_version(self) -> str:
        return str(self.engine.get("tensorrt_version", "unknown"))

    @property
    def compute_capability(self) -> str:
        return str((self.engine.get("gpu") or {}).get("compute_capability", "unknown"))

    def check_engine_bytes(self, engine_path: Path, data: bytes) -> None:
        """The engine file must be the one this sidecar describes (not truncated, not rebuilt alone)."""
        size, sha = self.engine.get("bytes"), self.engine.get("sha256")
        if (size is not None and size != len(data)) or (sha is not None and sha256_bytes(data) != sha):
            raise ChsError(f"engine file {engine_path} does not match its sidecar {self.path} "
                           "(truncated, or rebuilt without its sidecar)")

    def check_compatible(self, version: str, capability: str | None) -> None:
        """Engines load only on the TensorRT version and GPU architecture they were built with: name
        which one differs (before TensorRT fails on it with a less helpful message, or crashes)."""
        built = self.tensorrt_version
        if built != "unknown" and version != "unknown" and built != version:
            raise ChsError(f"engine {self.engine.get('file', self.path.name)} was built with TensorRT {built}; this is "
                           f"TensorRT {version}: rebuild it here (chs-export) or install TensorRT {built}")
        cc = self.compute_capability
        if capability is not None and cc != "unknown" and cc != capability:
            gpu = (self.engine.get("gpu") or {}).get("name", "another GPU")
            raise ChsError(f"engine {self.engine.get('file', self.path.name)} was built for compute capability {cc} "
                           f"({gpu}); this GPU has compute capability {capability}: rebuild the engine on this GPU")


def read_sidecar(engine_path: str | os.PathLike, sidecar_path: str | os.PathLike | None = None) -> EngineSidecar:
    """Read and validate the sidecar of ``engine_path`` (or ``sidecar_path``); one-line ChsError otherwise."""
    p = Path(sidecar_path) if sidecar_path is not None else sidecar_path_for(engine_path)
    if not p.is_file():
        raise ChsError(f"engine sidecar {p} is missing: it carries the crop rule and normalisation; "
                       "rebuild the engine with chs-export or pass sidecar_path")
    data = read_json(p, "engine sidecar")
    if not isinstance(data, dict):
        raise ChsError(f"engine sidecar {p} is not a JSON object")
    version = data.get("sidecar_version")
    if version != SIDECAR_VERSION:
        newer = isinstance(version, int) and version > SIDECAR_VERSION
        raise ChsError(
            f"engine sidecar {p} has sidecar_version {version}; this chs reads {SIDECAR_VERSION}: "
            + ("upgrade chs" if newer else "rebuild the engine with this chs-export")
        )
    contract = data.get("contract")
    if not contract:
        raise ChsError(f"engine sidecar {p} carries no model metadata (no 'contract')")
    validate_contract(contract, f"contract in {p}")
    if not isinstance(contract.get("meta"), dict):
        raise ChsError(f"engine sidecar {p} carries no model metadata ('meta' in its contract)")
    return EngineSidecar(p, data)


def sidecar_record(contract: dict, onnx: dict | None = None, build: dict | None = None) -> dict:
    """The JSON a sidecar holds: the contract (with the engine facts in ``contract["engine"]``), plus
    where the engine came from."""
    return {"sidecar_version": SIDECAR_VERSION, "contract": contract, "onnx": onnx or {}, "build": build or {}}


def write_engine_and_sidecar(engine_path: str | os.PathLike, data: bytes, record: dict) -> None:
    """Write both files or neither: both go to temporary names first, then replace the old pair (sidecar
    first: the inner block ends first; a crash between the two renames leaves a pair whose sha256
    disagrees, which the runner refuses rather than running the wrong engine)."""
    engine_path = Path(engine_path)
    with atomic_output(engine_path) as tmp_engine, atomic_output(sidecar_path_for(engine_path)) as tmp_side:
        tmp_engine.write_bytes(data)
        tmp_side.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
