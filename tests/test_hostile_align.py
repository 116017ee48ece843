"""Hostile input to ``chs-align`` and the runtime API (issue 14 items 1-3, 6, 11-14, 17): every case ends in
one ``error:`` line and exit 2, a correct result, or a quiet end; no hang, no crash, no partial file."""

from __future__ import annotations

import json
import os
import struct
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
from chs.runtime.draw import VideoWriter
from chs.runtime.landmarks import LandmarkRuntime
from tests.test_align_cli import _boxes_file as _boxes
from tests.test_align_cli import _image, _write
from tests.test_hostile_images import png_declaring, truncated_jpeg_with_eoi

app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
app.command()(align)


def _run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _cli(*args, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chs", "align", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kw)


def _one_error_line(res, pattern: str = "") -> str:
    stderr = res.stderr
    code = getattr(res, "exit_code", getattr(res, "returncode", None))
    assert code == 2, (code, res.stdout, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert pattern in lines[0], lines[0]
    return lines[0]


def _video(path: Path, frames: int, size: tuple[int, int] = (96, 80)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, size)
    assert writer.isOpened()
    for i in range(frames):
        writer.write(_image(size[1], size[0], i)[..., ::-1])
    writer.release()
    return path


# ------------------------------------------------------------------------------------ 1, 2, 11, 17: inputs
def test_pixel_bomb_on_the_command_line(tiny_onnx, tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_declaring(30000, 30000))
    bf = _boxes(tmp_path / "b.json", {"bomb.png": [[0, 0, 100, 100]]})
    _one_error_line(_run(bomb, "--model", tiny_onnx, "--boxes", bf), "over the limit of 100 MP")


def test_fifo_named_on_the_command_line_does_not_block(tiny_onnx, tmp_path):
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    res = _cli(fifo, "--model", tiny_onnx, timeout=60)
    _one_error_line(res, "is a FIFO (named pipe), not a regular file")


def test_special_entries_in_a_folder_are_skipped_with_a_warning(tiny_onnx, tmp_path):
    folder = tmp_path / "imgs"
    _write(folder / "ok.png", _image())
    os.mkfifo(folder / "pipe.jpg")
    (folder / "loop1.png").symlink_to(folder / "loop2.png")
    (folder / "loop2.png").symlink_to(folder / "loop1.png")
    (folder / "cut.jpg").write_bytes(truncated_jpeg_with_eoi())
    bf = _boxes(tmp_path / "b.json", {"ok.png": [[20, 20, 90, 100]]})
    res = _run(folder, "--model", tiny_onnx, "--boxes", bf, "--json")
    assert res.exit_code == 0, res.stderr
    assert [Path(json.loads(ln)["image"]).name for ln in res.stdout.splitlines()] == ["ok.png"]
    warnings = [ln for ln in res.stderr.splitlines() if ln.startswith("warning: skipped")]
    assert any("pipe.jpg" in w and "FIFO" in w for w in warnings), res.stderr
    assert any("loop1.png" in w and "symlink loop" in w for w in warnings), res.stderr
    assert any("cut.jpg" in w and "corrupt" in w for w in warnings), res.stderr
    # the summary counts every skipped entry it warned about (FIFO, both loop links, the corrupt JPEG)
    assert len(warnings) == 4 and "4 unreadable file(s) skipped" in res.stderr.splitlines()[-1], res.stderr


def test_corrupt_jpeg_named_on_the_command_line(tiny_onnx, tmp_path):
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(truncated_jpeg_with_eoi())
    bf = _boxes(tmp_path / "b.json", {"cut.jpg": [[180, 90, 270, 190]]})
    # a real process: libjpeg's own warning on file descriptor 2 must not come out as a second line
    _one_error_line(_cli(cut, "--model", tiny_onnx, "--boxes", bf), "premature end of data segment")


@pytest.mark.parametrize("kind", ["loop", "/dev/zero", "/proc/self/mem"])
def test_loops_and_special_files_are_named(tiny_onnx, tmp_path, kind):
    if kind == "loop":
        target = tmp_path / "a.jpg"
        target.symlink_to(tmp_path / "b.jpg")
        (tmp_path / "b.jpg").symlink_to(target)
        expected = "symlink loop"
    else:
        target = Path(kind)
        if not target.exists():
            pytest.skip(f"{kind} does not exist here")
        expected = "character device" if kind == "/dev/zero" else "special file of unknown size"
    line = _one_error_line(_run(target, "--model", tiny_onnx), expected)
    assert "empty (0 bytes)" not in line and "not found" not in line


# ------------------------------------------------------------------------------------ 3, 6: arrays and boxes
def test_broadcast_giant_array_is_refused_not_a_segfault(tiny_onnx):
    code = textwrap.dedent(f"""
        import numpy as np
        from chs.runtime.errors import ChsError
        from chs.runtime.landmarks import LandmarkRuntime
        rt = LandmarkRuntime.load({str(tiny_onnx)!r}, providers="cpu", detector=None)
        img = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (100000, 100000, 3))
        try:
            rt.predict(img, [[0, 0, 100, 100]])
        except ChsError as e:
            print("ChsError:", e)
        small = np.broadcast_to(np.full((1, 1, 3), 90, np.uint8), (200, 300, 3))
        dense = np.ascontiguousarray(small)
        a, b = rt.predict(small, [[50, 40, 150, 160]]), rt.predict(dense, [[50, 40, 150, 160]])
        print("same:", bool(np.array_equal(a[0].landmarks, b[0].landmarks)))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, (res.returncode, res.stderr[-2000:])
    assert "ChsError: image array is 100000x100000" in res.stdout and "over the limit" in res.stdout
    assert "same: True" in res.stdout


@pytest.fixture(scope="module")
def rt(tiny_onnx) -> LandmarkRuntime:
    return LandmarkRuntime.load(tiny_onnx, providers="cpu", detector=None)


@pytest.mark.parametrize("box, message", [
    ([177, 88, 1e308, 1e308], "beyond +-1e+07 pixels"),
    ([10, 10, 10 + 1e-9, 10 + 1e-9], "smaller than 4 px a side"),
    ([-100000, -100000, 1, 1], "more than 4x the size"),
    ([-1.5e308, -1.5e308, 1.5e308, 1.5e308], "beyond +-1e+07 pixels"),
    ([10**400, 0, 1, 1], "too large for a coordinate"),
    ([-60, -60, 20, 20], "mostly outside the 150x120 image (6% inside"),
])
def test_insane_boxes_are_refused(rt, box, message):
    from chs.runtime.errors import ChsError

    with pytest.raises(ChsError, match=None) as e:
        rt.predict(_image(), [box])
    assert message in str(e.value), str(e.value)


def test_insane_boxes_from_a_boxes_file(tiny_onnx, tmp_path):
    img = _write(tmp_path / "a.png", _image())
    bf = tmp_path / "b.json"
    bf.write_text('{"a.png": [[177, 88, 1e308, 1e308]]}')
    _one_error_line(_run(img, "--model", tiny_onnx, "--boxes", bf), "beyond +-1e+07 pixels")
    bf.write_text('{"a.png": [[' + "9" * 400 + ', 0, 1, 1]]}')
    _one_error_line(_run(img, "--model", tiny_onnx, "--boxes", bf), "too large for a coordinate")


def test_a_face_half_outside_the_image_is_still_served(rt):
    faces = rt.predict(_image(), [[-30, 20, 50, 100]])  # 62 % inside: a face at the image edge
    assert len(faces) == 1 and np.isfinite(faces[0].landmarks).all()


# ------------------------------------------------------------------------------------ 12: interrupted video
def test_interrupted_video_leaves_no_partial_file(tiny_onnx, tmp_path, monkeypatch):
    src = _video(tmp_path / "clip.mp4", 12)
    bf = _boxes(tmp_path / "b.json", {"clip.mp4": [[10, 10, 70, 70]]})
    calls = {"n": 0}
    original = LandmarkRuntime.predict_batch

    def interrupted(self, images, boxes_list=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, images, boxes_list)

    monkeypatch.setattr(LandmarkRuntime, "predict_batch", interrupted)
    res = _run(src, "--model", tiny_onnx, "--boxes", bf, "--out", tmp_path / "out", "--batch-size", 2)
    assert res.exit_code == 130, (res.exit_code, res.stderr)
    assert calls["n"] == 3
    left = [p for p in (tmp_path / "out").rglob("*") if p.is_file()] if (tmp_path / "out").exists() else []
    assert left == [], left
    monkeypatch.setattr(LandmarkRuntime, "predict_batch", original)
    res = _run(src, "--model", tiny_onnx, "--boxes", bf, "--out", tmp_path / "out")
    assert res.exit_code == 0, res.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["clip_landmarks.mp4"]


# ------------------------------------------------------------------------------------ 13: closed stdout
@pytest.mark.parametrize("as_json", [True, False])
def test_closed_stdout_ends_quietly(tiny_onnx, tmp_path, as_json):
    src = _video(tmp_path / "clip.mp4", 40)
    boxes = [[5 + (i % 5) * 12, 5 + (i // 5) * 10, 40 + (i % 5) * 12, 40 + (i // 5) * 10] for i in range(25)]
    bf = _boxes(tmp_path / "b.json", {"clip.mp4": boxes})  # 1000 faces: far more output than a pipe holds
    args = [sys.executable, "-m", "chs", "align", str(src), "--model", str(tiny_onnx), "--boxes", str(bf)]
    proc = subprocess.Popen(args + (["--json"] if as_json else []), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    proc.stdout.close()  # `| head -1`
    _, err = proc.communicate(timeout=120)
    assert first.strip()
    assert proc.returncode == 0, (proc.returncode, err)
    assert "Traceback" not in err and "BrokenPipe" not in err and "error" not in err, err


# ------------------------------------------------------------------------------------ 14: output locations
def test_demo_refuses_a_file_named_like_its_folder_before_work(tiny_onnx, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("chs-demo").write_text("a file, not a folder")
    res = _run("--demo", "--model", tiny_onnx)
    _one_error_line(res, "--out chs-demo exists and is not a folder")
    assert res.stdout == ""


def test_out_is_a_file_refused_before_results(tiny_onnx, tmp_path):
    img = _write(tmp_path / "in" / "a.png", _image())
    bf = _boxes(tmp_path / "b.json", {"a.png": [[30, 20, 90, 95]]})
    (tmp_path / "taken").write_text("x")
    res = _run(tmp_path / "in", "--model", tiny_onnx, "--boxes", bf, "--out", tmp_path / "taken")
    _one_error_line(res, "exists and is not a folder")
    assert res.stdout == ""
    res = _run(img, "--model", tiny_onnx, "--boxes", bf, "--out", tmp_path / "taken" / "sub")
    _one_error_line(res, "is a file, not a folder")
    assert res.stdout == ""


# ------------------------------------------------------------------------------------ 17: newline in a path
def test_newline_in_a_path_keeps_plain_output_one_line_per_face(tiny_onnx, tmp_path):
    img = _write(tmp_path / "two\nlines.png", _image())
    bf = _boxes(tmp_path / "b.json", {"two\nlines.png": [[30, 20, 90, 95]]})
    res = _run(img, "--model", tiny_onnx, "--boxes", bf)
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 1 and "two\\nlines.png  face 0" in lines[0], lines
    res = _run(img, "--model", tiny_onnx, "--boxes", bf, "--json")
    assert json.loads(res.stdout)["image"] == str(img)


# ------------------------------------------------------------------------------------ damaged and odd videos
def _avi(path: Path, frames: int = 20, size: tuple[int, int] = (64, 48), rate: int = 10, scale: int = 1) -> Path:
    """An MJPG .avi whose header declares ``rate / scale`` fps (patched in: OpenCV's writer refuses odd rates)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, size)
    assert writer.isOpened()
    for i in range(frames):
        writer.write(_image(size[1], size[0], i)[..., ::-1])
    writer.release()
    data = bytearray(path.read_bytes())
    struct.pack_into("<II", data, data.find(b"strh") + 28, scale, rate)  # dwScale, dwRate
    path.write_bytes(bytes(data))
    return path


def _frames_and_fps(path: Path) -> tuple[int, float]:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    return n, cap.get(cv2.CAP_PROP_FPS)


def test_a_video_cut_short_is_reported_with_both_counts(tiny_onnx, tmp_path):
    whole = _avi(tmp_path / "whole.avi")
    cut = tmp_path / "cut.avi"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.6)])  # the header still declares 20 frames
    bf = _boxes(tmp_path / "b.json", {"whole.avi": [[10, 8, 50, 44]], "cut.avi": [[10, 8, 50, 44]]})
    res = _run(cut, "--model", tiny_onnx, "--boxes", bf, "--json")
    assert res.exit_code == 0, res.stderr
    decoded = len({json.loads(line)["frame"] for line in res.stdout.splitlines()})
    assert 0 < decoded < 20
    lines = res.stderr.strip().splitlines()
    assert lines[0] == (f"warning: video {cut} ended after {decoded} of the 20 frames its header declares "
                        "(damaged or truncated file)"), lines
    assert "1 video(s) ended before their declared frame count" in lines[-1]
    res = _run(whole, "--model", tiny_onnx, "--boxes", bf, "--json")
    assert res.exit_code == 0 and "warning" not in res.stderr and len(res.stdout.splitlines()) == 20


def test_empty_path_strings_are_refused(tiny_onnx, tmp_path):
    img = _write(tmp_path / "a.png", _image())
    _one_error_line(_run("", "--model", tiny_onnx), "error: an input path is empty ('')")
    _one_error_line(_run(img, "--model", tiny_onnx, "--boxes", ""), "error: --boxes is an empty path ('')")
    _one_error_line(_run(img, "--model", tiny_onnx, "--out", ""), "error: --out is an empty path ('')")
    _one_error_line(_run("--demo", "--model", tiny_onnx, "--out", ""), "error: --out is an empty path ('')")
    _one_error_line(_run(img, "--model", ""), "error: the model path is empty ('')")


def test_model_and_boxes_paths_are_named_for_what_they_are(tiny_onnx, tmp_path):
    img = _write(tmp_path / "a.png", _image())
    (tmp_path / "d.onnx").mkdir()
    _one_error_line(_run(img, "--model", tmp_path / "d.onnx"), "d.onnx is a folder, not a model file")
    _one_error_line(_run(img, "--model", tmp_path), f"model {tmp_path} is a folder without a model")
    os.mkfifo(tmp_path / "fifo.json")
    for boxes, what in (("/dev/null", "is a character device"), (tmp_path / "fifo.json", "is a FIFO (named pipe)"),
                        (tmp_path / "d.onnx", "is a directory"), (tmp_path / "none.json", "boxes file not found")):
        line = _one_error_line(_run(img, "--model", tiny_onnx, "--boxes", boxes), what)
        assert "boxes file" in line, line


def test_odd_frame_rates_are_written_at_a_sane_rate(tiny_onnx, tmp_path):
    bf = _boxes(tmp_path / "b.json", {"fast.avi": [[10, 8, 50, 44]], "slow.avi": [[10, 8, 50, 44]]})
    for name, rate, scale, written in (("fast.avi", 70000, 1, 1000.0), ("slow.avi", 1, 100000, 0.1)):
        src = _avi(tmp_path / name, frames=5, rate=rate, scale=scale)
        res = _run(src, "--model", tiny_onnx, "--boxes", bf, "--out", tmp_path / "out")
        assert res.exit_code == 0, res.stderr
        dst = tmp_path / "out" / f"{src.stem}_landmarks.mp4"
        assert res.stderr.splitlines()[0] == (f"warning: {src} declares {rate / scale:g} fps; {dst} is written at "
                                              f"{written:g} fps")
        assert _frames_and_fps(dst) == (5, written)


def test_frames_too_small_for_the_codec_are_named(tiny_onnx, tmp_path):
    src = _avi(tmp_path / "dot.avi", frames=3, size=(1, 1))
    res = _run(src, "--model", tiny_onnx, "--boxes", _boxes(tmp_path / "b.json", {"dot.avi": []}),
               "--out", tmp_path / "out")
    _one_error_line(res, f"error: cannot write video {tmp_path / 'out' / 'dot_landmarks.mp4'}: its 1x1 px frames are "
                         "outside what the mp4v codec can write (2 to 8191 px a side)")
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def test_a_failing_video_writer_is_one_line_without_opencv_logs(tmp_path):
    code = textwrap.dedent(f"""
        import numpy as np
        from chs.runtime.draw import VideoWriter
        from chs.runtime.errors import ChsError
        w = VideoWriter({str(tmp_path / "v.mp4")!r}, 25.0)
        w.fps = 70000.0  # past the clamp: mp4v refuses it
        try:
            w.write(np.zeros((48, 64, 3), np.uint8))
        except ChsError as e:
            print("ChsError:", e)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stdout.strip() == (f"ChsError: cannot write video {tmp_path / 'v.mp4'}: OpenCV has no working mp4v "
                                  "encoder for 64x48 px at 70000 fps"), (res.stdout, res.stderr)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert list(tmp_path.iterdir()) == []


def test_two_writers_of_one_video_use_their_own_temporary_files(tmp_path):
    """Two runs writing the same annotated video: each its own part file, the last to finish wins whole."""
    target = tmp_path / "out" / "clip_landmarks.mp4"
    first, second = VideoWriter(target, 10.0), VideoWriter(target, 10.0)
    for i in range(6):
        first.write(_image(48, 64, i))
        if i < 4:
            second.write(_image(48, 64, i))
    assert first.part != second.part and first.part.exists() and second.part.exists()
    first.close()
    assert _frames_and_fps(target)[0] == 6
    second.close()
    assert _frames_and_fps(target)[0] == 4
    assert [p.name for p in target.parent.iterdir()] == ["clip_landmarks.mp4"]


def test_video_frames_are_held_to_the_pixel_limit_before_decoding(tiny_onnx, tmp_path, monkeypatch):
    (tmp_path / "bomb.mp4").write_bytes(png_declaring(30000, 30000))
    _one_error_line(_run(tmp_path / "bomb.mp4", "--model", tiny_onnx),
                    f"error: video {tmp_path / 'bomb.mp4'} is 30000x30000 = 900.0 MP, over the limit of 100 MP")
    src = _video(tmp_path / "clip.mp4", 3)
    monkeypatch.setenv("CHS_MAX_IMAGE_PIXELS", "1000")
    _one_error_line(_run(src, "--model", tiny_onnx), f"error: video {src} is 96x80 = 0.0 MP, over the limit of 0.001")
