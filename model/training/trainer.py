"""The training loop behind ``chs-train``: multi-task loss (Eq. 8), checkpoints, resume, DDP, AMP."""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from chs.model.checkpoint import CONFIG, WEIGHTS, save_checkpoint
from chs.model.chs import CHSNet, build_model
from chs.model.config import ChsConfig
from chs.model.runner import TorchRunner
from chs.model.training.augment import AugmentConfig
from chs.model.training.data import FaceTrainSet
from chs.model.training.losses import AdaptiveTaskWeights, adaptive_wing_loss, log_wing_loss, task_alphas
from chs.model.training.mixed import (
    FivePointTerms,
    FivePointTrainSet,
    MixedBatchSampler,
    MixedTrainSet,
    mixed_losses,
    with_offset_group,
)
from chs.model.training.options import TrainOptions
from chs.model.training.options_checks import check_finite_loss, check_finite_weights
from chs.model.training.state import restore_train_state, train_state_tensors
from chs.runtime.assets import resolve_model_path
from chs.runtime.datasets import FaceSample, load_dataset
from chs.runtime.errors import ChsError
from chs.runtime.evaluate import dataset_scheme, load_images, predict_samples, sample_box, stage_summary
from chs.runtime.metrics import summarize
from chs.runtime.schemes import get_scheme

PAPER_EPOCHS = 340  # the paper's schedule, scaled to the configured epoch count
PAPER_MILESTONES = (120, 200, 240, 245, 250, 255, 260, 265, 270, 275, 280, 285, 290, 295, 300, 305, 310, 315,
                    320, 325, 330)


def lr_at(opts: TrainOptions, epoch: float) -> float:
    """Learning rate at a (fractional) epoch."""
    if opts.schedule == "cosine":
        return opts.lr * 0.5 * (1 + math.cos(math.pi * min(epoch / opts.epochs, 1.0)))
    steps = sum(1 for m in PAPER_MILESTONES if epoch >= m * opts.epochs / PAPER_EPOCHS)
    return opts.lr * 0.75**steps


class TrainModule(nn.Module):
    """Model + adaptive task weights; forward returns the total loss and its parts (one DDP unit)."""

    def __init__(self, model: CHSNet, five: FivePointTerms | None = None):
        super().__init__()
        self.model = model
        self.five = five
        self.weights = AdaptiveTaskWeights(task_alphas(model.cfg.ccr_stages) + ([1.0] if five is not None else []))

    def forward(self, x, maps, weight, target, five=None, kind=None):
        out = self.model(x)
        if self.five is not None:
            losses = mixed_losses(out, maps, weight, target, five, kind, self.five, self.model.cfg.ccr_stages)
            return self.weights(losses), [float(v.detach()) for v in losses]
        hm = sum(adaptive_wing_loss(h.float(), maps, weight) for h in out["heatmaps"]) / len(out["heatmaps"])
        losses = [hm] + [log_wing_loss(lm.float(), target) for lm in out["landmarks"][1:]]
        return self.weights(losses), [float(v.detach()) for v in losses]


def _ema_model(model: CHSNet, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """torch's EMA of weights and buffers (BN running statistics are averaged too, which steadies them)."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    ema.module.cfg = model.cfg
    return ema


def _autocast(opts: TrainOptions) -> torch.autocast | None:
    """Mixed precision: bf16 on CUDA or on CPUs with bf16 units (AMX/AVX-512 BF16), fp16 on CUDA only
    (check_train_options refuses fp16 elsewhere)."""
    if opts.amp == "none":
        return None
    if opts.amp == "bf16":
        return torch.autocast("cuda" if opts.device.startswith("cuda") else "cpu", dtype=torch.bfloat16)
    return torch.autocast("cuda", dtype=torch.float16)


def _optimizer(opts: TrainOptions, params) -> torch.optim.Optimizer:
    if opts.optimizer == "sgd":
        return torch.optim.SGD(params, lr=opts.lr, momentum=opts.momentum, weight_decay=opts.weight_decay)
    if opts.optimizer == "adam":
        return torch.optim.Adam(params, lr=opts.lr)
    raise ChsError(f"unknown optimizer '{opts.optimizer}' (sgd or adam)")


def check_data_scheme(samples: list[FaceSample], what: str, model_scheme: str, five: bool = False) -> None:
    """Refuse a set whose faces lack the points the model trains on (``five``: a 5-point set, --data5/--val5):
    98-point indexing of 68-point labels fails deep in the loader, a folder mixing 5- and 68-point files on
    a box. chs-eval's rule, :func:`chs.runtime.evaluate.dataset_scheme`, decides."""
    if not samples:
        return
    try:
        compared = dataset_scheme(samples, model_scheme)
    except ChsError as e:
        raise ChsError(f"{what}: {e}") from None
    want = "5" if five else model_scheme
    if compared != want:
        hint = "takes 5-point faces" if five else f"needs {model_scheme}-point faces (5-point ones: --data5, --val5)"
        raise ChsError(f"{what}: dataset has {samples[0].scheme}-point landmarks; it {hint}")


_NO_EFFECT = ("out", "threads", "workers", "init", "extra")  # options that leave the trained weights as they are


def changed_options(before: dict | None, opts: TrainOptions) -> str:
    """'--epochs 30 (the run: 3), ...': the options of a resumed run that differ from those it was started with."""
    if not isinstance(before, dict):
        return ""
    now = asdict(opts)
    return ", ".join(f"--{k.replace('_', '-')} {now[k]} (the run: {before[k]})" for k in now
                     if k in before and k not in _NO_EFFECT and before[k] != now[k])


def check_run_folder(out: str, resume: str | None) -> None:
    """Refuse an --out that holds another run's checkpoints unless this run resumes from one of them: a new
    run there replaced last/ and best/ and left the old run's later epoch_NNN/ beside its own."""
    root = Path(out)
    if not root.is_dir():
        return
    held = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
                  and (d.name in ("last", "best") or d.name.startswith("epoch_")) and (d / CONFIG).is_file())
    if not held or (resume and resolve_model_path(resume).resolve().parent == root.resolve()):
        return
    raise ChsError(f"--out {out} holds a training run ({', '.join(held[:3])}{', ...' if len(held) > 3 else ''}); "
                   f"continue it with --resume {root / 'last'}, or choose another --out")


class Trainer:
    def __init__(self, cfg: ChsConfig, opts: TrainOptions, resume: str | None = None, log=print):
        self.cfg, self.opts, self.log = cfg.validate(), opts, log
        check_run_folder(opts.out, resume)
        self._setup_process()
        sets = self._read_sets()
        self._build(resume)
        self._load_data(sets)
        self.net = self.module
        if self.world > 1:
            self.net = nn.parallel.DistributedDataParallel(self.module)

    def _setup_process(self) -> None:
        """Distributed rank/world (torchrun's environment), CPU threads and the seed."""
        opts = self.opts
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("gloo" if opts.device == "cpu" else "nccl")
        if opts.threads:
            torch.set_num_threads(opts.threads)
        torch.manual_seed(opts.seed)

    def _build(self, resume: str | None) -> None:
        """Model (warm-started or resumed), EMA copy, optimizer and the run's position."""
        opts = self.opts
        five = FivePointTerms(self.cfg, opts.sigma) if opts.data5 else None
        self.module = TrainModule(build_model(self.cfg), five).to(opts.device)
        if opts.init and not resume:
            self._init_from(Path(opts.init))
        if opts.channels_last:
            self.module.to(memory_format=torch.channels_last)
        self.ema = _ema_model(self.module.model, opts.ema) if opts.ema else None
        self.opt = _optimizer(opts, with_offset_group(self._param_groups(), five, opts.offset_lr_scale))
        self.start_epoch, self.best, self.history = 0, math.inf, []
        if resume:
            self._resume(Path(resume))

    def _read_sets(self) -> dict[str, list[FaceSample] | None]:
        """Every set's annotations (the validation sets on rank 0 only), their landmark schemes checked
        against the model's before a model is built or an image is read."""
        opts, scheme, rank0 = self.opts, self.cfg.scheme, self.rank == 0
        cut = slice(opts.max_samples or None)
        sets = {"--data": load_dataset(opts.data)[cut],
                "--data5": load_dataset(opts.data5, "train")[cut] if opts.data5 else None,
                "--val": load_dataset(opts.val) if opts.val and rank0 else None,
                "--val5": load_dataset(opts.val5, "val") if opts.val5 and rank0 else None}
        paths = {"--data": opts.data, "--data5": opts.data5, "--val": opts.val, "--val5": opts.val5}
        for option, samples in sets.items():
            if samples is not None:
                check_data_scheme(samples, f"{option} {paths[option]}", scheme, five=option.endswith("5"))
        return sets

    def _load_data(self, sets: dict[str, list[FaceSample] | None]) -> None:
        """The training set (augmented, in memory) and, on rank 0, the validation images."""
        opts, cfg = self.opts, self.cfg
        self.train_set = FaceTrainSet(sets["--data"], cfg, opts.sigma, opts.seed, self._augment_config())
        if opts.data5:
            self.train_set = self._mixed_set(self.train_set, sets["--data5"])
        if self.train_set.skipped:
            self.log(f"skipped {len(self.train_set.skipped)} unreadable image(s) in {opts.data}")
        if len(self.train_set) == 0:
            raise ChsError(f"no usable training images in {opts.data}")
        self._check_batches()
        # (kept samples, images), loaded on rank 0 only
        self.val = load_images(sets["--val"])[:2] if sets["--val"] is not None else None
        self.val5 = load_images(sets["--val5"])[:2] if sets["--val5"] is not None else None

    def _check_batches(self) -> None:
        """Refuse a batch larger than the faces: the loader drops the incomplete batch, so the run would take
        no step and save the untrained model as its checkpoints."""
        opts, n = self.opts, len(self.train_set)
        if isinstance(self.train_set, MixedTrainSet):  # its sampler says what its batches need
            full, five = len(self.train_set.full), len(self.train_set.five)
            MixedBatchSampler(full, five, opts.batch_size, opts.mix, opts.seed, 0)
            return
        per = math.ceil(n / self.world)  # DistributedSampler's share of one process
        if opts.batch_size > per:
            where = f" per process ({n} over {self.world} processes)" if self.world > 1 else ""
            raise ChsError(f"--batch-size {opts.batch_size} is more than the {per} training faces{where}; "
                           "lower --batch-size")

    def _augment_config(self) -> AugmentConfig | None:
        return AugmentConfig(flip=self.opts.flip) if self.opts.augment else None

    def _mixed_set(self, full: FaceTrainSet, five: list[FaceSample]) -> MixedTrainSet:
        if self.world > 1:
            raise ChsError("mixed supervision (--data5) runs in one process; DDP is not supported with it")
        aug = AugmentConfig(flip=self.opts.flip5) if self.opts.augment else None
        return MixedTrainSet(full, FivePointTrainSet(five, self.cfg, self.opts.seed, aug))

    def _param_groups(self) -> list[dict]:
        """One group, or with --init-lr-scale two: the warm-started weights (slowed) and the new parts.

        A warm-started network restarted at the new parts' lr is knocked out of its minimum and spends the
        run re-converging; slowing only its weights keeps it there while the new CCR stages learn.
        """
        scale = self.opts.init_lr_scale
        if scale == 1.0 or not self.opts.init:
            return [{"params": list(self.module.parameters()), "lr_scale": 1.0}]
        from safetensors import safe_open

        weights = Path(self.opts.init) / WEIGHTS
        if not weights.is_file():
            raise ChsError(f"--init {self.opts.init}: no {WEIGHTS} (needed for --init-lr-scale)")
        with safe_open(str(weights), framework="pt") as f:
            copied = set(f.keys())
        old, new = [], []
        for name, p in self.module.named_parameters():
            (old if name.startswith("model.") and name[6:] in copied else new).append(p)
        return [{"params": old, "lr_scale": scale}, {"params": new, "lr_scale": 1.0}]

    def _init_from(self, path: Path) -> None:
        """Copy every weight whose name and shape match; new parts (e.g. added CCR stages) keep their init."""
        from chs.model.checkpoint import load_checkpoint

        source = load_checkpoint(path)
        if source.cfg.scheme != self.cfg.scheme:
            raise ChsError(f"--init {path}: scheme '{source.cfg.scheme}' differs from '{self.cfg.scheme}'")
        src = source.state_dict()
        own = self.module.model.state_dict()
        clash = sorted(k for k in src if k in own and src[k].shape != own[k].shape)
        if clash:
            raise ChsError(f"--init {path}: {len(clash)} weight(s) differ in shape, first '{clash[0]}' "
                           f"{tuple(src[clash[0]].shape)} vs {tuple(own[clash[0]].shape)}")
        matched = {k: v for k, v in src.items() if k in own}
        if not matched:
            raise ChsError(f"--init {path}: no weight matches this model")
        self.module.model.load_state_dict(matched, strict=False)
        fresh = len(own) - len(matched)
        self.log(f"initialised {len(matched)} tensors from {path}; {fresh} new")

    def _resume(self, path: Path) -> None:
        info = restore_train_state(path, self.module, self.opt, self.ema, self.opts)
        self.start_epoch, self.best, self.history = info["epoch"] + 1, info["best"], info["history"]
        changed = changed_options(info.get("options"), self.opts)
        if changed:  # options are not read back from the run: a forgotten --epochs is the default's 30
            self.log(f"resuming {path} at epoch {self.start_epoch} with options other than the run's: {changed}")

    def _loader(self, epoch: int) -> DataLoader:
        self.train_set.set_epoch(epoch)
        if isinstance(self.train_set, MixedTrainSet):
            batches = MixedBatchSampler(len(self.train_set.full), len(self.train_set.five), self.opts.batch_size,
                                        self.opts.mix, self.opts.seed, epoch)
            return DataLoader(self.train_set, batch_sampler=batches, num_workers=self.opts.workers)
        if self.world > 1:
            sampler = DistributedSampler(self.train_set, self.world, self.rank, shuffle=True, seed=self.opts.seed)
            sampler.set_epoch(epoch)
        else:
            g = torch.Generator().manual_seed(self.opts.seed * 1000 + epoch)
            sampler = RandomSampler(self.train_set, generator=g)
        return DataLoader(self.train_set, batch_size=self.opts.batch_size, sampler=sampler, drop_last=True,
                          num_workers=self.opts.workers)

    def validate(self) -> dict | None:
        """--val's metrics (``nme_iod`` ...) and --val5's (under ``five``), each when given: --val5 is reported
        with or without --val. None when neither is given."""
        if self.val is None and self.val5 is None:
            return None
        model = self.served_model
        runner = TorchRunner(model, self.opts.device)
        model.train(False)
        res: dict = {}
        if self.val is not None:
            kept, images = self.val
            pred = predict_samples(runner, images, [sample_box(s, runner.meta) for s in kept], 64)
            res = stage_summary(pred, np.stack([s.landmarks for s in kept]), self.cfg.scheme)
        if self.val5 is not None:  # 5-point validation: the model's points reduced to 5, set-wide shift removed
            kept5, images5 = self.val5
            pred5 = predict_samples(runner, images5, [sample_box(s, runner.meta) for s in kept5], 64)["landmarks"]
            five = summarize(get_scheme(self.cfg.scheme).to_five(pred5), np.stack([s.landmarks for s in kept5]), "5",
                             shift="own")
            res["five"] = {k: five[k] for k in ("nme", "nme_shifted", "fr_10", "shift_x", "shift_y")}
        self.module.model.train(True)
        return res

    @property
    def served_model(self) -> CHSNet:
        """The weights that are validated and saved as model.safetensors: the EMA copy when enabled."""
        return self.ema.module if self.ema is not None else self.module.model

    def _save(self, name: str, epoch: int, val: dict | None) -> None:
        tensors, opt_info = train_state_tensors(self.module, self.opt, self.ema)
        info = {"epoch": epoch, "best": self.best, "history": self.history, "val": val,
                "optimizer": opt_info, "options": asdict(self.opts)}
        save_checkpoint(self.served_model, Path(self.opts.out) / name, info, tensors)

    def fit(self, progress=None, stop_after: int | None = None) -> dict:
        """Train to ``opts.epochs`` (or stop after epoch index ``stop_after - 1``, as an interruption would)."""
        opts = self.opts
        autocast = _autocast(opts)
        scaler = torch.amp.GradScaler("cuda") if opts.amp == "fp16" and autocast else None
        self.module.train()
        for epoch in range(self.start_epoch, min(opts.epochs, stop_after or opts.epochs)):
            loader = self._loader(epoch)
            t0, seen, total, parts_sum = time.time(), 0, 0.0, None
            for step, (x, *labels) in enumerate(loader):
                lr = lr_at(opts, epoch + step / max(len(loader), 1))
                for g in self.opt.param_groups:
                    g["lr"] = lr * g.get("lr_scale", 1.0)
                dev = opts.device
                x, labels = x.to(dev), [t.to(dev) for t in labels]
                if opts.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast or nullcontext():
                    loss, parts = self.net(x, *labels)
                check_finite_loss(float(loss.detach()), epoch, step)  # before a NaN gradient reaches the weights
                self.opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(self.opt)
                    scaler.update()
                else:
                    loss.backward()
                    self.opt.step()
                check_finite_weights(self.module.parameters(), epoch, step)
                if self.ema is not None:
                    self.ema.update_parameters(self.module.model)
                seen += len(x)
                total += float(loss.detach()) * len(x)
                parts_sum = parts if parts_sum is None else [a + b for a, b in zip(parts_sum, parts, strict=True)]
                if progress is not None:
                    progress(epoch, step + 1, len(loader), float(loss.detach()), lr)
            train_s = time.time() - t0
            val = self.validate() if self.rank == 0 else None
            nme = None if val is None else val.get("nme_iod")  # None without --val (e.g. --val5 only)
            rec = {"epoch": epoch, "loss": total / max(seen, 1), "lr": lr_at(opts, epoch + 1),
                   "parts": [p / max(len(loader), 1) for p in (parts_sum or [])],
                   "images_per_s": seen * self.world / train_s, "epoch_s": time.time() - t0,
                   "val_nme_iod": nme,
                   "val_nme_iod_per_stage": None if nme is None else val.get("nme_iod_per_stage"),
                   # mean signed error (IOD units): a steady shift means the labels' convention is not learnt
                   "val_offset": None if nme is None else [val["offset_x"], val["offset_y"]]}
            if self.module.five is not None:  # the 5-point labels' learned offset, in crop pixels
                rec["five_offset_px"] = (self.module.five.offset.detach().cpu() * self.cfg.heatmap_stride).tolist()
            if self.module.five is not None or self.opts.val5:  # --val5 is reported with or without --data5
                rec["val5"] = None if val is None else val.get("five")
            self.history.append(rec)
            if self.rank == 0:
                improved = nme is not None and nme < self.best
                if improved:
                    self.best = nme
                self._save(f"epoch_{epoch:03d}", epoch, val)
                self._save("last", epoch, val)
                if improved or nme is None:
                    self._save("best", epoch, val)
                self.log(json.dumps(rec))
            if self.world > 1:
                dist.barrier()
        return {"best_val_nme_iod": None if math.isinf(self.best) else self.best, "history": self.history}
