"""Shared pytest fixtures: where the test fixtures and the (optional) shared data live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


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
