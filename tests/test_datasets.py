import json
import shutil

import numpy as np
import pytest

from chs.runtime.datasets import (
    FaceSample,
    load_aflw19,
    load_coco_keypoints,
    load_cofw_mat,
    load_dataset,
    load_pts_folder,
    load_wflw,
    read_pts,
    write_pts,
)
from chs.runtime.errors import ChsError
from chs.runtime.imageio import read_image


def _inside_image(lm: np.ndarray, image: np.ndarray) -> bool:
    h, w = image.shape[:2]
    pts = lm[np.isfinite(lm).all(axis=1)]
    return bool((pts >= 0).all() and (pts[:, 0] <= w - 1).all() and (pts[:, 1] <= h - 1).all())


def _inside_box(lm: np.ndarray, box: np.ndarray, margin: float) -> bool:
    pts = lm[np.isfinite(lm).all(axis=1)]
    size = max(box[2] - box[0], box[3] - box[1])
    lo, hi = box[:2] - margin * size, box[2:] + margin * size
    return bool((pts >= lo).all() and (pts <= hi).all())


# ---- .pts ------------------------------------------------------------------------------------------


def test_read_write_pts_roundtrip(tmp_path):
    lm = np.array([[1.5, 2.25], [100.0, 0.0], [3.123456, 4.0]])
    write_pts(tmp_path / "a.pts", lm)
    text = (tmp_path / "a.pts").read_text()
    assert text.startswith("version: 1\nn_points: 3\n{\n") and text.rstrip().endswith("}")
    np.testing.assert_allclose(read_pts(tmp_path / "a.pts"), lm, atol=1e-6)


def test_read_pts_errors(tmp_path):
    with pytest.raises(ChsError, match="not found"):
        read_pts(tmp_path / "missing.pts")
    (tmp_path / "bad.pts").write_text("version: 1\nn_points: 3\n{\n1 2\n3 4\n}\n")
    with pytest.raises(ChsError, match="header says 3 points but the file has 2"):
        read_pts(tmp_path / "bad.pts")
    (tmp_path / "bad2.pts").write_text("version: 1\nn_points: 1\n{\n1 x\n}\n")
    with pytest.raises(ChsError, match="point 0"):
        read_pts(tmp_path / "bad2.pts")


def test_pts_fixture_folder(fixtures_dir):
    samples = load_pts_folder(fixtures_dir / "pts")
    names = [s.image_path.name for s in samples]
    assert names == ["breakingbad.jpg", "einstein.jpg", "image_0010.png", "takeo.ppm"]
    by_name = dict(zip(names, samples, strict=True))
    for s in samples:
        assert s.scheme == "68" and s.landmarks.shape == (68, 2) and s.box is None
        assert _inside_image(s.landmarks, s.load_image())
    np.testing.assert_allclose(by_name["takeo.ppm"].landmarks[0], [32.310345, 99.612347])
    np.testing.assert_allclose(by_name["takeo.ppm"].landmarks[67], [79.291435, 145.632369])
    np.testing.assert_allclose(by_name["image_0010.png"].landmarks[36], [629.308705, 253.419965])
    assert by_name["takeo.ppm"].load_image().shape == (225, 150, 3)


def test_pts_folder_with_list(tmp_path, fixtures_dir):
    (tmp_path / "images").mkdir()
    for stem, ext in (("einstein", ".jpg"), ("takeo", ".ppm")):
        shutil.copy(fixtures_dir / "pts" / f"{stem}{ext}", tmp_path / "images")
        shutil.copy(fixtures_dir / "pts" / f"{stem}.pts", tmp_path / "images")
    (tmp_path / "list.txt").write_text("takeo\neinstein\n")
    samples = load_dataset(tmp_path)
    assert [s.image_path.name for s in samples] == ["takeo.ppm", "einstein.jpg"]
    (tmp_path / "list.txt").write_text("takeo\nghost\n")
    with pytest.raises(ChsError, match=r"missing landmarks file images/ghost.pts"):
        load_pts_folder(tmp_path)


def test_ytf68_val(shared_data):
    root = shared_data / "ytf68" / "val"
    if not (root / "list.txt").is_file():
        pytest.skip(f"ytf68 data not found at {root}")
    samples = load_pts_folder(root)
    assert len(samples) == 429
    assert all(s.landmarks.shape == (68, 2) and s.scheme == "68" for s in samples)
    assert all(np.isfinite(s.landmarks).all() for s in samples)
    assert _inside_image(samples[0].landmarks, samples[0].load_image())


# ---- COCO-style JSON (real mmpose fixtures) --------------------------------------------------------


@pytest.mark.parametrize(
    ("sub", "n_points", "n_faces", "first_image", "first_point"),
    [
        ("300w", 68, 2, "indoor_029.png", (268.0, 398.882)),
        ("wflw", 98, 4, "36_Football_americanfootball_ball_36_415.jpg", (440.696106, 132.732559)),
        ("cofw", 29, 2, "001766.jpg", (46.562534549474826, 120.07575548185008)),
        ("aflw", 19, 2, "image22568.jpg", (337.28341384863, 205.78904991948002)),
    ],
)
def test_coco_fixtures(fixtures_dir, sub, n_points, n_faces, first_image, first_point):
    json_path = next((fixtures_dir / "coco-style" / sub).glob("*.json"))
    samples = load_dataset(json_path)
    assert len(samples) == n_faces
    assert samples[0].image_path.name == first_image
    np.testing.assert_allclose(samples[0].landmarks[0], first_point)
    images = {}
    for s in samples:
        assert s.scheme == str(n_points) and s.landmarks.shape == (n_points, 2)
        img = images.setdefault(s.image_path, s.load_image())
        assert _inside_image(s.landmarks, img)
        if sub == "wflw" and s.attributes["id"] == 40:
            # this mmpose annotation's bbox is cut short (48 px high, landmarks span 111 px; the
            # landmarks are right, checked on an overlay): only its horizontal extent is usable
            assert s.box[1] <= np.nanmin(s.landmarks[:, 1])
            assert s.box[3] - s.box[1] == pytest.approx(48.0096052)
            continue
        assert _inside_box(s.landmarks, s.box, margin=0.05)


def test_coco_bbox_and_invisible_points(tmp_path):
    kps = []
    for i in range(5):
        kps += [10.0 + i, 20.0 + i, 0 if i == 2 else 2]
    doc = {
        "images": [{"id": 7, "file_name": "x.jpg", "width": 64, "height": 64}],
        "annotations": [{"id": 1, "image_id": 7, "keypoints": kps, "bbox": [5, 6, 30, 40]}],
    }
    (tmp_path / "a.json").write_text(json.dumps(doc))
    (s,) = load_coco_keypoints(tmp_path / "a.json", image_root=tmp_path / "imgs")
    assert s.scheme == "5" and s.image_path == tmp_path / "imgs" / "x.jpg"
    np.testing.assert_array_equal(s.box, [5, 6, 35, 46])
    assert np.isnan(s.landmarks[2]).all() and np.isfinite(np.delete(s.landmarks, 2, 0)).all()
    np.testing.assert_array_equal(s.attributes["visibility"], [2, 2, 0, 2, 2])


# ---- WFLW txt ---------------------------------------------------------------------------------------


def test_wflw_txt(tmp_path):
    lm = np.stack([np.linspace(100, 197, 98), np.linspace(50, 147, 98)], axis=1)
    flags = [1, 0, 0, 1, 0, 1]
    line = " ".join(f"{v:.6f}" for v in lm.reshape(-1))
    line += " 95 45 205 155 " + " ".join(map(str, flags)) + " 51--Dresses/51_Dresses_wearingdress_51_377.jpg"
    ann = tmp_path / "annotations" / "list_98pt_rect_attr_test.txt"
    ann.parent.mkdir()
    ann.write_text(line + "\n\n")
    (tmp_path / "images").mkdir()
    samples = load_wflw(ann, tmp_path / "images")
    assert len(samples) == 1
    s = samples[0]
    assert s.scheme == "98" and s.landmarks.shape == (98, 2)
    np.testing.assert_allclose(s.landmarks[0], (100, 50))
    np.testing.assert_allclose(s.landmarks[97], (197, 147))
    np.testing.assert_array_equal(s.box, [95, 45, 205, 155])
    assert s.attributes == {"pose": True, "expression": False, "illumination": False, "makeup": True,
                            "occlusion": False, "blur": True}
    assert s.image_path == tmp_path / "images" / "51--Dresses" / "51_Dresses_wearingdress_51_377.jpg"
    assert _inside_box(s.landmarks, s.box, 0.0)
    # dispatch finds the parent's sibling 'images' folder
    assert load_dataset(ann)[0].image_path == s.image_path
    ann.write_text("1 2 3 img.jpg\n")
    with pytest.raises(ChsError, match=r":1: expected 207 fields"):
        load_wflw(ann, tmp_path)


# ---- COFW .mat ---------------------------------------------------------------------------------------


def test_cofw_mat(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    n = 2
    xs = rng.uniform(20, 60, (n, 29))
    ys = rng.uniform(30, 70, (n, 29))
    occ = np.zeros((n, 29))
    occ[1, [3, 20]] = 1
    phis = np.concatenate([xs, ys, occ], axis=1)  # MATLAB 1-based pixel coordinates
    images = np.empty((n, 1), dtype=object)
    images[0, 0] = rng.integers(0, 255, (90, 80), dtype=np.uint8)  # gray, as most COFW images
    images[1, 0] = rng.integers(0, 255, (90, 80, 3), dtype=np.uint8)
    boxes = np.array([[11, 21, 60, 55], [15, 25, 50, 50]], dtype=float)  # x, y, w, h (1-based)
    path = tmp_path / "COFW_test.mat"
    savemat(path, {"IsT": images, "phisT": phis, "bboxesT": boxes})
    samples = load_dataset(path)
    assert len(samples) == 2
    for i, s in enumerate(samples):
        assert s.scheme == "29" and s.image_path is None and s.landmarks.shape == (29, 2)
        np.testing.assert_allclose(s.landmarks[:, 0], xs[i] - 1)
        np.testing.assert_allclose(s.landmarks[:, 1], ys[i] - 1)
        assert s.load_image().shape == (90, 80, 3) and s.load_image().dtype == np.uint8
        assert _inside_image(s.landmarks, s.load_image())
    np.testing.assert_allclose(samples[0].box, [10, 20, 70, 75])
    np.testing.assert_array_equal(np.flatnonzero(samples[1].attributes["occluded"]), [3, 20])
    assert not samples[0].attributes["occluded"].any()
    gray = samples[0].load_image()
    np.testing.assert_array_equal(gray[..., 0], images[0, 0])
    np.testing.assert_array_equal(gray[..., 2], images[0, 0])
    # the train split keys are read too
    savemat(tmp_path / "COFW_train.mat", {"IsTr": images[:1], "phisTr": phis[:1]})
    (s,) = load_cofw_mat(tmp_path / "COFW_train.mat")
    assert s.box is None


def test_cofw_not_a_cofw_file(tmp_path):
    from scipy.io import savemat

    savemat(tmp_path / "x.mat", {"foo": np.zeros(3)})
    with pytest.raises(ChsError, match="not a COFW file"):
        load_cofw_mat(tmp_path / "x.mat")


# ---- AFLW-19 csv -------------------------------------------------------------------------------------


def _aflw_row(name, scale, box_size, cx, cy, lm):
    coords = (f"{v:.4f}" for v in lm.reshape(-1))
    return ",".join([name, str(scale), str(box_size), str(cx), str(cy), *coords])


def test_aflw19_csv(tmp_path):
    lm = np.stack([np.linspace(60, 150, 19), np.linspace(70, 160, 19)], axis=1)
    header = ",".join(["image_name", "scale", "box_size", "center_w", "center_h"]
                      + [f"original_{i}_{c}" for i in range(19) for c in "xy"])
    rows = [_aflw_row("0/image00002.jpg", 1.2, 240.0, 105.0, 115.0, lm)]
    (tmp_path / "face_landmarks_aflw_test.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    (s,) = load_dataset(tmp_path / "face_landmarks_aflw_test.csv")
    assert s.scheme == "19" and s.landmarks.shape == (19, 2)
    np.testing.assert_allclose(s.landmarks[0], (60, 70))
    np.testing.assert_allclose(s.landmarks[18], (150, 160))
    np.testing.assert_allclose(s.box, [-15, -5, 225, 235])
    assert s.attributes["box_size"] == 240.0 and s.image_path == tmp_path / "0" / "image00002.jpg"
    assert _inside_box(s.landmarks, s.box, 0.0)
    # headerless, HRNet column order
    (tmp_path / "nohead.csv").write_text("\n".join(rows) + "\n")
    (s2,) = load_aflw19(tmp_path / "nohead.csv", tmp_path)
    np.testing.assert_allclose(s2.landmarks, s.landmarks)
    np.testing.assert_allclose(s2.box, s.box)
    # a file without box_size: the side is scale * 200
    header3 = header.replace("box_size,", "")
    row3 = ",".join(["a.jpg", "1.2", "105", "115", *(f"{v:.4f}" for v in lm.reshape(-1))])
    (tmp_path / "nobox.csv").write_text(header3 + "\n" + row3 + "\n")
    (s3,) = load_aflw19(tmp_path / "nobox.csv", tmp_path)
    np.testing.assert_allclose(s3.box, [-15, -5, 225, 235])


# ---- dispatch / misc ----------------------------------------------------------------------------------


def test_load_dataset_errors(tmp_path):
    with pytest.raises(ChsError, match="not found"):
        load_dataset(tmp_path / "nothing.json")
    (tmp_path / "x.xyz").write_text("")
    with pytest.raises(ChsError, match="unknown dataset format"):
        load_dataset(tmp_path / "x.xyz")
    with pytest.raises(ChsError, match="no images with .pts"):
        load_dataset(tmp_path)


def test_sample_load_image(fixtures_dir):
    s = FaceSample(image_path=fixtures_dir / "pts" / "takeo.ppm", landmarks=np.zeros((68, 2)), scheme="68")
    np.testing.assert_array_equal(s.load_image(), read_image(fixtures_dir / "pts" / "takeo.ppm"))
    with pytest.raises(ChsError):
        FaceSample(image_path=None, landmarks=np.zeros((5, 2)), scheme="5").load_image()
