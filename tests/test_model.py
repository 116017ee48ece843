"""The CHS network: Table 9 counts, shapes, gradients, pruning, ONNX export parity, config errors."""

import numpy as np
import pytest
import torch

from chs.benchmarks.complexity import complexity_rows
from chs.export.onnx_export import DeployWrapper, count_ops, export_onnx
from chs.model.checkpoint import load_checkpoint, save_checkpoint
from chs.model.chs import build_model
from chs.model.config import ChsConfig, get_preset
from chs.runtime.errors import ChsError

# exact counts of this implementation (the paper rounds to 2 decimals: 24.15, 24.15, 56.62, 89.09, 154.04)
EXPECTED_PARAMS = [24_153_036, 24_147_948, 56_620_900, 89_093_852, 154_039_756]
PAPER_GMACS = [26.79, 26.80, 30.52, 34.25, 41.69]


def test_table9_params_and_macs():
    rows = complexity_rows("wflw")
    assert [r["params"] for r in rows] == EXPECTED_PARAMS
    for r, paper in zip(rows, PAPER_GMACS, strict=True):
        assert abs(r["params"] - r["paper_params"]) / r["paper_params"] < 5e-4
        assert abs(r["macs"] / 1e9 - paper) / paper < 5e-3
    assert [r["ccr"] for r in rows] == [0, 0, 1, 2, 4]


def test_full_size_wflw_forward_shapes():
    torch.manual_seed(0)
    model = build_model(get_preset("wflw")).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 256, 256))
    assert [tuple(h.shape) for h in out["heatmaps"]] == [(2, 99, 64, 64)] * 4
    assert [tuple(lm.shape) for lm in out["landmarks"]] == [(2, 98, 2)] * 5
    assert tuple(out["scores"].shape) == (2, 98)
    assert all(torch.isfinite(lm).all() for lm in out["landmarks"])


@pytest.mark.parametrize("mode", ["ccr", "task", "full"])
def test_tiny_gradients_reach_every_parameter(mode):
    torch.manual_seed(0)
    model = build_model(get_preset("tiny", backward=mode)).train()
    for stage in model.ccr:  # the regression head starts at zero (cascade = identity); make it non-zero here
        torch.nn.init.normal_(stage.fc.weight, std=0.01)
    out = model(torch.randn(2, 3, 64, 64))
    loss = sum(h.square().mean() for h in out["heatmaps"]) + sum(lm.square().mean() for lm in out["landmarks"][1:])
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_backward_modes_detach_as_documented():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    grads = {}
    for mode in ("ccr", "task", "full"):
        torch.manual_seed(0)
        model = build_model(get_preset("tiny", backward=mode)).train()
        for stage in model.ccr:
            torch.nn.init.normal_(stage.fc.weight, std=0.01)
        out = model(x)
        out["landmarks"][-1].sum().backward()  # only the last stage's output
        grads[mode] = model.ccr[0].fc.weight.grad
    # the last stage's landmarks depend on stage 1 unless every stage input is detached
    assert grads["task"] is None or grads["task"].abs().sum() == 0
    assert grads["ccr"].abs().sum() > 0 and grads["full"].abs().sum() > 0


@pytest.mark.parametrize("k", [0, 1, 2])
def test_pruning_keeps_first_k_stages(tmp_path, k):
    torch.manual_seed(0)
    full = build_model(get_preset("tiny")).eval()
    for stage in full.ccr:
        torch.nn.init.normal_(stage.fc.weight, std=0.01)
    save_checkpoint(full, tmp_path / "ckpt")
    pruned = load_checkpoint(tmp_path / "ckpt", ccr=k)
    assert sum(p.numel() for p in pruned.parameters()) == sum(
        p.numel() for p in build_model(get_preset("tiny", ccr_stages=k)).parameters())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = full(x)["landmarks"], pruned(x)["landmarks"]
    assert len(b) == k + 1
    for i in range(k + 1):
        torch.testing.assert_close(a[i], b[i], rtol=0, atol=0)


def test_pruning_beyond_trained_stages_is_an_error(tmp_path):
    save_checkpoint(build_model(get_preset("tiny")), tmp_path / "ckpt")
    with pytest.raises(ChsError, match="trained with 2 CCR stage"):
        load_checkpoint(tmp_path / "ckpt", ccr=3)


def test_truncated_checkpoint_is_a_one_line_error(tmp_path):
    save_checkpoint(build_model(get_preset("tiny")), tmp_path / "ckpt")
    w = tmp_path / "ckpt" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(ChsError, match="truncated or corrupt") as e:
        load_checkpoint(tmp_path / "ckpt")
    assert "\n" not in str(e.value)


def test_weights_error_without_a_message_is_still_one_line(tmp_path, monkeypatch):
    """A reader error with an empty message (an OSError() from a failing disk) once raised IndexError."""
    import chs.model.checkpoint as checkpoint

    save_checkpoint(build_model(get_preset("tiny")), tmp_path / "ckpt")

    def failing_read(*a, **k):
        raise OSError()

    monkeypatch.setattr(checkpoint, "load_file", failing_read)
    with pytest.raises(ChsError) as e:
        load_checkpoint(tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    assert str(e.value) == f"checkpoint weights {weights} are truncated or corrupt (OSError)"


def test_save_killed_while_the_old_checkpoint_is_deleted_keeps_a_whole_one(tmp_path, monkeypatch):
    """Replacing a checkpoint once deleted the old folder before renaming the new one in: a run killed during
    that deletion was left with no checkpoint at all."""
    import shutil

    torch.manual_seed(0)
    old, new = build_model(get_preset("tiny")), build_model(get_preset("tiny"))
    save_checkpoint(old, tmp_path / "last", {"epoch": 0})
    real_rmtree = shutil.rmtree

    def killed_rmtree(path, *a, **k):  # deletes, then the process is interrupted
        real_rmtree(path, *a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", killed_rmtree)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(new, tmp_path / "last", {"epoch": 1})
    monkeypatch.undo()
    loaded = load_checkpoint(tmp_path / "last")  # a whole checkpoint: the new one, swapped in before the cleanup
    for name, t in new.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], t), name


def test_save_interrupted_between_the_renames_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    """Ctrl-C after the old folder was moved aside and before the new one was renamed in left no last/ at all
    (the old one hidden in .last.old-*, the new one deleted by the cleanup)."""
    import os

    import chs.runtime.files as files

    torch.manual_seed(0)
    old, new = build_model(get_preset("tiny")), build_model(get_preset("tiny"))
    save_checkpoint(old, tmp_path / "last", {"epoch": 0})
    real_replace, calls = os.replace, []

    def interrupted_replace(a, b):
        calls.append(b)
        if len(calls) == 2:  # the old folder is aside; the interrupt lands before the new one moves in
            raise KeyboardInterrupt
        real_replace(a, b)

    monkeypatch.setattr(files.os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(new, tmp_path / "last", {"epoch": 1})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    loaded = load_checkpoint(tmp_path / "last")
    for name, t in old.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], t), name


def test_onnx_export_has_roialign_per_stage_and_matches_torch(tmp_path):
    import onnxruntime as ort

    torch.manual_seed(0)
    model = build_model(get_preset("tiny")).eval()
    for stage in model.ccr:
        torch.nn.init.normal_(stage.fc.weight, std=0.01)
    proto = export_onnx(model, tmp_path / "m.onnx")
    assert count_ops(proto, "RoiAlign") == 2
    ra = next(n for n in proto.graph.node if n.op_type == "RoiAlign")
    attrs = {a.name: a for a in ra.attribute}
    assert attrs["coordinate_transformation_mode"].s == b"half_pixel" and attrs["sampling_ratio"].i == 2
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(3, 3, 64, 64)).astype(np.float32)
    lm, sc = sess.run(None, {"input": x})
    with torch.no_grad():
        tl, ts = DeployWrapper(model)(torch.from_numpy(x))
    assert lm.shape == (3, 68, 2)
    assert np.abs(lm - tl.numpy()).max() <= 1e-4
    assert np.abs(sc - ts.numpy()).max() <= 1e-4


@pytest.mark.parametrize("change,match", [
    ({"num_points": 0}, "num_points must be >= 1"),
    ({"input_size": 66}, "multiple of 4"),
    ({"backward": "sideways"}, "backward must be one of"),
    ({"ccr_stages": -1}, "ccr_stages must be >= 0"),
])
def test_bad_configs_fail_with_one_line(change, match):
    with pytest.raises(ChsError, match=match) as e:
        get_preset("tiny", **change)
    assert "\n" not in str(e.value)


def test_unknown_preset_and_field():
    with pytest.raises(ChsError, match="unknown preset 'nope'"):
        get_preset("nope")
    with pytest.raises(ChsError, match="unknown field"):
        ChsConfig.from_dict({"bogus": 1})
