"""One model opener and one runner base: what 'default' means, checkpoints vs exports, checks once, close()."""

from __future__ import annotations

import numpy as np
import pytest

from chs.runtime.assets import DEFAULT_DIR, DEFAULT_MODEL
from chs.runtime.backends.base import RunnerBase
from chs.runtime.backends.opener import open_model
from chs.runtime.errors import ChsError

torch = pytest.importorskip("torch")

from chs.model.checkpoint import save_checkpoint  # noqa: E402
from chs.model.chs import build_model  # noqa: E402
from chs.model.config import get_preset  # noqa: E402
from chs.model.runner import TorchRunner, open_checkpoint, open_runner  # noqa: E402


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(build_model(get_preset("tiny")), tmp_path_factory.mktemp("opener") / "ckpt")


def test_default_is_the_bundled_folder_served_by_what_the_caller_can_run():
    if not DEFAULT_MODEL.is_file():
        pytest.skip("bundled model not installed")
    torch_free = open_model("default")
    assert torch_free.name.startswith("ort-") and torch_free.path == DEFAULT_MODEL
    with_torch = open_runner("default", ccr=1)
    assert isinstance(with_torch, TorchRunner) and with_torch.meta.ccr == 1
    assert open_runner("default", backend="ort").name.startswith("ort-")  # the folder's export
    assert DEFAULT_MODEL.parent == DEFAULT_DIR


def test_checkpoints_need_the_injected_opener(ckpt, tiny_onnx):
    with pytest.raises(ChsError, match="is a training checkpoint"):
        open_model(ckpt)
    runner = open_model(ckpt, ccr=0, checkpoint=open_checkpoint)
    assert runner.meta.ccr == 0 and runner.name == "torch-cpu"
    with pytest.raises(ChsError, match="cannot run a checkpoint"):
        open_model(ckpt, "ort", checkpoint=open_checkpoint)
    with pytest.raises(ChsError, match="--ccr applies to checkpoints"):
        open_runner(tiny_onnx, ccr=1)
    with pytest.raises(ChsError, match="unknown backend"):
        open_model(tiny_onnx, "tvm")


def test_every_backend_checks_its_input_once_and_closes(ckpt, tiny_onnx):
    runners = [open_runner(ckpt), open_model(tiny_onnx, "ort", "cpu")]
    good = np.zeros((2, 3, 64, 64), np.float32)
    for r in runners:
        assert isinstance(r, RunnerBase)
        assert r.infer(good)["landmarks"].shape == (2, 68, 2)
        with pytest.raises(ChsError, match="must be float32"):
            r.infer(good.astype(np.float64))
        with pytest.raises(ChsError, match=r"shape \(N, 3, 64, 64\)"):
            r.infer(good[:, :, :32])
        bad = good.copy()
        bad[0, 0, 0, 0] = np.nan
        with pytest.raises(ChsError, match="NaN"):
            r.infer(bad)
        r.synchronize()
        with r:
            pass  # __exit__ closes
    with pytest.raises(ChsError, match="closed"):
        runners[1].infer(good)


def test_torch_runner_options_are_checked(ckpt):
    model = build_model(get_preset("tiny"))
    with pytest.raises(ChsError, match="unknown torch precision"):
        TorchRunner(model, precision="int8")
    with pytest.raises(ChsError, match="CUDA graphs need a CUDA device"):
        TorchRunner(model, graphs=True)
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    out = TorchRunner(model).infer(x)
    assert out["stages"].shape == (3, 2, 68, 2) and np.array_equal(out["stages"][-1], out["landmarks"])


def test_split_sessions_answer_exactly_as_one_session(tiny_onnx):
    """ONNX Runtime CPU batches split over single-thread sessions: same numbers, any batch size, closes."""
    x = np.random.default_rng(1).standard_normal((5, 3, 64, 64)).astype(np.float32)
    one = open_model(tiny_onnx, "ort", "cpu", threads=2)
    split = open_model(tiny_onnx, "ort", "cpu", threads=2, sessions=2)
    assert len(split.split) == 2 and not one.split
    assert [split.split_for(n) for n in (1, 2, 5)] == [0, 2, 2] and one.split_for(5) == 0
    for n in (1, 2, 5):  # one crop runs on the whole session; 5 splits 3 + 2
        a, b = one.infer(x[:n]), split.infer(x[:n])
        assert b["landmarks"].shape == (n, 68, 2)
        np.testing.assert_array_equal(a["landmarks"], b["landmarks"])
        np.testing.assert_array_equal(a["scores"], b["scores"])
    split.close()
    split.close()  # idempotent
    with pytest.raises(ChsError, match="closed"):
        split.infer(x)
    for bad in (0, 10**6):
        with pytest.raises(ChsError, match="sessions must be 1-64"):
            open_model(tiny_onnx, "ort", "cpu", sessions=bad)
