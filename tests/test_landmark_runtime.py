"""LandmarkRuntime: values against an independent crop/infer/invert computation, batching, threads, bad
inputs, model loading errors, and that the runtime never needs torch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from chs.runtime.backends.ort import OrtRunner
from chs.runtime.detector import BoxMap
from chs.runtime.errors import ChsError
from chs.runtime.geometry import crop_face, invert_affine, transform_points
from chs.runtime.landmarks import DEFAULT_MODEL, Face, LandmarkRuntime

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "runtime" / "assets" / "demo" / "astronaut.png"
DEMO_BOX = [182.0, 89.0, 270.0, 190.0]


def _image(h: int = 120, w: int = 150, seed: int = 0) -> np.ndarray:
    """A smooth random RGB image (smooth so that crops are not all noise)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return np.ascontiguousarray(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC))


@pytest.fixture(scope="module")
def runner(tiny_onnx) -> OrtRunner:
    return OrtRunner(tiny_onnx, providers="cpu")


@pytest.fixture(scope="module")
def rt(runner) -> LandmarkRuntime:
    return LandmarkRuntime(runner, detector=None)


def _expected(runner: OrtRunner, image: np.ndarray, box) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks in image pixels computed independently: crop, normalise, infer, inverse affine."""
    crop, m = crop_face(image, box, runner.meta.input_size, runner.meta.crop)
    res = runner.infer(runner.meta.norm(crop))
    return transform_points(res["landmarks"][0].astype(np.float64), invert_affine(m)), res["scores"][0]


def _same(a: list[Face], b: list[Face]) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(x.landmarks, y.landmarks) and np.array_equal(x.scores, y.scores)
        and np.array_equal(x.box, y.box) and x.score == y.score for x, y in zip(a, b, strict=True))


# ------------------------------------------------------------------------------------------ values
def test_landmarks_are_crop_landmarks_through_inverse_affine(rt, runner):
    img = _image()
    boxes = [[30, 20, 90, 95], [70.5, 40.25, 140, 118], [-10, -5, 40, 50]]  # the last hangs off the corner
    faces = rt.predict(img, boxes)
    assert len(faces) == 3
    for face, box in zip(faces, boxes, strict=True):
        lm, sc = _expected(runner, img, box)
        assert face.landmarks.shape == (68, 2) and face.landmarks.dtype == np.float64
        np.testing.assert_allclose(face.landmarks, lm, rtol=0, atol=1e-9)
        np.testing.assert_allclose(face.scores, sc, rtol=0, atol=1e-7)
        np.testing.assert_array_equal(face.box, np.asarray(box, dtype=np.float64))
        assert face.score == pytest.approx(float(np.mean(face.scores)))
        assert face.detection_score is None


def test_landmarks_follow_the_face_when_the_image_is_shifted(rt):
    """Padding the image and the box by the same offset moves every landmark by exactly that offset."""
    img = _image()
    padded = np.zeros((img.shape[0] + 13, img.shape[1] + 21, 3), np.uint8)
    padded[13:, 21:] = img
    a = rt.predict(img, [[30, 20, 90, 95]])[0]
    b = rt.predict(padded, [[51, 33, 111, 108]])[0]
    np.testing.assert_allclose(b.landmarks - a.landmarks, np.broadcast_to([21.0, 13.0], a.landmarks.shape),
                               atol=1e-3)


def test_single_box_and_empty_boxes(rt):
    img = _image()
    one = rt.predict(img, [30, 20, 90, 95])
    assert len(one) == 1 and _same(one, rt.predict(img, [[30, 20, 90, 95]]))
    assert rt.predict(img, np.zeros((0, 4))) == []
    assert rt.predict_batch([img, img], [[], [[30, 20, 90, 95]]])[0] == []


def test_predict_batch_equals_one_by_one(runner):
    rt = LandmarkRuntime(runner, detector=None, max_batch=3)  # 7 faces -> chunks of 3, 3, 1
    imgs = [_image(120, 150, 1), _image(90, 64, 2), _image(200, 180, 3)]
    boxes = [[[30, 20, 90, 95], [60, 40, 140, 118]], [[5, 5, 60, 80]],
             [[10, 10, 100, 120], [50, 60, 170, 190], [0, 0, 30, 30], [90, 20, 160, 100]]]
    batched = rt.predict_batch(imgs, boxes)
    assert [len(f) for f in batched] == [2, 1, 4]
    for img, bxs, faces in zip(imgs, boxes, batched, strict=True):
        assert _same(faces, [rt.predict(img, [b])[0] for b in bxs])
    big = LandmarkRuntime(runner, detector=None, max_batch=32)
    assert all(_same(a, b) for a, b in zip(batched, big.predict_batch(imgs, boxes), strict=True))


def test_threads_are_bit_identical_to_serial(rt):
    cases = [(_image(120, 150, s), [[20 + s, 15, 90 + s, 100], [60, 30 + s, 130, 110]]) for s in range(4)]
    serial = [rt.predict(img, b) for img, b in cases]

    def work(t: int) -> bool:
        return all(_same(rt.predict(*cases[(t + i) % 4]), serial[(t + i) % 4]) for i in range(50))

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(work, range(8)))


# ------------------------------------------------------------------------------------------ images
def _write_png(path: Path, arr: np.ndarray) -> Path:
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def test_path_input_and_png_variants_give_the_same_result(rt, tmp_path):
    rgb = _image()
    box = [[30, 20, 90, 95]]
    ref = rt.predict(rgb, box)
    assert _same(rt.predict(_write_png(tmp_path / "rgb.png", rgb[..., ::-1]), box), ref)
    assert _same(rt.predict(str(tmp_path / "rgb.png"), box), ref)
    # 16-bit: v * 257 >> 8 == v, so the 8-bit image read back is the original
    assert _same(rt.predict(_write_png(tmp_path / "rgb16.png", rgb[..., ::-1].astype(np.uint16) * 257), box), ref)
    rgba = np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 7, np.uint8)])
    assert _same(rt.predict(_write_png(tmp_path / "rgba.png", rgba), box), ref)  # alpha dropped
    gray = rgb[..., 1].copy()
    assert _same(rt.predict(_write_png(tmp_path / "gray.png", gray), box), rt.predict(np.dstack([gray] * 3), box))


@pytest.mark.parametrize("name, data, message", [
    ("missing.png", None, "not found"),
    ("notes.jpg", b"this is not an image", "cannot decode"),
    ("empty.png", b"", "empty"),
])
def test_bad_image_files(rt, tmp_path, name, data, message):
    p = tmp_path / name
    if data is not None:
        p.write_bytes(data)
    with pytest.raises(ChsError, match=message):
        rt.predict(p, [[0, 0, 10, 10]])


def test_truncated_jpeg_and_tiny_png(rt, tmp_path):
    ok, buf = cv2.imencode(".jpg", _image())
    (tmp_path / "cut.jpg").write_bytes(buf.tobytes()[: len(buf) // 2])
    with pytest.raises(ChsError, match="truncated"):
        rt.predict(tmp_path / "cut.jpg", [[0, 0, 10, 10]])
    with pytest.raises(ChsError, match="too small"):
        rt.predict(_write_png(tmp_path / "one.png", np.zeros((1, 1, 3), np.uint8)), [[0, 0, 1, 1]])


@pytest.mark.parametrize("arr, message", [
    (np.zeros((40, 40, 3), np.float32), "uint8"),
    (np.zeros((40, 40, 3), np.uint16), "uint8"),
    (np.zeros((40, 40), np.uint8), r"\(H, W, 3\)"),
    (np.zeros((40, 40, 4), np.uint8), r"\(H, W, 3\)"),
    (np.zeros((0, 0, 3), np.uint8), "empty"),
    ([[1, 2, 3]], "file path or an RGB uint8 array"),
])
def test_bad_image_arrays(rt, arr, message):
    with pytest.raises(ChsError, match=message):
        rt.predict(arr, [[0, 0, 10, 10]])


@pytest.mark.parametrize("boxes, message", [
    ([[float("nan"), 0, 10, 10]], "box 0: .*NaN"),
    ([[10, 10, 20, 20], [30, 30, 20, 40]], "box 1: .*inverted"),
    ([[200, 10, 260, 60]], "box 0: .*outside"),
    ([[-50, -50, -10, -10]], "box 0: .*outside"),
    ([[0, 0, 10]], r"shape \(k, 4\)"),
    ("abc", "boxes must"),
])
def test_bad_boxes(rt, boxes, message):
    with pytest.raises(ChsError, match=message):
        rt.predict(_image(), boxes)


def test_batch_length_mismatch(rt):
    with pytest.raises(ChsError, match="2 images but 1 box lists"):
        rt.predict_batch([_image(), _image()], [[[0, 0, 10, 10]]])


# ------------------------------------------------------------------------------------------ models
def test_load_paths_and_runner_objects(tiny_onnx, runner):
    rt = LandmarkRuntime.load(tiny_onnx, providers="cpu", detector=None)
    assert rt.runner.name == "ort-cpu" and rt.meta.input_size == 64
    assert LandmarkRuntime.load(runner).runner is runner
    img = _image()
    assert _same(rt.predict(img, [[30, 20, 90, 95]]), LandmarkRuntime(runner).predict(img, [[30, 20, 90, 95]]))


def test_default_model(tiny_onnx):
    if DEFAULT_MODEL.is_file():
        assert LandmarkRuntime.load("default").meta.num_points > 0
    else:
        with pytest.raises(ChsError, match="bundled default model is not installed"):
            LandmarkRuntime.load("default")


def test_model_errors(tiny_onnx, tmp_path, foreign_onnx):
    with pytest.raises(ChsError, match="no CHS metadata"):
        LandmarkRuntime.load(foreign_onnx)
    data = Path(tiny_onnx).read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(ChsError, match="cannot load ONNX model"):
        LandmarkRuntime.load(tmp_path / "cut.onnx")
    with pytest.raises(ChsError, match="model not found"):
        LandmarkRuntime.load(tmp_path / "nope.onnx")
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(ChsError, match="unknown model file"):
        LandmarkRuntime.load(tmp_path / "model.pt")
    with pytest.raises(ChsError, match=f"model {tmp_path} is a folder without a model"):
        LandmarkRuntime.load(tmp_path)
    (tmp_path / "d.onnx").mkdir()
    with pytest.raises(ChsError, match="d.onnx is a folder, not a model file"):
        LandmarkRuntime.load(tmp_path / "d.onnx")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ChsError, match="training checkpoint"):
        LandmarkRuntime.load(tmp_path)
    with pytest.raises(ChsError, match=r"the model path is empty \(''\)"):
        LandmarkRuntime.load("")
    with pytest.raises(ChsError, match="cannot run a .onnx"):
        LandmarkRuntime.load(tiny_onnx, backend="tensorrt")
    with pytest.raises(ChsError, match="unknown backend"):
        LandmarkRuntime.load(tiny_onnx, backend="cuda")
    with pytest.raises(ChsError, match="not a runner"):
        LandmarkRuntime(object())


def test_truncated_engine(tiny_onnx, tmp_path, runner):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\x00" * 100)
    with pytest.raises(ChsError, match="sidecar"):  # no sidecar: an engine alone cannot say how to crop
        LandmarkRuntime.load(engine)
    sidecar = {"meta": runner.meta.to_dict(), "engine_bytes": 4000}
    (tmp_path / "model.engine.json").write_text(json.dumps(sidecar))
    with pytest.raises(ChsError, match="truncated"):
        LandmarkRuntime.load(engine)


# ------------------------------------------------------------------------------------------ detector hook
class _FakeDetector:
    name = "fake"
    box_map = BoxMap(dx=0.0, dy=0.1, sw=1.0, sh=0.5)

    def detect(self, image):
        return np.array([[20.0, 10.0, 100.0, 90.0], [5.0, 5.0, 25.0, 25.0]]), np.array([0.9, 0.2])


def _without_det(face: Face) -> Face:
    return Face(face.landmarks, face.box, face.score, face.scores)


def test_detector_boxes_are_mapped_before_cropping(runner):
    rt = LandmarkRuntime(runner, detector=_FakeDetector())
    img = _image()
    faces = rt.predict(img)
    assert [f.detection_score for f in faces] == [0.9, 0.2]
    mapped = [[20.0, 38.0, 100.0, 78.0], [5.0, 12.0, 25.0, 22.0]]  # centre y + 0.1 h, height x 0.5
    np.testing.assert_allclose([f.box for f in faces], mapped)
    assert _same([_without_det(f) for f in faces], rt.predict(img, mapped))


def test_no_detector(runner, monkeypatch):
    with pytest.raises(ChsError, match="no face detector: pass boxes"):
        LandmarkRuntime(runner, detector=None).predict(_image())
    monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib -> ImportError
    with pytest.raises(ChsError, match=r"^the dlib detector is not installed: pip install chs\[detect\], or use the "
                                       r"bundled yunet detector$"):
        LandmarkRuntime(runner, detector="dlib").predict(_image())
    assert LandmarkRuntime(runner).detector.name == "yunet"  # the default needs no extra
    assert LandmarkRuntime(runner).detector.provider == "CPUExecutionProvider"  # the landmark model's choice
    with pytest.raises(ChsError, match="unknown detector 'hog'"):
        LandmarkRuntime(runner, detector="hog")
    with pytest.raises(ChsError, match="is not a face detector"):
        LandmarkRuntime(runner, detector=object())
    with pytest.raises(ChsError, match="face detector model not found"):
        LandmarkRuntime(runner, detector="missing.onnx").predict(_image())


# ------------------------------------------------------------------------------------------ torch-free
def test_runtime_imports_and_predicts_without_torch(tiny_onnx, tmp_path):
    code = textwrap.dedent(f"""
        import sys
        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
                return None
        sys.meta_path.insert(0, NoTorch())
        import chs.runtime, chs.runtime.landmarks, chs.runtime.detector, chs.runtime.backends.ort
        import chs.runtime.draw, chs.runtime.detector_eval, chs.align_cmd
        import numpy as np
        from chs.runtime.landmarks import LandmarkRuntime
        rt = LandmarkRuntime.load({str(tiny_onnx)!r}, providers="cpu")
        faces = rt.predict({str(DEMO)!r}, [{DEMO_BOX!r}])
        assert faces[0].landmarks.shape == (68, 2) and np.isfinite(faces[0].landmarks).all()
        import chs.runtime.yunet, chs.runtime.tracking, chs.runtime.smoothing
        from chs.runtime import YuNetDetector, TrackerSettings
        assert len(rt.predict({str(DEMO)!r})) >= 1  # the bundled YuNet detector, no extras
        assert list(rt.track([{str(DEMO)!r}] * 2))[1][0].track_id == 0
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch got imported"
        print("ok", faces[0].landmarks[0].tolist())
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ok")


def test_detector_follows_the_landmark_models_provider():
    from types import SimpleNamespace

    from chs.runtime.landmarks import runner_providers

    names = {"ort-cpu": "cpu", "ort-cuda": "cuda", "ort-tensorrt": "tensorrt", "trt": "auto", "torch": "auto"}
    for name, expected in names.items():
        assert runner_providers(SimpleNamespace(name=name)) == expected


@pytest.mark.parametrize("max_batch, message", [
    ("3", "max_batch must be a whole number, got '3'"), (float("nan"), "max_batch must be a whole number, got nan"),
    (2.5, "max_batch must be a whole number, got 2.5"), (0, "max_batch must be >= 1, got 0"),
])
def test_max_batch_is_checked(tiny_onnx, max_batch, message):
    with pytest.raises(ChsError) as e:
        LandmarkRuntime.load(tiny_onnx, max_batch=max_batch)
    assert str(e.value) == message
    assert LandmarkRuntime.load(tiny_onnx, max_batch=np.int64(3), detector=None).max_batch == 3


def test_paths_given_where_they_do_not_fit(rt):
    with pytest.raises(ChsError) as e:
        rt.predict("a\0b.png", [[10, 10, 60, 60]])
    assert str(e.value) == "image path 'a\\x00b.png' contains a NUL byte"
    for one in (str(DEMO), DEMO):
        with pytest.raises(ChsError) as e:
            rt.predict_batch(one)
        msg = str(e.value)
        assert msg.startswith("predict_batch takes a list of images, got one path '") and "use predict()" in msg, msg


def test_sessions_leave_the_cpu_when_run_returns():
    """The landmark model's and the detector's sessions stop their pool threads when run() returns: by default ONNX
    Runtime's threads spin on (33 ms of CPU in the 100 ms after a call here), taking a core from the next stage."""
    import time

    from chs.runtime.yunet import YuNetDetector

    runner = OrtRunner(DEFAULT_MODEL, providers="cpu", threads=2, sessions=2)
    parallel = OrtRunner(DEFAULT_MODEL, providers="cpu", threads=2, executor="parallel")
    detector = YuNetDetector(threads=2)
    one = np.zeros((1, 3, runner.meta.input_size, runner.meta.input_size), np.float32)
    calls = {"landmarks": lambda: runner.infer(one), "split landmarks": lambda: runner.infer(np.repeat(one, 2, 0)),
             "parallel executor": lambda: parallel.infer(one),
             "detector": lambda: detector.detect(np.zeros((96, 96, 3), np.uint8))}
    for what, call in calls.items():
        used = []
        for _ in range(3):
            call()
            c0 = time.process_time()
            time.sleep(0.1)
            used.append(time.process_time() - c0)
        assert min(used) < 0.005, f"{what}: {min(used) * 1e3:.1f} ms of CPU in the 100 ms after run() returned"
