"""``chs-train``'s options: their one home, with their defaults (the CLI reads them from here). Torch-free."""

from __future__ import annotations

from dataclasses import dataclass, field

from chs.model.codec import DEFAULT_SIGMA
from chs.model.training.options_checks import check_train_options


@dataclass
class TrainOptions:
    data: str
    out: str
    val: str | None = None
    epochs: int = 30
    batch_size: int = 10
    lr: float = 1e-2
    optimizer: str = "sgd"  # "sgd" (the paper) or "adam"
    schedule: str = "paper"  # "paper" (x0.75 steps) or "cosine"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    sigma: float = DEFAULT_SIGMA
    seed: int = 0
    device: str = "cpu"
    amp: str = "none"  # "bf16" autocast (CUDA or CPU) / "fp16" autocast (CUDA)
    channels_last: bool = False  # NHWC activations: oneDNN's faster convolution layout on CPU
    threads: int = 0  # torch CPU threads; 0 = all cores
    workers: int = 0
    max_samples: int = 0  # use only the first N training samples (0 = all)
    augment: bool = True
    flip: float = 0.5  # probability of a mirrored crop; 0 where the labels are not mirror-symmetric
    init: str | None = None  # warm start: checkpoint whose matching weights initialise the model
    ema: float = 0.0  # decay of an exponential moving average of weights and BN statistics (0 = off)
    init_lr_scale: float = 1.0  # lr multiplier for the weights --init copied (new parts train at the full lr)
    # mixed supervision (model/training/mixed.py): 5-point faces beside the full ones
    data5: str | None = None  # 5-point training set (mtfl5 folder; its "train" split)
    val5: str | None = None  # 5-point validation set (mtfl5 folder; its "val" split), reported per epoch
    mix: float = 0.5  # share of each batch drawn from data5
    flip5: float = 0.5  # probability of a mirrored crop for the 5-point faces (MTFL's labels are symmetric)
    offset_lr_scale: float = 50.0  # lr multiplier of the 5-point labels' learned offset
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_train_options(self)  # library callers get the CLI's one-line errors, before any work
