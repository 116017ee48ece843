"""Checkpoints as a folder: ``model.safetensors`` + ``config.json`` (never pickle).

``config.json`` holds the :class:`ChsConfig` (preprocessing included), how many CCR stages were trained,
and free-form training info. Loading can prune to the first k CCR stages of a model trained with more.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from chs.model.chs import CHSNet, build_model
from chs.model.config import ChsConfig
from chs.runtime.assets import resolve_model_path
from chs.runtime.errors import ChsError, first_line
from chs.runtime.files import read_json, replace_dir

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TRAIN_STATE = "optimizer.safetensors"  # optimizer and training state, written only by chs-train


def save_checkpoint(model: CHSNet, directory: str | os.PathLike, info: dict | None = None,
                    extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write weights and config atomically: a temp folder swapped in by :func:`replace_dir` (renames, the old
    folder deleted last), so a run killed while saving keeps a whole checkpoint, not a deleted one."""
    out = Path(directory)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS))
        if extra_tensors:
            save_file({k: v.detach().contiguous().cpu() for k, v in extra_tensors.items()}, str(tmp / TRAIN_STATE))
        meta = {"config": model.cfg.to_dict(), "info": info or {}}
        (tmp / CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True))
        for f in tmp.iterdir():
            f.chmod(0o644)
        replace_dir(tmp, out)  # also opens the private mkdtemp folder to others: a checkpoint is meant to be shared
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_checkpoint_config(directory: str | os.PathLike) -> dict:
    path = resolve_model_path(directory)
    cfg_file = path / CONFIG if path.is_dir() else path
    if not cfg_file.exists():
        raise ChsError(f"not a chs checkpoint: {path} (no {CONFIG})")
    meta = read_json(cfg_file, "checkpoint config")  # not UTF-8, not JSON, nested too deeply: one line
    try:
        ChsConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, ChsError):
            raise ChsError(f"{cfg_file}: {e}") from None
        raise ChsError(f"checkpoint config {cfg_file} is unreadable or not a chs config") from None
    return meta


def checkpoint_config(directory: str | os.PathLike) -> ChsConfig:
    """The :class:`ChsConfig` a checkpoint (folder or its ``config.json``) was trained with."""
    return ChsConfig.from_dict(read_checkpoint_config(directory)["config"])


def _kept(name: str, k: int) -> bool:
    """Tensors of the first k CCR stages and everything outside the cascade."""
    return not name.startswith("ccr.") or int(name.split(".")[1]) < k


def check_weights_match(weights: Path, cfg: ChsConfig, path: Path) -> None:
    """The safetensors header's names and shapes against the model the config describes, built on the
    'meta' device (no memory): a 98-point config over 68-point weights fails here, in one line."""
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in build_model(cfg).state_dict().items()}
    with safe_open(str(weights), framework="pt") as f:
        found = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys() if _kept(name, cfg.ccr_stages)}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        first = f"first missing '{missing[0]}'" if missing else f"first unexpected '{unexpected[0]}'"
        raise ChsError(f"checkpoint {path} does not match its config (missing {len(missing)}, unexpected "
                       f"{len(unexpected)} tensors; {first})")
    for name, shape in expected.items():
        if found[name] != shape:
            raise ChsError(f"checkpoint {path} does not match its config: '{name}' is {found[name]} in the weights "
                           f"but {shape} for the config (num_points {cfg.num_points})")


def check_finite(state: dict[str, torch.Tensor], source: Path) -> None:
    """Refuse weights holding NaN or infinity (e.g. from a diverged run): they only give nonsense later."""
    bad = [name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise ChsError(f"checkpoint weights {source} contain NaN or infinity ({len(bad)} tensor(s), first '{bad[0]}')")


def _damaged(file: Path, e: BaseException) -> ChsError:
    return ChsError(f"checkpoint weights {file} are truncated or corrupt ({first_line(e)})")


def read_tensors(file: Path, map_location: str = "cpu") -> dict[str, torch.Tensor]:
    """A checkpoint's safetensors file; a truncated or foreign one is one line, not safetensors' error."""
    try:
        return load_file(str(file), device=map_location)
    except (SafetensorError, OSError, ValueError) as e:
        raise _damaged(file, e) from None


def load_checkpoint(directory: str | os.PathLike, ccr: int | None = None, map_location: str = "cpu") -> CHSNet:
    """Load a checkpoint, keeping its first ``ccr`` CCR stages (None = all that were trained)."""
    path = resolve_model_path(directory)
    if path.is_file():
        path = path.parent
    cfg = checkpoint_config(path)
    trained = cfg.ccr_stages
    k = trained if ccr is None else ccr
    if k < 0 or k > trained:
        raise ChsError(f"--ccr {k} is not available: {path} was trained with {trained} CCR stage(s)")
    weights = path / WEIGHTS
    if not weights.exists():
        raise ChsError(f"checkpoint {path} has no {WEIGHTS}")
    try:
        check_weights_match(weights, cfg.replace(ccr_stages=k), path)  # before anything is allocated
    except (SafetensorError, OSError, ValueError) as e:
        if isinstance(e, ChsError):
            raise
        raise _damaged(weights, e) from None
    state = read_tensors(weights, map_location)
    check_finite(state, weights)
    model = build_model(cfg.replace(ccr_stages=k))
    keep = {name: t for name, t in state.items() if _kept(name, k)}
    missing, unexpected = model.load_state_dict(keep, strict=False)
    if missing or unexpected:
        raise ChsError(f"checkpoint {path} does not match its config "
                       f"(missing {len(missing)}, unexpected {len(unexpected)} tensors)")
    model.eval()
    return model


def read_train_state(directory: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the checkpoint's ``info``, its served weights, its training-state tensors) for ``--resume``."""
    path = resolve_model_path(directory)
    state = path / TRAIN_STATE
    if not path.is_dir():
        raise ChsError(f"--resume {path}: not a checkpoint folder")
    needed = (CONFIG, WEIGHTS, TRAIN_STATE)
    missing = [name for name in needed if not (path / name).is_file()]
    if missing:
        raise ChsError(f"--resume {path}: missing {', '.join(missing)} (only chs-train's run folders such as "
                       f"RUN/last can be resumed: they hold {', '.join(needed)})")
    info = read_checkpoint_config(path)["info"]
    kinds = {"epoch": int, "best": (int, float), "history": list, "optimizer": dict}
    if not isinstance(info, dict) or any(not isinstance(info.get(k), t) for k, t in kinds.items()):
        raise ChsError(f"--resume {path}: {CONFIG} lacks chs-train's training info ({', '.join(kinds)}); "
                       "the file is damaged or was not written by chs-train")
    served = read_tensors(path / WEIGHTS)
    check_finite(served, path / WEIGHTS)
    return info, served, read_tensors(state)
