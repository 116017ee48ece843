"""Training state beside a checkpoint: optimizer, task weights, raw weights under EMA; saved and restored here.

The file names belong to :mod:`chs.model.checkpoint` (``TRAIN_STATE`` next to ``WEIGHTS``/``CONFIG``); this
module decides what goes into the state and how it comes back, so ``--resume`` continues bit-exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from chs.model.checkpoint import checkpoint_config, read_train_state
from chs.runtime.errors import ChsError, first_line


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


# options that shape the saved state: (name, how it is compared, the option to repeat)
_STATE_OPTIONS = (
    ("optimizer", lambda v: v, "--optimizer"),
    ("ema", bool, "--ema (on or off)"),
    ("data5", bool, "--data5 (given or not)"),
)


def check_resumable(path: Path, info: dict, cfg: Any, opts: Any | None) -> None:
    """Refuse to resume a run into another model (preset, --ccr, --backward) or with options whose state the
    checkpoint does not hold (another optimizer, EMA or mixed supervision switched on or off): one line, not
    a state-dict error deep in torch, nor a run that silently drops its EMA."""
    saved = checkpoint_config(path).to_dict()
    for name, value in cfg.to_dict().items():
        if saved.get(name) != value:
            raise ChsError(
                f"--resume {path}: the checkpoint's model has {name}={saved.get(name)!r}, this run's "
                f"{value!r} (resume with the run's --preset, --ccr and --backward)"
            )
    before = info.get("options")
    if opts is None or not isinstance(before, dict):
        return
    for name, key, option in _STATE_OPTIONS:
        if name in before and key(before[name]) != key(getattr(opts, name)):
            raise ChsError(
                f"--resume {path}: the run was trained with {name}={before[name]!r}, this one has "
                f"{getattr(opts, name)!r}; resume with the same {option}"
            )


def restore_train_state(
    path: Path, module: Any, opt: torch.optim.Optimizer, ema: Any | None, opts: Any | None = None
) -> dict:
    """Load weights, task weights, EMA and optimizer state of a saved run into the live objects; returns the
    checkpoint's ``info`` (epoch, best, history ...). ``opts`` (the run's TrainOptions) are checked against
    the saved run's first."""
    info, served, extra = read_train_state(path)  # served: the EMA weights when the run used --ema
    check_resumable(path, info, module.model.cfg, opts)
    raw = {k[4:]: v for k, v in extra.items() if k.startswith("raw.")}  # saved only when EMA is on
    if ema is not None and not raw:
        raise ChsError(f"--resume {path}: checkpoint has no EMA weights but --ema is set")
    try:
        module.model.load_state_dict(raw or served)
        module.weights.log_sigma.data.copy_(extra["task.log_sigma"])
        if getattr(module, "five", None) is not None:
            module.five.offset.data.copy_(extra["task.five_offset"])
        if ema is not None:
            ema.module.load_state_dict(served)
            ema.n_averaged.fill_(int(extra["ema_n_averaged"]))
        restore_optimizer(opt, extra, info["optimizer"])
    except (KeyError, ValueError, RuntimeError) as e:  # a state written by other options or damaged
        raise ChsError(
            f"--resume {path}: its training state does not fit this run ({type(e).__name__}: "
            f"{first_line(e)}); resume with the options the run was started with"
        ) from None
    return info
