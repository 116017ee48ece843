"""Training: resume equivalence, torchrun DDP on CPU, unreadable images, chs-eval on a checkpoint."""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from chs.model.config import get_preset
from chs.model.training.trainer import Trainer, TrainOptions, lr_at


def _opts(data, out, **kw):
    base = dict(data=str(data), out=str(out), epochs=2, batch_size=2, lr=1e-3, optimizer="adam",
                schedule="cosine", sigma=1.5, seed=3, threads=1)
    base.update(kw)
    return TrainOptions(**base)


@pytest.fixture()
def faces(fixtures_dir, tmp_path):
    """The four real 68-point fixture faces as a .pts folder."""
    dst = tmp_path / "faces"
    shutil.copytree(fixtures_dir / "pts", dst)
    return dst


def test_resume_gives_the_same_weights(faces, tmp_path):
    cfg = get_preset("tiny")
    Trainer(cfg, _opts(faces, tmp_path / "straight")).fit()
    Trainer(cfg, _opts(faces, tmp_path / "split")).fit(stop_after=1)  # interrupted after epoch 0
    Trainer(cfg, _opts(faces, tmp_path / "split"), resume=str(tmp_path / "split" / "last")).fit()
    a = load_file(str(tmp_path / "straight" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "last" / "model.safetensors"))
    init = load_file(str(tmp_path / "split" / "epoch_000" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert any(not np.array_equal(a[k], init[k]) for k in a if "running" not in k)  # epoch 2 changed weights
    hist = json.loads((tmp_path / "split" / "last" / "config.json").read_text())["info"]["history"]
    assert [h["epoch"] for h in hist] == [0, 1]


def test_unreadable_image_is_skipped_and_counted(faces, tmp_path):
    (faces / "einstein.jpg").write_bytes(b"not a jpeg at all")
    logs = []
    with pytest.warns(UserWarning, match="einstein.jpg"):
        trainer = Trainer(get_preset("tiny"), _opts(faces, tmp_path / "run", epochs=1), log=logs.append)
    assert len(trainer.train_set) == 3
    assert any("skipped 1 unreadable image" in m for m in logs)


def test_paper_schedule_is_scaled_to_the_epoch_count():
    opts = TrainOptions(data="x", out="y", epochs=34, lr=1.0)
    assert lr_at(opts, 0) == 1.0
    assert lr_at(opts, 11.9) == 1.0 and lr_at(opts, 12.0) == 0.75  # paper epoch 120 of 340
    assert lr_at(opts, 20.0) == pytest.approx(0.75**2)  # paper epoch 200


def test_torchrun_two_cpu_processes(faces, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
           "-m", "chs", "train", "--data", str(faces), "--out", str(out), "--preset", "tiny", "--epochs", "1",
           "--batch-size", "2", "--optimizer", "adam", "--lr", "1e-3", "--threads", "1", "--seed", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads((out / "last" / "config.json").read_text())["info"]
    assert info["epoch"] == 0 and len(info["history"]) == 1
    w = load_file(str(out / "last" / "model.safetensors"))
    assert all(np.isfinite(v).all() for v in w.values())


def test_epoch_log_is_one_json_record_per_line(faces, tmp_path):
    """`chs-train > log.jsonl`: each epoch's record is one line, not wrapped at the terminal width."""
    import os

    cmd = [sys.executable, "-m", "chs", "train", "--data", str(faces), "--val", str(faces), "--out",
           str(tmp_path / "run"), "--preset", "tiny", "--epochs", "2", "--batch-size", "2", "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    saved = json.loads((tmp_path / "run" / "last" / "config.json").read_text())["info"]["history"]
    assert [r["epoch"] for r in records] == [0, 1]
    assert [r["val_nme_iod"] for r in records] == [h["val_nme_iod"] for h in saved]


_TERMINATED_WHILE_SAVING = """
import os, signal, sys
import chs.model.checkpoint as checkpoint
real = checkpoint.save_file
def save_then_terminated(*a, **k):  # a scheduler stops the job while a checkpoint is being written
    real(*a, **k)
    os.kill(os.getpid(), signal.SIGTERM)
checkpoint.save_file = save_then_terminated
from chs.cli import train_app
sys.argv = ["chs-train", "--data", sys.argv[1], "--out", sys.argv[2], "--preset", "tiny", "--epochs", "1",
            "--batch-size", "2", "--threads", "1"]
train_app()
"""


def test_sigterm_while_saving_leaves_no_half_written_checkpoint(faces, tmp_path):
    """SIGTERM ends chs-train like Ctrl-C: the checkpoint folder being written is removed, not left behind."""
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", _TERMINATED_WHILE_SAVING, str(faces), str(out)],
                          capture_output=True, text=True, timeout=300)
    assert (proc.returncode, proc.stderr.strip().splitlines()[-1:]) == (143, ["terminated"]), proc.stderr[-2000:]
    assert list(out.iterdir()) == []


def test_chs_eval_json_on_a_checkpoint(faces, tmp_path):
    Trainer(get_preset("tiny"), _opts(faces, tmp_path / "run", epochs=1, val=str(faces))).fit()
    proc = subprocess.run([sys.executable, "-m", "chs", "eval", str(tmp_path / "run" / "last"), "--data", str(faces),
                           "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["n"] == 4 and res["ccr"] == 2 and len(res["nme_iod_per_stage"]) == 3
    for key in ("nme_iod", "nme_ipd", "nme_box", "fr_10", "auc_10"):
        assert 0 <= res[key] < 10
    assert res["nme_iod_per_stage"][-1] == pytest.approx(res["nme_iod"])
    # the epoch log's validation of the same weights: same NME and mean signed error
    (rec,) = json.loads((tmp_path / "run" / "last" / "config.json").read_text())["info"]["history"]
    assert rec["val_nme_iod"] == pytest.approx(res["nme_iod"], abs=1e-6)
    assert rec["val_offset"] == pytest.approx([res["offset_x"], res["offset_y"]], abs=1e-6)
    assert abs(res["offset_x"]) > 0  # an untrained model is far off: the offset is reported, not zeroed
    pruned = subprocess.run([sys.executable, "-m", "chs", "eval", str(tmp_path / "run" / "last"), "--data",
                             str(faces), "--json", "--ccr", "0"], capture_output=True, text=True, timeout=300)
    assert json.loads(pruned.stdout)["nme_iod"] == pytest.approx(res["nme_iod_per_stage"][0])


def test_ema_resume_gives_the_same_weights(faces, tmp_path):
    """With --ema the served weights are the average; resuming restores raw weights, EMA and its count."""
    cfg = get_preset("tiny")
    Trainer(cfg, _opts(faces, tmp_path / "straight", ema=0.9)).fit()
    Trainer(cfg, _opts(faces, tmp_path / "split", ema=0.9)).fit(stop_after=1)
    Trainer(cfg, _opts(faces, tmp_path / "split", ema=0.9), resume=str(tmp_path / "split" / "last")).fit()
    for name in ("model.safetensors", "optimizer.safetensors"):
        a = load_file(str(tmp_path / "straight" / "last" / name))
        b = load_file(str(tmp_path / "split" / "last" / name))
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=f"{name}:{k}")
    served = load_file(str(tmp_path / "straight" / "last" / "model.safetensors"))
    extra = load_file(str(tmp_path / "straight" / "last" / "optimizer.safetensors"))
    assert int(extra["ema_n_averaged"]) == 4  # 2 epochs x 2 steps
    assert not any(k.startswith("ema.") for k in extra)  # the EMA is model.safetensors, stored once
    assert served.keys() == {k[4:] for k in extra if k.startswith("raw.")}
    assert any(not np.allclose(served[k], extra[f"raw.{k}"]) for k in served if "running" not in k)


def test_init_warm_starts_added_ccr_stages(faces, tmp_path):
    """--init from a model trained without CCR: shared weights are copied and the new stages start as the
    identity (zero-initialised regressor), so the warm-started model predicts what its source predicts."""
    import torch

    from chs.model.checkpoint import load_checkpoint

    Trainer(get_preset("tiny", ccr_stages=0), _opts(faces, tmp_path / "noccr", epochs=1)).fit()
    src = tmp_path / "noccr" / "last"
    logs = []
    trainer = Trainer(get_preset("tiny"), _opts(faces, tmp_path / "ft", init=str(src)), log=logs.append)
    source = load_checkpoint(src)
    model = trainer.module.model.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        want, got = source(x)["landmarks"][-1], model(x)["landmarks"]
    assert len(got) == 3
    for stage in got:
        torch.testing.assert_close(stage, want, rtol=0, atol=1e-6)
    n_src = len(source.state_dict())
    assert any(f"initialised {n_src} tensors" in m for m in logs)


def test_init_lr_scale_slows_only_the_copied_weights(faces, tmp_path):
    """--init-lr-scale: copied weights move by the scaled lr, the new CCR stages by the full one (compared
    with the same run unscaled; plain SGD, so a step is lr x gradient); resume rebuilds the two groups."""
    import torch

    Trainer(get_preset("tiny", ccr_stages=0), _opts(faces, tmp_path / "noccr", epochs=1)).fit()
    src = str(tmp_path / "noccr" / "last")

    def moved(scale: float, out: str) -> tuple[float, float, Trainer]:
        kw = dict(init=src, init_lr_scale=scale, optimizer="sgd", lr=1e-2, momentum=0.0, weight_decay=0.0)
        trainer = Trainer(get_preset("tiny"), _opts(faces, tmp_path / out, **kw))
        before = {k: v.detach().clone() for k, v in trainer.module.model.named_parameters()}
        trainer.fit(stop_after=1)
        d = {k: float((v.detach() - before[k]).abs().max()) for k, v in trainer.module.model.named_parameters()}
        return (max(v for k, v in d.items() if not k.startswith("ccr.")),
                max(v for k, v in d.items() if k.startswith("ccr.")), trainer)

    old_s, new_s, trainer = moved(1e-3, "scaled")
    old_f, new_f, _ = moved(1.0, "full")
    assert [g["lr_scale"] for g in trainer.opt.param_groups] == [1e-3, 1.0]
    n_ccr = sum(1 for k, _ in trainer.module.model.named_parameters() if k.startswith("ccr."))
    assert len(trainer.opt.param_groups[1]["params"]) == n_ccr + 1  # + the task weights
    assert 0 < old_s < 3e-3 * old_f
    assert 0.5 < new_s / new_f < 2.0
    kw = dict(init=src, init_lr_scale=1e-3, optimizer="sgd", lr=1e-2, momentum=0.0, weight_decay=0.0)
    resumed = Trainer(get_preset("tiny"), _opts(faces, tmp_path / "scaled", **kw),
                      resume=str(tmp_path / "scaled" / "last"))
    assert [len(g["params"]) for g in resumed.opt.param_groups] == [len(g["params"]) for g in trainer.opt.param_groups]
    resumed.fit()
    assert all(torch.isfinite(p).all() for p in resumed.module.parameters())


def test_init_refuses_a_model_of_another_shape(faces, tmp_path):
    from chs.runtime.errors import ChsError

    Trainer(get_preset("tiny", ccr_stages=0), _opts(faces, tmp_path / "noccr", epochs=1)).fit()
    with pytest.raises(ChsError, match="differ in shape"):
        Trainer(get_preset("tiny", hg_features=8), _opts(faces, tmp_path / "ft", init=str(tmp_path / "noccr" / "last")))
    with pytest.raises(ChsError, match="not a chs checkpoint"):
        Trainer(get_preset("tiny"), _opts(faces, tmp_path / "ft2", init=str(tmp_path / "nowhere")))
    with pytest.raises(ChsError, match=r"--ema must be in \(0, 1\)"):
        Trainer(get_preset("tiny"), _opts(faces, tmp_path / "ft3", ema=1.0))


@pytest.fixture(scope="module")
def finished_run(fixtures_dir, tmp_path_factory):
    """A one-epoch tiny run (adam, no EMA) over the fixture faces."""
    out = tmp_path_factory.mktemp("resumable")
    Trainer(get_preset("tiny"), _opts(fixtures_dir / "pts", out / "run", epochs=1)).fit()
    return out / "run" / "last"


@pytest.mark.parametrize("preset, kw, message", [
    ({"hg_features": 8}, {}, "the checkpoint's model has hg_features=16, this run's 8"),
    ({"ccr_stages": 1}, {}, "ccr_stages=2, this run's 1"),
    ({}, {"optimizer": "sgd"}, "trained with optimizer='adam', this one has 'sgd'; resume with the same --optimizer"),
    ({}, {"ema": 0.9}, "trained with ema=0.0, this one has 0.9"),
])
def test_resume_refuses_another_model_or_state_shaping_options(finished_run, faces, tmp_path, preset, kw, message):
    """--resume into another preset was a torch state-dict traceback, another optimizer a KeyError."""
    from chs.runtime.errors import ChsError

    with pytest.raises(ChsError, match=re.escape(message)):
        Trainer(get_preset("tiny", **preset), _opts(faces, tmp_path / "run", **kw), resume=str(finished_run))


def test_resume_names_the_options_that_differ_from_the_run(finished_run, fixtures_dir, faces, tmp_path):
    """Options are not read back on --resume: one forgotten (--epochs: the default 30) changes the schedule."""
    logs = []
    Trainer(get_preset("tiny"), _opts(faces, tmp_path / "run", epochs=3, lr=2e-3, threads=2),
            resume=str(finished_run), log=logs.append)
    assert logs == [f"resuming {finished_run} at epoch 1 with options other than the run's: --data {faces} (the run: "
                    f"{fixtures_dir / 'pts'}), --epochs 3 (the run: 1), --lr 0.002 (the run: 0.001)"]
    logs.clear()
    Trainer(get_preset("tiny"), _opts(fixtures_dir / "pts", tmp_path / "run2", epochs=1, threads=2),
            resume=str(finished_run), log=logs.append)
    assert logs == []  # --threads, --out: the same weights


def test_resume_refuses_a_run_started_with_ema_when_ema_is_off(faces, tmp_path):
    """Resuming an EMA run without --ema dropped its average silently and served the raw weights."""
    from chs.runtime.errors import ChsError

    Trainer(get_preset("tiny"), _opts(faces, tmp_path / "ema", epochs=1, ema=0.9)).fit()
    with pytest.raises(ChsError, match=re.escape("trained with ema=0.9, this one has 0.0")):
        Trainer(get_preset("tiny"), _opts(faces, tmp_path / "ema"), resume=str(tmp_path / "ema" / "last"))


@pytest.mark.parametrize("damage, message", [
    ("model", "model.safetensors are truncated or corrupt"),
    ("state", "optimizer.safetensors are truncated or corrupt"),
    ("info", "config.json lacks chs-train's training info"),
    ("config", "the checkpoint's model has num_points=98, this run's 68"),
])
def test_resume_of_a_damaged_checkpoint_is_one_line(finished_run, faces, tmp_path, damage, message):
    from chs.runtime.errors import ChsError

    ckpt = tmp_path / "last"
    shutil.copytree(finished_run, ckpt)
    if damage in ("model", "state"):
        f = ckpt / ("model.safetensors" if damage == "model" else "optimizer.safetensors")
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    else:
        meta = json.loads((ckpt / "config.json").read_text())
        if damage == "info":
            meta["info"] = "nothing"
        else:
            meta["config"]["num_points"] = 98
        (ckpt / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ChsError, match=re.escape(message)):
        Trainer(get_preset("tiny"), _opts(faces, tmp_path / "run"), resume=str(ckpt))


def test_chs_eval_prints_wflw_subsets(fixtures_dir, tmp_path):
    """A WFLW annotation file (98 points + flags) gets the per-subset breakdown; each subset's NME is the
    mean of its faces' NMEs."""
    import torch

    from chs.model.checkpoint import load_checkpoint, save_checkpoint
    from chs.model.chs import build_model
    from chs.model.runner import TorchRunner
    from chs.runtime.datasets import load_dataset
    from chs.runtime.evaluate import evaluate_runner

    coco = load_dataset(fixtures_dir / "coco-style" / "wflw" / "test_wflw.json")
    assert len(coco) == 4
    images = tmp_path / "images"
    images.mkdir()
    # pose, expression, illumination, makeup, occlusion, blur
    flags = [[1, 0, 0, 0, 1, 0], [1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]]
    lines = []
    for s, f in zip(coco, flags, strict=True):
        shutil.copy(s.image_path, images / s.image_path.name)
        x0, y0 = s.landmarks.min(0)
        x1, y1 = s.landmarks.max(0)
        lines.append(" ".join(f"{v:.6f}" for v in s.landmarks.reshape(-1)) + f" {x0:.0f} {y0:.0f} {x1:.0f} {y1:.0f} "
                     + " ".join(map(str, f)) + f" {s.image_path.name}")
    ann = tmp_path / "annotations" / "list_98pt_rect_attr_test.txt"
    ann.parent.mkdir()
    ann.write_text("\n".join(lines) + "\n")
    torch.manual_seed(0)
    ckpt = save_checkpoint(build_model(get_preset("tiny", scheme="98", num_points=98)), tmp_path / "ckpt")
    res = evaluate_runner(TorchRunner(load_checkpoint(ckpt)), load_dataset(ann))
    per_face = res["per_sample_nme"]
    assert set(res["subsets"]) == {"pose", "expression", "occlusion"}
    assert res["subsets"]["pose"]["n"] == 4 and res["subsets"]["pose"]["nme_iod"] == pytest.approx(res["nme_iod"])
    assert res["subsets"]["occlusion"]["nme_iod"] == pytest.approx(per_face[0])
    assert res["subsets"]["expression"]["n"] == 2
    assert res["subsets"]["expression"]["nme_iod"] == pytest.approx(per_face[1:3].mean())
    proc = subprocess.run([sys.executable, "-m", "chs", "eval", str(ckpt), "--data", str(ann)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    line = [t for t in proc.stdout.splitlines() if t.strip().startswith("expression")]
    assert len(line) == 1 and "n=2" in line[0] and f"{res['subsets']['expression']['nme_iod'] * 100:.2f}%" in line[0]


def test_channels_last_training_matches_nchw(faces, tmp_path):
    """--channels-last changes the memory layout only: the same run gives the same weights (SGD: Adam's
    normalised steps would turn rounding-level gradient differences into lr-sized ones)."""
    cfg = get_preset("tiny")
    Trainer(cfg, _opts(faces, tmp_path / "nchw", epochs=1, optimizer="sgd", lr=1e-2)).fit()
    Trainer(cfg, _opts(faces, tmp_path / "nhwc", epochs=1, optimizer="sgd", lr=1e-2, channels_last=True)).fit()
    a = load_file(str(tmp_path / "nchw" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "nhwc" / "last" / "model.safetensors"))
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_bf16_autocast_on_cpu_decodes_in_float32():
    """bf16 counts integers exactly only to 256: a 32x32 heatmap's peak and neighbours are indexed in float32."""
    import torch

    from chs.model.chs import build_model
    from chs.model.codec import decode_heatmaps

    torch.manual_seed(0)
    model = build_model(get_preset("tiny", input_size=128, ccr_stages=0)).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.rand(2, 3, 128, 128))
    hm = out["heatmaps"][-1][:, :68].float()
    assert out["heatmaps"][-1].dtype == torch.bfloat16
    assert int(hm.flatten(2).argmax(2).max()) > 256  # peaks past bf16's exact integers
    np.testing.assert_allclose(out["landmarks"][0].numpy(), decode_heatmaps(hm)[0].numpy(), atol=1e-6)


def test_amp_fp16_on_cpu_is_refused(faces, tmp_path):
    from chs.runtime.errors import ChsError

    with pytest.raises(ChsError, match="fp16 needs CUDA"):
        Trainer(get_preset("tiny"), _opts(faces, tmp_path / "run", amp="fp16", epochs=1)).fit()


def test_flip_probability_mirrors_crop_and_labels_together(faces):
    """--flip 1 mirrors every crop and its (re-ordered) labels; --flip 0 never mirrors. ytf68 trains with 0:
    its labels sit about 1 px to the right of the mirror-symmetric position, which a flipped copy undoes."""
    from chs.model.training.augment import AugmentConfig, augment_crop
    from chs.runtime.datasets import load_dataset
    from chs.runtime.geometry import CropRule, box_from_landmarks, crop_affine, transform_points
    from chs.runtime.schemes import get_scheme

    s = load_dataset(faces)[0]
    img, pts, box = s.load_image(), s.landmarks, box_from_landmarks(s.landmarks)
    rule, scheme = CropRule(), get_scheme("68")
    still = dict(scale=0.0, rotation=0.0, translation=0.0, occlusion=0.0, photometric=0.0)
    plain, p0 = augment_crop(img, pts, box, 64, rule, scheme, None)
    for seed in range(4):
        c1, p1 = augment_crop(img, pts, box, 64, rule, scheme, np.random.default_rng(seed),
                              AugmentConfig(flip=1.0, **still))
        np.testing.assert_allclose(c1.astype(float), plain[:, ::-1].astype(float), atol=1)
        mirrored = p1[list(scheme.flip_perm)]
        np.testing.assert_allclose(63 - mirrored[:, 0], p0[:, 0], atol=1e-9)
        np.testing.assert_allclose(mirrored[:, 1], p0[:, 1], atol=1e-9)
        _, q = augment_crop(img, pts, box, 64, rule, scheme, np.random.default_rng(seed),
                            AugmentConfig(flip=0.0, **still))
        np.testing.assert_allclose(q, transform_points(pts, crop_affine(box, 64, rule)), atol=1e-9)


def test_flip_probability_is_checked(faces, tmp_path):
    from chs.runtime.errors import ChsError

    with pytest.raises(ChsError, match="flip must be a probability"):
        Trainer(get_preset("tiny"), _opts(faces, tmp_path / "run", flip=1.5))
    assert Trainer(get_preset("tiny"), _opts(faces, tmp_path / "run0", flip=0.0)).train_set.augment.flip == 0.0


def test_batch_larger_than_the_training_faces_is_refused_before_training(faces, tmp_path):
    """The loader drops an incomplete batch: 4 faces at --batch-size 10 once ran no step, logged loss 0.0 and
    saved the untrained model as epoch_000/, last/ and best/."""
    from chs.runtime.errors import ChsError

    with pytest.raises(ChsError) as e:
        Trainer(get_preset("tiny"), _opts(faces, tmp_path / "run", batch_size=10))
    assert str(e.value) == "--batch-size 10 is more than the 4 training faces; lower --batch-size"
    with pytest.raises(ChsError, match="--batch-size 3 is more than the 2 training faces"):
        Trainer(get_preset("tiny"), _opts(faces, tmp_path / "run", batch_size=3, max_samples=2))
    assert not (tmp_path / "run").exists()
    assert len(Trainer(get_preset("tiny"), _opts(faces, tmp_path / "run", batch_size=4))._loader(0)) == 1


def test_data_schemes_are_checked_before_the_model_is_built(faces, fixtures_dir, tmp_path, monkeypatch):
    """68-point faces for a 98-point preset once failed with IndexError deep in the loader, and a folder mixing
    5- and 68-point files with IndexError or a misleading box error."""
    import chs.model.training.trainer as trainer
    from chs.runtime.datasets import load_dataset, write_pts
    from chs.runtime.errors import ChsError
    from chs.runtime.schemes import get_scheme

    def no_model(*a, **k):
        raise AssertionError("model built before the data was checked")

    monkeypatch.setattr(trainer, "build_model", no_model)
    with pytest.raises(ChsError) as e:
        Trainer(get_preset("wflw"), _opts(faces, tmp_path / "run"))
    assert str(e.value) == f"--data {faces}: dataset has 68-point landmarks but the model predicts 98"
    mtfl = fixtures_dir / "mtfl5"
    with pytest.raises(ChsError) as e:
        Trainer(get_preset("tiny"), _opts(faces, tmp_path / "run", val=str(mtfl)))
    assert str(e.value) == (f"--val {mtfl}: dataset has 5-point landmarks; it needs 68-point faces "
                            "(5-point ones: --data5, --val5)")
    takeo = faces / "takeo.pts"
    write_pts(takeo, get_scheme("68").to_five(next(s for s in load_dataset(faces) if "takeo" in str(s.image_path))
                                              .landmarks))
    with pytest.raises(ChsError) as e:
        Trainer(get_preset("tiny"), _opts(faces, tmp_path / "run"))
    assert str(e.value) == f"--data {faces}: dataset mixes landmark schemes ['5', '68']; use one scheme per set"
    assert not (tmp_path / "run").exists()


def test_augmentation_shifts_scale_with_the_inference_crop_side(faces):
    """Training jitter is in units of the crop side that inference uses (runtime.geometry.crop_side, one
    formula for both): the unjittered crop maps crop_side(box) image pixels onto the crop."""
    from chs.model.training.augment import AugmentConfig, augment_crop
    from chs.runtime.datasets import load_dataset
    from chs.runtime.geometry import CropRule, box_from_landmarks, crop_affine, crop_side
    from chs.runtime.schemes import get_scheme

    s, scheme = load_dataset(faces)[0], get_scheme("68")
    box, rule = box_from_landmarks(s.landmarks), CropRule(scale=1.4)
    assert crop_side(box, rule) == pytest.approx(max(box[2] - box[0], box[3] - box[1]) * 1.4)
    assert np.hypot(*crop_affine(box, 64, rule)[:, 0]) == pytest.approx(64 / crop_side(box, rule))
    still = dict(scale=0.0, rotation=0.0, flip=0.0, occlusion=0.0, photometric=0.0)
    _, p0 = augment_crop(s.load_image(), s.landmarks, box, 64, rule, scheme, None)
    _, p1 = augment_crop(s.load_image(), s.landmarks, box, 64, rule, scheme, np.random.default_rng(0),
                         AugmentConfig(translation=25.0, **still))
    # a shift of at most 25/256 of the crop side moves every point by the same at most 25/256 * 64 crop pixels
    d = p1 - p0
    np.testing.assert_allclose(d, d[:1].repeat(len(d), 0), atol=1e-9)
    assert 0 < np.abs(d[0]).max() <= 25 / 256 * 64 + 1e-9
