"""``chs-bench video`` on two fixture faces: clips carry the known motion exactly, the files are written,
and the rows' figures are real (jitter and NME finite and plausible, detector calls counted)."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from chs.bench_cmd import bench_app
from chs.benchmarks.video import ClipSpec, VideoBench, make_clip, score
from chs.runtime.datasets import load_dataset
from chs.runtime.geometry import invert_affine, transform_points


def test_clip_truth_follows_the_motion(fixtures_dir):
    sample = load_dataset(fixtures_dir / "pts")[3]
    clip = make_clip(sample, ClipSpec(frames=5))
    assert len(clip.frames) == 5 and clip.truth.shape == (5, 68, 2)
    for t in range(5):
        back = transform_points(clip.truth[t], invert_affine(clip.motions[t]))
        np.testing.assert_allclose(back, sample.landmarks, atol=1e-9)
    perfect = score(clip, list(clip.truth), sample.scheme)
    assert perfect["nme_sum"] < 1e-9 and perfect["jitter_sum"] < 1e-9 and perfect["lost"] == 0
    step = np.array([0.01 * clip.iod, 0.0])  # the face shakes 1 % IOD along x, back and forth
    shaky = [transform_points(sample.landmarks + (t % 2) * step, clip.motions[t]) for t in range(5)]
    assert abs(score(clip, shaky, sample.scheme)["jitter_sum"] / 4 - 0.01) < 1e-3
    assert score(clip, [None, *clip.truth[1:]], sample.scheme)["lost"] == 1


def test_chs_bench_video_writes_results(fixtures_dir, tmp_path):
    res = CliRunner().invoke(bench_app, ["video", "--data", str(fixtures_dir / "pts"), "--clips", "2", "--frames",
                                         "6", "--detectors", "yunet", "--out", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert [r["row"] for r in rows] == ["per-frame detection (yunet)", "tracking", "tracking + smoothing"]
    assert rows[0]["detector_per_frame"] == 1.0 and rows[1]["detector_per_frame"] == 1 / 6
    for r in rows:
        assert r["frames"] == 12 and r["lost_frames"] == 0 and 0 < r["nme_pct"] < 15 and 0 < r["jitter_pct"] < 5
    for name in ("video.json", "video.md", "jitter_vs_nme.png", "command.txt", "machine.json"):
        assert (tmp_path / name).is_file()
    bad = CliRunner().invoke(bench_app, ["video", "--data", str(fixtures_dir / "pts"), "--clips", "0"])
    assert bad.exit_code == 2 and "--clips must be >= 1" in bad.output


def test_chs_bench_video_help_shows_the_default_values():
    res = CliRunner().invoke(bench_app, ["video", "--help"])
    text = " ".join(res.stdout.split())
    clips, frames = f"[default: {VideoBench.clips}]", f"[default: {ClipSpec.frames}]"
    assert res.exit_code == 0 and clips in text and frames in text, text
    assert "VideoBench." not in text and "ClipSpec." not in text


def test_chs_bench_video_refuses_an_empty_out(fixtures_dir, tmp_path, monkeypatch):
    """``--out ''`` is an error before any work, not the current folder filled with result files."""
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(bench_app, ["video", "--data", str(fixtures_dir / "pts"), "--clips", "1", "--frames", "2",
                                         "--detectors", "yunet", "--out", ""])
    assert res.exit_code == 2 and res.stderr.strip() == "error: --out is an empty path ('')", res.output
    assert not list(tmp_path.iterdir())
