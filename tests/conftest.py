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
