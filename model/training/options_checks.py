"""Checks of training options, run when TrainOptions is made, so library callers and chs-train get the same
one-line errors before any data is read or any model is built (``--lr nan`` once trained a run of NaNs)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from chs.runtime.errors import ChsError
from chs.runtime.files import check_output_dir
from chs.runtime.options import finite_number, whole_number

MAX_SEED = 2**32  # seeds are 0 .. MAX_SEED - 1


def check_device(device: str) -> None:
    """'cpu' or 'cuda[:N]' with device N present (torch is imported only for CUDA devices)."""
    if device == "cpu":
        return
    if not isinstance(device, str) or not (device == "cuda" or device.startswith("cuda:")):
        raise ChsError(f"--device must be cpu, cuda or cuda:N, got '{device}'")
    index_text = device[5:] or "0"
    if not index_text.isdigit():
        raise ChsError(f"--device must be cpu, cuda or cuda:N, got '{device}'")
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if int(index_text) >= count:
        have = f"{count} CUDA device(s) ({', '.join(f'cuda:{i}' for i in range(count))})" if count else "no CUDA device"
        raise ChsError(f"--device {device}: this machine has {have}")


def check_train_options(o: Any) -> None:
    """ChsError naming the first option out of range (o: a TrainOptions)."""
    lr = finite_number(o.lr, "--lr")
    if lr <= 0:
        raise ChsError(f"--lr must be > 0, got {o.lr}")
    for name, value, lo in (("--epochs", o.epochs, 1), ("--batch-size", o.batch_size, 1), ("--threads", o.threads, 0),
                            ("--workers", o.workers, 0), ("--max-samples", o.max_samples, 0), ("--seed", o.seed, 0)):
        whole_number(value, name, lo)
    if o.seed >= MAX_SEED:  # seed * 1000 + epoch seeds a torch.Generator, which takes 64-bit seeds
        raise ChsError(f"--seed must be < 2**32 ({MAX_SEED}), got {o.seed}")
    sigma = finite_number(o.sigma, "--sigma")
    if not 0 < sigma <= 16:
        raise ChsError(f"--sigma must be in (0, 16] heatmap cells, got {o.sigma}")
    if not 0.0 <= finite_number(o.flip, "--flip") <= 1.0:
        raise ChsError(f"--flip must be a probability in [0, 1], got {o.flip}")
    if not 0.0 <= finite_number(o.ema, "--ema") < 1.0:
        raise ChsError(f"--ema must be in (0, 1), or 0 for off; got {o.ema}")
    if finite_number(o.init_lr_scale, "--init-lr-scale") <= 0:
        raise ChsError(f"--init-lr-scale must be > 0, got {o.init_lr_scale}")
    if not 0.0 < finite_number(o.mix, "--mix") < 1.0:
        raise ChsError(f"--mix must be in (0, 1), got {o.mix}")
    if not 0.0 <= finite_number(o.flip5, "--flip5") <= 1.0:
        raise ChsError(f"--flip5 must be a probability in [0, 1], got {o.flip5}")
    if finite_number(o.offset_lr_scale, "--offset-lr-scale") <= 0:
        raise ChsError(f"--offset-lr-scale must be > 0, got {o.offset_lr_scale}")
    if finite_number(o.momentum, "momentum") < 0 or finite_number(o.weight_decay, "weight_decay") < 0:
        raise ChsError("momentum and weight_decay must be >= 0")
    if o.optimizer not in ("sgd", "adam"):
        raise ChsError(f"unknown optimizer '{o.optimizer}' (sgd or adam)")
    if o.schedule not in ("paper", "cosine"):
        raise ChsError(f"unknown schedule '{o.schedule}' (paper or cosine)")
    if o.amp not in ("none", "bf16", "fp16"):
        raise ChsError(f"--amp must be none, bf16 or fp16, got '{o.amp}'")
    check_device(o.device)
    if o.amp == "fp16" and o.device == "cpu":
        raise ChsError(f"--amp fp16 is not supported on {o.device} (none, bf16; fp16 needs CUDA)")
    check_output_dir(o.out, "--out")  # an existing file there would fail only after the first epoch


def check_finite_loss(loss: float, epoch: int, step: int) -> None:
    """Stop a diverged run at once: every later step and checkpoint would be NaN."""
    if not math.isfinite(loss):
        raise ChsError(f"training diverged: the loss became {loss} at epoch {epoch} step {step} "
                       "(lower --lr; checkpoints written before this point are kept)")


def check_finite_weights(params: Iterable, epoch: int, step: int) -> None:
    """After an optimizer step: an lr too large for the model overflows the weights even from a finite loss,
    and the next forward pass would fail somewhere deep (non-finite RoiAlign coordinates)."""
    import torch

    tensors = [p.detach() for p in params]
    if tensors and not bool(torch.stack(torch._foreach_norm(tensors)).isfinite().all()):
        raise ChsError(f"training diverged: the weights became NaN or infinite at epoch {epoch} step {step} "
                       "(lower --lr; checkpoints written before this point are kept)")


__all__ = ["check_device", "check_finite_loss", "check_finite_weights", "check_train_options"]
