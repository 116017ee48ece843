"""``chs align``: JSON output equals the library's predictions, annotated files are written, folders skip
unreadable images, videos work, and every bad input is one ``error:`` line with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from chs.align_cmd import align
from chs.runtime.detector import dlib_available
from chs.runtime.detector_eval import box_iou
from chs.runtime.landmarks import LandmarkRuntime

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "runtime" / "assets" / "demo" / "astronaut.png"

app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
app.command()(align)


def _run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def _image(h: int = 120, w: int = 150, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return np.ascontiguousarray(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC))


def _write(path: Path, rgb: np.ndarray) -> Path:
    ok, buf = cv2.imencode(path.suffix, rgb[..., ::-1])
    assert ok
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.tobytes())
    return path


def _boxes_file(path: Path, entries: dict) -> Path:
    path.write_text(json.dumps(entries))
    return path


def _one_error_line(res, pattern: str = "") -> str:
    assert res.exit_code == 2, (res.exit_code, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.output + res.stderr
    assert pattern in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def rt(tiny_onnx) -> LandmarkRuntime:
    return LandmarkRuntime.load(tiny_onnx, providers="cpu", detector=None)


# ------------------------------------------------------------------------------------------ outputs
def test_json_lines_equal_library_predictions(tiny_onnx, rt, tmp_path):
    img = _write(tmp_path / "a.png", _image())
    boxes = [[30, 20, 90, 95], [60, 40, 140, 118]]
    bf = _boxes_file(tmp_path / "boxes.json", {"a.png": boxes})
    res = _run(img, "--model", tiny_onnx, "--boxes", bf, "--json")
    assert res.exit_code == 0, res.stderr
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["face"] for r in recs] == [0, 1] and all(r["image"] == str(img) for r in recs)
    for rec, face in zip(recs, rt.predict(img, boxes), strict=True):
        np.testing.assert_allclose(rec["landmarks"], face.landmarks, atol=5e-4)
        np.testing.assert_allclose(rec["box"], face.box, atol=5e-4)
        assert rec["score"] == pytest.approx(face.score, abs=1e-6)
        assert set(rec) == {"image", "face", "box", "score", "landmarks"}


def test_text_output_and_annotated_files(tiny_onnx, tmp_path):
    png = _write(tmp_path / "in" / "a.png", _image(seed=1))
    jpg = _write(tmp_path / "in" / "b.jpg", _image(seed=2))
    bf = _boxes_file(tmp_path / "boxes.json", {str(png): [[30, 20, 90, 95]], "b.jpg": [[10, 10, 80, 90]]})
    res = _run(png, jpg, "--model", tiny_onnx, "--boxes", bf, "--out", tmp_path / "out")
    assert res.exit_code == 0, res.stderr
    assert len(res.stdout.splitlines()) == 2 and "face 0" in res.stdout and "68 landmarks" in res.stdout
    for name in ("a_landmarks.png", "b_landmarks.jpg"):
        out = cv2.imread(str(tmp_path / "out" / name))
        assert out is not None and out.shape == (120, 150, 3)
    # something was drawn: the annotated image differs from the input around the box
    drawn = cv2.imread(str(tmp_path / "out" / "a_landmarks.png"))[..., ::-1]
    assert (drawn != _image(seed=1)).any()


def test_folder_skips_unreadable_images(tiny_onnx, tmp_path):
    folder = tmp_path / "imgs"
    for i in range(3):
        _write(folder / f"ok{i}.png", _image(seed=i))
    _write(folder / "sub" / "deep.png", _image(seed=9))
    (folder / "notes.jpg").write_bytes(b"not an image")
    ok, buf = cv2.imencode(".jpg", _image())
    (folder / "cut.jpg").write_bytes(buf.tobytes()[:300])
    (folder / "readme.txt").write_text("ignored: not an image extension")
    bf = _boxes_file(tmp_path / "b.json", {n: [[20, 20, 90, 100]] for n in ("ok0.png", "ok1.png", "ok2.png",
                                                                           "sub/deep.png")})
    res = _run(folder, "--model", tiny_onnx, "--boxes", bf, "--json", "--out", tmp_path / "out", "--batch-size", 2)
    assert res.exit_code == 0, res.stderr
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    assert sorted(Path(r["image"]).name for r in recs) == ["deep.png", "ok0.png", "ok1.png", "ok2.png"]
    warnings = [ln for ln in res.stderr.splitlines() if ln.startswith("warning: skipped")]
    assert len(warnings) == 2 and any("cut.jpg" in w and "truncated" in w for w in warnings)
    assert "2 unreadable file(s) skipped" in res.stderr and "Traceback" not in res.stderr
    assert (tmp_path / "out" / "sub" / "deep_landmarks.png").is_file()


def test_folder_with_only_unreadable_images(tiny_onnx, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    res = _run(tmp_path / "d", "--model", tiny_onnx, "--boxes", _boxes_file(tmp_path / "b.json", {}))
    assert res.exit_code == 2 and "error: none of the 1 files could be read" in res.stderr


def test_folder_skips_unreadable_videos(tiny_onnx, tmp_path):
    """Inside a folder a video that cannot be opened, or opens without one decodable frame, is skipped with a
    warning like an unreadable image; named on the command line it stays an error."""
    folder = tmp_path / "clips"
    folder.mkdir()
    writer = cv2.VideoWriter(str(folder / "a.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (96, 80))
    for i in range(3):
        writer.write(_image(80, 96, i)[..., ::-1])
    writer.release()
    (folder / "b.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    cv2.VideoWriter(str(folder / "c.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (96, 80)).release()  # no frames
    bf = _boxes_file(tmp_path / "b.json", {"a.mp4": [[10, 10, 70, 70]]})
    res = _run(folder, "--model", tiny_onnx, "--boxes", bf, "--json", "--out", tmp_path / "out")
    assert res.exit_code == 0, res.stderr
    assert [json.loads(line)["frame"] for line in res.stdout.splitlines()] == [0, 1, 2]
    warnings = [ln for ln in res.stderr.splitlines() if ln.startswith("warning: skipped")]
    assert len(warnings) == 2 and "b.mp4" in warnings[0] and "c.avi" in warnings[1] and "no readable" in warnings[1]
    assert "2 unreadable file(s) skipped" in res.stderr and "Traceback" not in res.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_landmarks.mp4"]
    _one_error_line(_run(folder / "c.avi", "--model", tiny_onnx), "has no readable frames")
    only_bad = _run(folder / "b.mp4", folder / "c.avi", "--model", tiny_onnx)
    _one_error_line(only_bad, "b.mp4")


def test_phone_and_web_video_containers_are_videos(tiny_onnx, tmp_path):
    """.m4v (phone exports) and .3gp clips named on the command line or found in a folder are read as videos, not
    refused as undecodable images or passed over in the folder."""
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ("a.m4v", "b.3gp"):
        writer = cv2.VideoWriter(str(folder / name), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (96, 80))
        assert writer.isOpened()
        for i in range(2):
            writer.write(_image(80, 96, i)[..., ::-1])
        writer.release()
    bf = _boxes_file(tmp_path / "b.json", {"a.m4v": [[10, 10, 70, 70]], "b.3gp": [[10, 10, 70, 70]]})
    for inputs in ([folder], [folder / "a.m4v", folder / "b.3gp"]):
        res = _run(*inputs, "--model", tiny_onnx, "--boxes", bf, "--json")
        assert res.exit_code == 0, res.stderr
        recs = [json.loads(line) for line in res.stdout.splitlines()]
        assert [(Path(r["image"]).name, r["frame"]) for r in recs] == [("a.m4v", 0), ("a.m4v", 1), ("b.3gp", 0),
                                                                      ("b.3gp", 1)]


def test_bad_video_boxes_name_the_key_or_the_frame_and_write_nothing(tiny_onnx, tmp_path):
    """NaN in the boxes file is refused before any work, naming its key; a box that does not fit a frame (known
    only once the frame is read) names the video and the frame; neither leaves an output behind."""
    src = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (96, 80))
    for i in range(5):
        writer.write(_image(80, 96, i)[..., ::-1])
    writer.release()
    nan = _boxes_file(tmp_path / "nan.json", {"clip.mp4": [[10, 10, 70, 70]],
                                              "clip.mp4#2": [[10, 10, float("nan"), 70]]})
    _one_error_line(_run(src, "--model", tiny_onnx, "--boxes", nan, "--out", tmp_path / "o1"),
                    f"boxes file {nan}: 'clip.mp4#2' box 0 holds NaN or infinity")
    assert not (tmp_path / "o1").exists()
    far = _boxes_file(tmp_path / "far.json", {"clip.mp4": [[10, 10, 70, 70]], "clip.mp4#3": [[10, 10, 1e9, 70]]})
    line = _one_error_line(_run(src, "--model", tiny_onnx, "--boxes", far, "--out", tmp_path / "o2", "--json"))
    assert line.startswith(f"error: {src} frame 3: box 0:") and "beyond" in line, line
    assert not any(p.is_file() for p in (tmp_path / "o2").rglob("*"))


def test_video(tiny_onnx, tmp_path):
    src = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (96, 80))
    assert writer.isOpened()
    for i in range(7):
        writer.write(_image(80, 96, i)[..., ::-1])
    writer.release()
    bf = _boxes_file(tmp_path / "b.json", {"clip.mp4": [[10, 10, 70, 70]], "clip.mp4#3": [[5, 5, 40, 40],
                                                                                             [40, 30, 90, 78]]})
    res = _run(src, "--model", tiny_onnx, "--boxes", bf, "--json", "--out", tmp_path / "out", "--batch-size", 3)
    assert res.exit_code == 0, res.stderr
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["frame"] for r in recs] == [0, 1, 2, 3, 3, 4, 5, 6]
    assert recs[3]["box"] == [5, 5, 40, 40] and recs[4]["face"] == 1
    assert all("track" in r for r in recs)  # given boxes are tracked (and smoothed) too
    tracks = [r["track"] for r in recs]  # frame 3's boxes overlap the others' too little to continue their face
    assert len(set(tracks[:3])) == 1 and len(set(tracks[5:])) == 1 and len(set(tracks[2:6])) == 4, tracks
    cap = cv2.VideoCapture(str(tmp_path / "out" / "clip_landmarks.mp4"))
    frames = 0
    while cap.read()[0]:
        frames += 1
    assert frames == 7


def test_demo(tiny_onnx, tmp_path):
    res = _run("--demo", "--model", tiny_onnx, "--out", tmp_path / "demo",
               "--boxes", _boxes_file(tmp_path / "b.json", {"astronaut.png": [[182, 89, 270, 190]]}))
    assert res.exit_code == 0, res.stderr
    out = tmp_path / "demo" / "astronaut_landmarks.png"
    assert out.is_file() and cv2.imread(str(out)).shape == (512, 512, 3)
    lines = res.stdout.splitlines()
    assert "box [182.0, 89.0, 270.0, 190.0]" in lines[0]
    assert sum(1 for ln in lines if ln.startswith("  ") and len(ln.split()) == 3) == 68


def test_demo_uses_the_bundled_detector_without_dlib(tiny_onnx, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)
    res = _run("--demo", "--model", tiny_onnx, "--out", tmp_path, "--json")
    assert res.exit_code == 0, res.stderr
    rec = json.loads(res.stdout.splitlines()[0])
    assert box_iou(np.array(rec["box"]), np.array([182, 89, 270, 190]))[0, 0] > 0.7 and len(rec["landmarks"]) == 68
    assert (tmp_path / "astronaut_landmarks.png").is_file()


@pytest.mark.skipif(not dlib_available(), reason="dlib not installed (pip install chs[detect])")
def test_detector_path(tiny_onnx):
    res = _run(DEMO, "--model", tiny_onnx, "--json")
    assert res.exit_code == 0, res.stderr
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    assert recs and recs[0]["score"] > 0  # best detection first: the face, not the mission patch
    assert abs(recs[0]["box"][0] - 182) < 15 and abs(recs[0]["box"][1] - 89) < 15


# ------------------------------------------------------------------------------------------ bad inputs
def test_bad_inputs_are_one_line(tiny_onnx, tmp_path, monkeypatch, foreign_onnx):
    good = _write(tmp_path / "g.png", _image())
    bf = _boxes_file(tmp_path / "b.json", {"g.png": [[30, 20, 90, 95]]})
    m = ["--model", tiny_onnx]
    _one_error_line(_run(tmp_path / "missing.png", *m, "--boxes", bf), "input not found")
    (tmp_path / "t.jpg").write_text("text")
    _one_error_line(_run(tmp_path / "t.jpg", *m, "--boxes", bf), "cannot decode")
    ok, buf = cv2.imencode(".jpg", _image())
    (tmp_path / "cut.jpg").write_bytes(buf.tobytes()[:400])
    _one_error_line(_run(tmp_path / "cut.jpg", *m, "--boxes", bf), "truncated")
    _write(tmp_path / "one.png", np.zeros((1, 1, 3), np.uint8))
    _one_error_line(_run(tmp_path / "one.png", *m, "--boxes", bf), "too small")
    (tmp_path / "zero.png").write_bytes(b"")
    _one_error_line(_run(tmp_path / "zero.png", *m, "--boxes", bf), "empty")
    for box, msg in (([[90, 20, 30, 95]], "inverted"), ([[500, 500, 600, 600]], "outside"),
                     ([[float("nan"), 0, 5, 5]], "NaN")):
        line = _one_error_line(_run(good, *m, "--boxes", _boxes_file(tmp_path / "bad.json", {"g.png": box})), msg)
        assert "g.png" in line and "box 0" in line
    (tmp_path / "broken.json").write_text("{not json")
    _one_error_line(_run(good, *m, "--boxes", tmp_path / "broken.json"), "not valid JSON")
    _one_error_line(_run(good, *m, "--boxes", _boxes_file(tmp_path / "b3.json", {"g.png": [[1, 2, 3]]})),
                    "not a list of")
    _one_error_line(_run(good, "--model", foreign_onnx, "--boxes", bf), "no CHS metadata")
    data = Path(tiny_onnx).read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[:1000])
    _one_error_line(_run(good, "--model", tmp_path / "cut.onnx", "--boxes", bf), "cannot load ONNX model")
    (tmp_path / "m.engine").write_bytes(b"\x00" * 64)
    _one_error_line(_run(good, "--model", tmp_path / "m.engine", "--boxes", bf), "sidecar")
    _one_error_line(_run(*m), "no inputs")
    _one_error_line(_run(good, *m, "--batch-size", 0), "--batch-size")
    _one_error_line(_run(good, "--demo", *m), "--demo takes no inputs")
    monkeypatch.setitem(sys.modules, "dlib", None)
    _one_error_line(_run(good, *m, "--detector", "dlib"),
                    "the dlib detector is not installed: pip install chs[detect], or use the bundled yunet")
    _one_error_line(_run(good, *m, "--detector", "hog"), "unknown detector 'hog'")
    _one_error_line(_run(good, *m, "--detector", tmp_path / "none.onnx"), "face detector model not found")
    _one_error_line(_run(good, *m, "--detector", foreign_onnx), "is not a YuNet face detector")
    _one_error_line(_run(good, *m, "--redetect-every", -1), "--redetect-every must be >= 0")


def test_subprocess_exit_code_and_no_torch(tiny_onnx, tmp_path):
    """The real process: exit code 2, one stderr line, and torch never imported by the align command."""
    code = textwrap.dedent("""
        import sys
        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
                return None
        sys.meta_path.insert(0, NoTorch())
        import typer
        from chs.align_cmd import align
        app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
        app.command()(align)
        app()
    """)
    bad = subprocess.run([sys.executable, "-c", code, str(tmp_path / "nope.png"), "--model", str(tiny_onnx)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [f"error: input not found: {tmp_path}/nope.png"]
    bf = _boxes_file(tmp_path / "b.json", {"astronaut.png": [[182, 89, 270, 190]]})
    good = subprocess.run([sys.executable, "-c", code, str(DEMO), "--model", str(tiny_onnx), "--boxes", str(bf),
                           "--json"], capture_output=True, text=True, timeout=120)
    assert good.returncode == 0, good.stderr
    assert len(json.loads(good.stdout)["landmarks"]) == 68


# ------------------------------------------------------------------------------------------ video tracking
def _face_video(path: Path, fixtures_dir: Path, frames: int = 12, blank: tuple[int, int] | None = None) -> Path:
    """A clip of the takeo fixture face moving; frames in ``blank`` [start, stop) are gray (no face)."""
    from chs.benchmarks.video import ClipSpec, make_clip
    from chs.runtime.datasets import load_dataset

    takeo = [s for s in load_dataset(fixtures_dir / "pts") if s.image_path.stem == "takeo"][0]
    clip = make_clip(takeo, ClipSpec(frames=frames))
    h, w = clip.frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (w, h))
    for i, f in enumerate(clip.frames):
        if blank is not None and blank[0] <= i < blank[1]:
            f = np.full_like(f, 127)
        writer.write(f[..., ::-1])
    writer.release()
    return path


def test_video_is_tracked_and_smoothed_by_default(fixtures_dir, tmp_path):
    src = _face_video(tmp_path / "face.mp4", fixtures_dir, blank=(5, 8))
    res = _run(src, "--json", "--out", tmp_path / "out")
    assert res.exit_code == 0, res.stderr
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["frame"] for r in recs] == [0, 1, 2, 3, 4, 8, 9, 10, 11]  # no face on the gray frames
    assert [r["track"] for r in recs] == [0] * 5 + [1] * 4  # a new id after the face came back
    assert "detector on 5 frame(s) (0.417 per frame)" in res.stderr  # frame 0, the 3 gray ones, frame 8
    out = tmp_path / "out" / "face_landmarks.mp4"
    cap = cv2.VideoCapture(str(out))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 12 and not list((tmp_path / "out").glob(".*part*"))
    raw = _run(src, "--json", "--no-smooth")
    raw_recs = [json.loads(line) for line in raw.stdout.splitlines()]
    assert raw_recs[0]["landmarks"] == recs[0]["landmarks"]  # the first frame has nothing to smooth against
    assert raw_recs[3]["landmarks"] != recs[3]["landmarks"]
    assert raw_recs[3]["box"] == recs[3]["box"]  # smoothing never moves the crop


def test_bad_videos_are_one_line_in_a_real_process(fixtures_dir, tmp_path):
    """FFmpeg's own messages about a broken file must not reach stderr beside the error line."""
    (tmp_path / "junk.mp4").write_bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    res = subprocess.run([sys.executable, "-m", "chs", "align", str(tmp_path / "junk.mp4")], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        f"error: cannot open video {tmp_path / 'junk.mp4'}: not a readable video file"]


def test_a_cut_avi_is_one_line_in_a_real_process(tmp_path):
    """OpenCV's own AVI reader prints 'Unexpected element ...' with raw (not UTF-8) bytes of a cut AVI straight
    to stderr; the file must be refused with the error line alone."""
    src = tmp_path / "full.avi"
    writer = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (96, 80))
    for i in range(3):
        writer.write(_image(80, 96, i)[..., ::-1])
    writer.release()
    (tmp_path / "cut.avi").write_bytes(src.read_bytes()[:200])
    res = subprocess.run([sys.executable, "-m", "chs", "align", str(tmp_path / "cut.avi")], capture_output=True,
                         timeout=120)
    assert res.returncode == 2
    assert res.stderr == f"error: cannot open video {tmp_path / 'cut.avi'}: not a readable video file\n".encode()


def test_bad_videos_are_one_line_and_leave_no_file(fixtures_dir, tmp_path, monkeypatch):
    (tmp_path / "zero.mp4").write_bytes(b"")
    _one_error_line(_run(tmp_path / "zero.mp4", "--out", tmp_path / "o"), "zero.mp4")
    (tmp_path / "junk.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    _one_error_line(_run(tmp_path / "junk.mp4", "--out", tmp_path / "o"), "junk.mp4")
    src = _face_video(tmp_path / "face.mp4", fixtures_dir, frames=8)
    (tmp_path / "cut.mp4").write_bytes(src.read_bytes()[:600])
    _one_error_line(_run(tmp_path / "cut.mp4", "--out", tmp_path / "o"), "cut.mp4")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*.mp4"))

    from chs.runtime.tracking import FaceTracker

    real = FaceTracker.update

    def interrupted(self, frame, boxes=None):
        if self.frames == 4:
            raise KeyboardInterrupt
        return real(self, frame, boxes)

    monkeypatch.setattr(FaceTracker, "update", interrupted)
    res = _run(src, "--out", tmp_path / "o2")
    assert res.exit_code == 130
    assert not any((tmp_path / "o2").rglob("*")) or not any(p.is_file() for p in (tmp_path / "o2").rglob("*"))
