"""``chs-train``'s options: their one home, with their defaults (the CLI reads them from here). Torch-free."""

from __future__ import annotations

from dataclasses import dataclass, field

from chs.model.codec import DEFAULT_SIGMA
from chs.model.training.options_checks import check_train_options
from chs.runtime.options import option


@dataclass
class TrainOptions:
    data: str = option(help="Training set (pts folder, COCO json, WFLW txt, COFW mat, AFLW csv).")
    out: str = option("runs/chs", "Run folder: epoch_NNN/, last/ and best/ checkpoints.")
    val: str | None = option(None, "Validation set; best/ is chosen on its NME.")
    epochs: int = option(30, "Passes over --data.")
    batch_size: int = option(10, "Faces per training step.")
    lr: float = option(1e-2, "Peak learning rate.")
    optimizer: str = option("sgd", "sgd (the paper) or adam.")
    schedule: str = option("paper", "paper (x0.75 steps, scaled) or cosine.")
    momentum: float = 0.9
    weight_decay: float = 5e-4
    sigma: float = option(DEFAULT_SIGMA, "Gaussian heatmap sigma in heatmap cells.")
    seed: int = option(0, "Seed of weights, sampling and augmentation.")
    device: str = option("cpu", "cpu, cuda or cuda:N.")
    amp: str = option("none", "none, bf16 (CUDA or CPU) or fp16 (CUDA only).")
    channels_last: bool = option(False, "NHWC activations (faster convolutions on CPU).")
    threads: int = option(0, "torch CPU threads (0: all cores).")
    workers: int = option(0, "Data-loading worker processes.")
    max_samples: int = option(0, "Use only the first N training faces (0: all).")
    augment: bool = True
    flip: float = option(0.5, "Probability of a mirrored training crop (0: labels not mirror-symmetric; see "
                         "chs-eval's offset_x).")
    init: str | None = option(None, "Warm start: copy matching weights from this checkpoint.")
    ema: float = option(0.0, "EMA decay of weights and BN statistics; 0 = off.")
    init_lr_scale: float = option(1.0, "lr multiplier for the weights --init copied (new parts: the full lr).")
    # mixed supervision (model/training/mixed.py): 5-point faces beside the full ones
    data5: str | None = option(None, "5-point faces trained beside --data (mtfl5 folder; its train split): "
                               "mixed supervision.")
    val5: str | None = option(None, "5-point validation (mtfl5 folder; its val split), reported per epoch.")
    mix: float = option(0.5, "Share of each batch from --data5.")
    flip5: float = option(0.5, "Mirrored-crop probability for --data5 faces (MTFL's labels are symmetric).")
    offset_lr_scale: float = option(50.0, "lr multiplier of the --data5 labels' learned offset.")
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_train_options(self)  # library callers get the CLI's one-line errors, before any work
