"""Training state beside a checkpoint: optimizer, task weights, raw weights under EMA; saved and restored here.

The file names belong to :mod:`chs.model.checkpoint` (``TRAIN_STATE`` next to ``WEIGHTS``/``CONFIG``); this
module decides what goes into the state and how it comes back, so ``--resume`` continues bit-exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from chs.model.checkpoint import read_train_state
from chs.runtime.errors import ChsError


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{idx}.{k}"] = v
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], info: dict) -> None:
    state: dict = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for key, v in info["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": info["param_groups"]})


def train_state_tensors(module: Any, opt: torch.optim.Optimizer, ema: Any | None) -> tuple[dict, dict]:
    """(tensors for the state file, JSON-able optimizer info for the checkpoint's ``info``)."""
    tensors, opt_info = optimizer_tensors(opt)
    tensors["task.log_sigma"] = module.weights.log_sigma.detach()
    if getattr(module, "five", None) is not None:  # mixed supervision: the 5-point labels' learned offset
        tensors["task.five_offset"] = module.five.offset.detach()
    if ema is not None:  # model.safetensors holds the EMA; the raw weights go with the optimizer state
        tensors.update({f"raw.{k}": v for k, v in module.model.state_dict().items()})
        tensors["ema_n_averaged"] = ema.n_averaged.detach().clone()
    return tensors, opt_info


def restore_train_state(path: Path, module: Any, opt: torch.optim.Optimizer, ema: Any | None) -> dict:
    """Load weights, task weights, EMA and optimizer state of a saved run into the live objects; returns the
    checkpoint's ``info`` (epoch, best, history ...)."""
    info, served, extra = read_train_state(path)  # served: the EMA weights when the run used --ema
    raw = {k[4:]: v for k, v in extra.items() if k.startswith("raw.")}  # saved only when EMA is on
    module.model.load_state_dict(raw or served)
    module.weights.log_sigma.data.copy_(extra["task.log_sigma"])
    if getattr(module, "five", None) is not None:
        module.five.offset.data.copy_(extra["task.five_offset"])
    if ema is not None:
        if not raw:
            raise ChsError(f"--resume {path}: checkpoint has no EMA weights but --ema is set")
        ema.module.load_state_dict(served)
        ema.n_averaged.fill_(int(extra["ema_n_averaged"]))
    restore_optimizer(opt, extra, info["optimizer"])
    return info
