"""Training: resume equivalence, torchrun DDP on CPU, unreadable images, chs-eval on a checkpoint."""

import json
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


def test_chs_eval_json_on_a_checkpoint(faces, tmp_path):
    Trainer(get_preset("tiny"), _opts(faces, tmp_path / "run", epochs=1)).fit()
    proc = subprocess.run([sys.executable, "-m", "chs", "eval", str(tmp_path / "run" / "last"), "--data", str(faces),
                           "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["n"] == 4 and res["ccr"] == 2 and len(res["nme_iod_per_stage"]) == 3
    for key in ("nme_iod", "nme_ipd", "nme_box", "fr_10", "auc_10"):
        assert 0 <= res[key] < 10
    assert res["nme_iod_per_stage"][-1] == pytest.approx(res["nme_iod"])
    pruned = subprocess.run([sys.executable, "-m", "chs", "eval", str(tmp_path / "run" / "last"), "--data",
                             str(faces), "--json", "--ccr", "0"], capture_output=True, text=True, timeout=300)
    assert json.loads(pruned.stdout)["nme_iod"] == pytest.approx(res["nme_iod_per_stage"][0])
