"""Mixed supervision: 68-point and 5-point faces in one batch, each contributing loss only for what it has."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from chs.model.chs import build_model
from chs.model.config import get_preset
from chs.model.training.data import FaceTrainSet
from chs.model.training.mixed import (
    FIVE,
    FULL,
    FivePointTerms,
    FivePointTrainSet,
    MixedBatchSampler,
    MixedTrainSet,
    awing_weights,
    direct_points,
    five_point_matrix,
    gaussian_maps,
    mixed_losses,
    soft_decode,
)
from chs.model.training.trainer import Trainer, TrainModule, TrainOptions
from chs.runtime.datasets import load_dataset
from chs.runtime.errors import ChsError
from chs.runtime.schemes import get_scheme


@pytest.fixture()
def faces(fixtures_dir, tmp_path):
    dst = tmp_path / "faces"
    shutil.copytree(fixtures_dir / "pts", dst)
    return dst


@pytest.fixture()
def mtfl(fixtures_dir):
    return fixtures_dir / "mtfl5"


def _mixed_set(faces, mtfl, augment=None):
    cfg = get_preset("tiny")
    full = FaceTrainSet(load_dataset(faces), cfg, 1.5, 0, augment)
    return cfg, MixedTrainSet(full, FivePointTrainSet(load_dataset(mtfl), cfg, 0, augment))


def _batch(ds, idx):
    items = [ds[i] for i in idx]
    return [torch.stack([torch.as_tensor(it[k]) for it in items]) for k in range(6)]


def test_reduction_matrix_is_the_scheme_reduction_and_direct_points_are_ibug():
    lm = np.random.default_rng(0).uniform(0, 100, (3, 68, 2))
    np.testing.assert_allclose((five_point_matrix("68").double() @ torch.from_numpy(lm)).numpy(),
                               get_scheme("68").to_five(lm), atol=1e-5)
    assert direct_points("68") == [(2, 30), (3, 48), (4, 54)]


def test_soft_decode_finds_a_subcell_peak_and_passes_gradients():
    pts = torch.tensor([[[5.3, 7.6], [10.0, 2.2]]])
    hm = gaussian_maps(pts, 16, 1.5).requires_grad_(True)
    got = soft_decode(hm)
    assert torch.allclose(got, pts, atol=0.06)
    got.sum().backward()
    assert hm.grad.abs().sum() > 0


def test_items_mask_what_a_face_lacks(faces, mtfl):
    cfg, ds = _mixed_set(faces, mtfl)
    x, maps, weight, target, five, kind = ds[0]
    assert kind == FULL and maps.abs().sum() > 0 and torch.isfinite(target).all()
    np.testing.assert_allclose(five.numpy(), get_scheme("68").to_five(target.numpy()), atol=1e-5)
    x, maps, weight, target, five, kind = ds[len(ds.full)]
    assert kind == FIVE and x.shape == (3, cfg.input_size, cfg.input_size)
    assert maps.abs().sum() == 0 and weight.abs().sum() == 0 and torch.isnan(target).all()
    assert five.shape == (5, 2) and torch.isfinite(five).all()


def test_a_face_contributes_loss_only_for_what_it_has(faces, mtfl):
    cfg, ds = _mixed_set(faces, mtfl)
    torch.manual_seed(0)
    model = build_model(cfg).eval()  # BatchNorm's batch statistics would couple the faces' outputs
    terms = FivePointTerms(cfg, 1.5)
    x, maps, weight, target, five, kind = _batch(ds, [0, 1, len(ds.full), len(ds.full) + 1])
    out = model(x)
    losses = mixed_losses(out, maps, weight, target, five, kind, terms, cfg.ccr_stages)
    assert len(losses) == cfg.ccr_stages + 2 and all(torch.isfinite(v) for v in losses)
    # the same faces alone give the same terms: 5-point faces add nothing to the 68-point terms and back
    full_only = mixed_losses(model(x[:2]), maps[:2], weight[:2], target[:2], five[:2], kind[:2], terms, 2)
    five_only = mixed_losses(model(x[2:]), maps[2:], weight[2:], target[2:], five[2:], kind[2:], terms, 2)
    for a, b in zip(losses[:-1], full_only[:-1], strict=True):
        assert float(a.detach()) == pytest.approx(float(b.detach()), rel=1e-4)
    assert float(losses[-1].detach()) == pytest.approx(float(five_only[-1].detach()), rel=1e-4)
    assert float(full_only[-1].detach()) == 0.0 and all(float(v.detach()) == 0.0 for v in five_only[:-1])
    # the 5-point loss reaches only the heatmap channels of points it labels (eyes, 30, 48, 54)
    hm = [h.detach().requires_grad_(True) for h in out["heatmaps"]]
    lms = [lm.detach().requires_grad_(True) for lm in out["landmarks"]]
    terms(hm, lms, five).backward()
    per_channel = hm[-1].grad.abs().sum(dim=(0, 2, 3))
    used = {i for g in get_scheme("68").to5 for i in g}
    assert all(per_channel[c] == 0 for c in range(68) if c not in used)
    assert all(per_channel[c] > 0 for c in (30, 48, 54, 36, 45))
    assert terms.offset.grad.abs().sum() > 0


def test_offset_is_learned_inside_the_five_point_loss_only(faces, mtfl):
    cfg, ds = _mixed_set(faces, mtfl)
    torch.manual_seed(0)
    module = TrainModule(build_model(cfg), FivePointTerms(cfg, 1.5))
    x, maps, weight, target, five, kind = _batch(ds, [0, 1, len(ds.full), len(ds.full) + 1])
    loss, parts = module(x, maps, weight, target, five, kind)
    loss.backward()
    assert module.five.offset.grad.abs().sum() > 0
    assert len(parts) == cfg.ccr_stages + 2
    served = {k for k, _ in module.model.named_parameters()}
    assert not any("offset" in k for k in served)  # never part of the served network


def test_loss_decreases_on_a_fixed_tiny_mixed_batch(faces, mtfl):
    cfg, ds = _mixed_set(faces, mtfl)
    torch.manual_seed(0)
    module = TrainModule(build_model(cfg), FivePointTerms(cfg, 1.5))
    batch = _batch(ds, [0, 1, 2, len(ds.full), len(ds.full) + 1, len(ds.full) + 2])
    opt = torch.optim.Adam(module.parameters(), lr=2e-3)
    history = []
    for _ in range(12):
        loss, parts = module(*batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append((float(loss.detach()), parts))
    assert all(np.isfinite(h[0]) for h in history)
    assert history[-1][0] < history[0][0]
    assert history[-1][1][-1] < history[0][1][-1]  # the 5-point term itself
    assert history[-1][1][0] < history[0][1][0]  # and the 68-point heatmap term


def test_mixed_batches_hold_the_requested_share():
    s = MixedBatchSampler(n_full=20, n_five=7, batch_size=8, mix=0.25, seed=1, epoch=0)
    batches = list(s)
    assert len(batches) == len(s) == 20 // 6
    for b in batches:
        assert sum(i >= 20 for i in b) == 2 and len(b) == 8
    full = [i for b in batches for i in b if i < 20]
    assert len(full) == len(set(full)) == 18
    assert batches == list(MixedBatchSampler(20, 7, 8, 0.25, 1, 0))
    assert batches != list(MixedBatchSampler(20, 7, 8, 0.25, 1, 1))
    with pytest.raises(ChsError, match=r"mixed batches of 8 need >= 6 full and >= 1 5-point faces \(have 5 and 7;"):
        MixedBatchSampler(5, 7, 8, 0.25, 1, 0)


def test_trainer_runs_mixed_supervision_and_reports_offset_and_five_point_val(faces, mtfl, tmp_path):
    opts = TrainOptions(data=str(faces), out=str(tmp_path / "run"), val=str(faces), data5=str(mtfl), val5=str(mtfl),
                        mix=0.5, flip=0.0, flip5=0.5, epochs=1, batch_size=4, lr=1e-3, optimizer="adam",
                        schedule="cosine", sigma=1.5, seed=0, threads=1)
    trainer = Trainer(get_preset("tiny"), opts, log=lambda *_: None)
    assert len(trainer.train_set.five) == 6  # the fixture's train split (2 faces are in the val split)
    res = trainer.fit()
    rec = res["history"][0]
    assert np.isfinite(rec["loss"]) and len(rec["parts"]) == 4
    assert np.array(rec["five_offset_px"]).shape == (5, 2)
    assert np.isfinite(rec["val5"]["nme_shifted"]) and rec["val5"]["nme"] > 0  # a random tiny model: no bound
    extra = load_file(str(tmp_path / "run" / "last" / "optimizer.safetensors"))
    np.testing.assert_allclose(extra["task.five_offset"] * 4, rec["five_offset_px"], atol=1e-6)
    info = json.loads((tmp_path / "run" / "last" / "config.json").read_text())
    assert info["info"]["options"]["data5"] == str(mtfl)
    resumed = Trainer(get_preset("tiny"), opts, resume=str(tmp_path / "run" / "last"), log=lambda *_: None)
    np.testing.assert_allclose(resumed.module.five.offset.detach().numpy(), extra["task.five_offset"])
    # the offset trains in its own group, faster than the network and without weight decay
    last = trainer.opt.param_groups[-1]
    assert last["params"] == [trainer.module.five.offset] and last["lr_scale"] == 50.0 and last["weight_decay"] == 0
    assert sum(len(g["params"]) for g in trainer.opt.param_groups) == len(list(trainer.module.parameters()))


def test_five_point_set_refuses_full_faces(faces):
    with pytest.raises(ChsError, match="68-point faces"):
        FivePointTrainSet(load_dataset(faces), get_preset("tiny"), 0, None)


def test_five_point_validation_runs_without_val(faces, mtfl, tmp_path):
    """--val5 was evaluated only inside --val's validation: without --val it was loaded and never reported."""
    opts = TrainOptions(data=str(faces), out=str(tmp_path / "run"), val5=str(mtfl), flip=0.0, epochs=1, batch_size=2,
                        lr=1e-3, optimizer="adam", schedule="cosine", sigma=1.5, seed=0, threads=1)
    rec = Trainer(get_preset("tiny"), opts, log=lambda *_: None).fit()["history"][0]
    assert rec["val_nme_iod"] is None and rec["val_offset"] is None
    assert set(rec["val5"]) == {"nme", "nme_shifted", "fr_10", "shift_x", "shift_y"}
    assert np.isfinite(rec["val5"]["nme_shifted"]) and rec["val5"]["nme"] > 0
    saved = json.loads((tmp_path / "run" / "best" / "config.json").read_text())["info"]
    assert saved["val"]["five"] == rec["val5"]  # best/ is the last epoch when there is no --val NME to rank on


def test_five_point_weight_map_is_the_full_faces_awing_map():
    """The 5-point faces' torch weight map and the full faces' numpy one share AWing's threshold and weight."""
    from chs.model.training.targets import AWING_WEIGHT, awing_weight_map

    target = gaussian_maps(torch.tensor([[[3.2, 4.7], [0.0, 15.0], [9.5, 9.5]]]), 16, 1.5)
    got = awing_weights(target)
    np.testing.assert_array_equal(got.numpy(), awing_weight_map(target[0].numpy())[None])
    assert set(np.unique(got.numpy())) == {1.0, AWING_WEIGHT}
