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
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from chs.model.chs import CHSNet, build_model
from chs.model.config import ChsConfig
from chs.runtime.assets import resolve_model_path
from chs.runtime.errors import ChsError

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TRAIN_STATE = "optimizer.safetensors"  # optimizer and training state, written only by chs-train


def save_checkpoint(model: CHSNet, directory: str | os.PathLike, info: dict | None = None,
                    extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write weights and config atomically (a temp folder renamed into place)."""
    out = Path(directory)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS))
        if extra_tensors:
            save_file({k: v.detach().contiguous().cpu() for k, v in extra_tensors.items()},
                      str(tmp / TRAIN_STATE))
        meta = {"config": model.cfg.to_dict(), "info": info or {}}
        (tmp / CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True))
        tmp.chmod(0o755)  # mkdtemp makes the folder private; a checkpoint is meant to be shared
        for f in tmp.iterdir():
            f.chmod(0o644)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_checkpoint_config(directory: str | os.PathLike) -> dict:
    path = resolve_model_path(directory)
    cfg_file = path / CONFIG if path.is_dir() else path
    if not cfg_file.exists():
        raise ChsError(f"not a chs checkpoint: {path} (no {CONFIG})")
    try:
        meta = json.loads(cfg_file.read_text())
        ChsConfig.from_dict(meta["config"])
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ChsError(f"checkpoint config {cfg_file} is unreadable or not a chs config") from None
    return meta


def load_checkpoint(directory: str | os.PathLike, ccr: int | None = None,
                    map_location: str = "cpu") -> CHSNet:
    """Load a checkpoint, keeping its first ``ccr`` CCR stages (None = all that were trained)."""
    path = resolve_model_path(directory)
    if path.is_file():
        path = path.parent
    meta = read_checkpoint_config(path)
    cfg = ChsConfig.from_dict(meta["config"])
    trained = cfg.ccr_stages
    k = trained if ccr is None else ccr
    if k < 0 or k > trained:
        raise ChsError(f"--ccr {k} is not available: {path} was trained with {trained} CCR stage(s)")
    weights = path / WEIGHTS
    if not weights.exists():
        raise ChsError(f"checkpoint {path} has no {WEIGHTS}")
    try:
        state = load_file(str(weights), device=map_location)
    except (SafetensorError, OSError, ValueError) as e:
        raise ChsError(f"checkpoint weights {weights} are truncated or corrupt ({str(e).splitlines()[0]})") from None
    model = build_model(cfg.replace(ccr_stages=k))
    keep = {name: t for name, t in state.items()
            if not name.startswith("ccr.") or int(name.split(".")[1]) < k}
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
    if not state.is_file():
        raise ChsError(f"--resume {path}: no {TRAIN_STATE} (only chs-train's run folders can be resumed)")
    info = read_checkpoint_config(path)["info"]
    return info, load_file(str(path / WEIGHTS)), load_file(str(state))
