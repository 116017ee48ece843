"""The README's Python blocks run as written (in a folder holding a ``photo.jpg`` and a ``clip.mp4``), and
``chs.runtime`` / ``chs`` export the names they use."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _python_blocks(remote: bool = False) -> list[str]:
    """The README's Python blocks; ``remote``: only those that talk to a Triton server (``triton://``), which
    tests/test_triton_server.py runs against its own server; otherwise all the others."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if ("triton://" in b) == remote]


def test_readme_python_blocks_run(tmp_path, monkeypatch, capsys):
    from chs.runtime import DEMO_IMAGE

    shutil.copy(DEMO_IMAGE, tmp_path / "photo.jpg")  # a PNG under a .jpg name: read by content
    img = cv2.imread(str(DEMO_IMAGE))
    writer = cv2.VideoWriter(str(tmp_path / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (256, 256))
    for t in range(8):
        m = np.float32([[0.5, 0, 3 * t], [0, 0.5, 2 * t]])
        writer.write(cv2.warpAffine(img, m, (256, 256), borderMode=cv2.BORDER_REPLICATE))
    writer.release()
    monkeypatch.chdir(tmp_path)
    blocks = _python_blocks()
    assert len(blocks) >= 5
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {i}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "ort-cpu yunet" in out and "detector on 1 of 8 frames" in out and "ort-cpu 2" in out
    assert namespace["faces"] and namespace["tracker"].frames == 8


def test_exports():
    import chs
    import chs.runtime

    for name in chs.runtime.__all__:
        assert getattr(chs.runtime, name) is not None
    assert chs.LandmarkRuntime is chs.runtime.LandmarkRuntime is chs.runtime.landmarks.LandmarkRuntime
    assert "YuNetDetector" in dir(chs.runtime)


def test_readme_extras_table_matches_pyproject():
    """Every extra pyproject defines has its row in the README's install table, and the table names no other."""
    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    first_cells = re.findall(r"^\| (`[a-z0-9-]+`(?: / `[a-z0-9-]+`)*) \|", (REPO / "README.md").read_text(), flags=re.M)
    rows = {name for cell in first_cells for name in re.findall(r"`([a-z0-9-]+)`", cell)}
    assert rows == extras
