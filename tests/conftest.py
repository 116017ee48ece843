"""Shared pytest fixtures: where the test fixtures and the (optional) shared data live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture
def cu():
    """A fake CUDA runtime (tests/fake_tensorrt.py) for the TensorRT runner tests."""
    from fake_tensorrt import FakeCudart

    return FakeCudart()


@pytest.fixture
def trt(cu):
    """A fake TensorRT 11 module bound to ``cu``."""
    from fake_tensorrt import make_fake_trt

    return make_fake_trt("11.0.0", cudart=cu)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """tests/fixtures: small real samples of each format, copied in so the suite runs without shared data."""
    return FIXTURES


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder ($CHS_DATA_ROOT, else <repo>/../shared/data); skips the test when absent."""
    root = Path(os.environ.get("CHS_DATA_ROOT") or REPO.parent / "shared" / "data")
    if not root.is_dir():
        pytest.skip(f"shared data not found at {root} (set CHS_DATA_ROOT)")
    return root


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    """The ``tiny`` preset with random weights (torch.manual_seed(0)) exported to ONNX once per session:
    runtime and CLI tests need a real exported model without shipping one."""
    torch = pytest.importorskip("torch")
    from chs.export.onnx_export import export_onnx
    from chs.model.chs import CHSNet
    from chs.model.config import get_preset

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_onnx") / "tiny.onnx"
    export_onnx(CHSNet(get_preset("tiny")), path)
    return path


@pytest.fixture(scope="session")
def tiny_ccr_onnx(tmp_path_factory) -> Path:
    """``tiny`` exported once per session with non-zero CCR heads (fc is zero-initialised, which would make
    the cascade an identity): what the precision and calibration tests convert and compare."""
    torch = pytest.importorskip("torch")
    from chs.export.onnx_export import export_onnx
    from chs.model.chs import build_model
    from chs.model.config import get_preset

    torch.manual_seed(0)
    model = build_model(get_preset("tiny")).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for stage in model.ccr:
            stage.fc.weight.normal_(0.0, 0.02, generator=gen)
    path = tmp_path_factory.mktemp("tiny_ccr") / "fp32.onnx"
    export_onnx(model, path)
    return path


@pytest.fixture()
def foreign_onnx(tmp_path) -> Path:
    """A valid ONNX model that is not a CHS export (an Identity without chs metadata)."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 64, 64])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 64, 64])
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "identity", [x], [y])
    path = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path
