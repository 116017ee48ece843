"""5-point faces: the mtfl5 reader, its 68-point-equivalent box, the validation split and the 5-point report."""

import csv
import subprocess
import sys

import numpy as np
import pytest

from chs.runtime.datasets import load_dataset
from chs.runtime.detector_eval import box_iou
from chs.runtime.errors import ChsError
from chs.runtime.geometry import box_from_landmarks
from chs.runtime.metrics import group_summary, nme, shift_corrected_nme, summarize
from chs.runtime.mtfl import (
    BOX_FROM_NOSE,
    DUPLICATE_GROUPS,
    FIVE_TEMPLATE,
    MtflSplit,
    box_from_five,
    fit_five_point_box,
    load_mtfl5,
    make_val_split,
)
from chs.runtime.schemes import get_scheme


@pytest.fixture()
def mtfl(fixtures_dir):
    return fixtures_dir / "mtfl5"


def test_reader_reads_points_attributes_and_box(mtfl):
    faces = load_dataset(mtfl)
    assert len(faces) == 8
    with open(mtfl / "landmarks.csv", newline="") as f:
        first = next(csv.DictReader(f))
    s = faces[0]
    assert s.scheme == "5" and s.landmarks.shape == (5, 2)
    np.testing.assert_allclose(s.landmarks[0], [float(first["lex"]), float(first["ley"])])
    np.testing.assert_allclose(s.landmarks[4], [float(first["rmx"]), float(first["rmy"])])
    assert s.image_path.is_file() and s.load_image().shape == (160, 160, 3)
    assert [f.attributes["pose"] for f in faces[:5]] == [1, 2, 3, 4, 5]
    assert [f.attributes["pose_subset"] for f in faces[:5]] == ["profile", "half", "frontal", "half", "profile"]
    assert faces[0].attributes["person"] and faces[5].attributes["person"] is None  # lfw names, net anonymous
    # the crop box is the reader's 68-point-equivalent box, much larger than the 5 points' own box
    assert s.landmark_box
    np.testing.assert_allclose(s.crop_box(), box_from_five(s.landmarks))
    five_box = box_from_landmarks(s.landmarks)
    assert (s.box[2] - s.box[0]) > 1.5 * (five_box[2] - five_box[0])


def test_split_selects_the_committed_validation_faces(mtfl):
    val = MtflSplit().val_stems()
    all_faces = load_dataset(mtfl, "all")
    v = load_dataset(mtfl, "val")
    t = load_dataset(mtfl, "train")
    assert {s.attributes["stem"] for s in v} == {s.attributes["stem"] for s in all_faces} & val
    assert len(v) >= 1 and len(t) >= 1 and len(v) + len(t) == len(all_faces)
    with pytest.raises(ChsError, match="unknown split"):
        load_mtfl5(mtfl, "test")


def test_split_on_a_set_without_splits_is_an_error(fixtures_dir):
    with pytest.raises(ChsError, match="defines no 'val' split"):
        load_dataset(fixtures_dir / "pts", "val")


def test_box_from_five_reproduces_the_68_point_box(fixtures_dir):
    """On the real 68-point fixture faces, the box predicted from their 5 reduced points overlaps the true
    68-point box (what the model was trained to crop from)."""
    faces = load_dataset(fixtures_dir / "pts")
    for s in faces:
        five = get_scheme("68").to_five(s.landmarks)
        iou = box_iou(box_from_five(five), box_from_landmarks(s.landmarks))[0, 0]
        assert iou > 0.7, (s.image_path.name, iou)


def test_box_from_five_follows_the_face_and_rejects_bad_points():
    pts = FIVE_TEMPLATE * 40 + [80, 80]
    b = box_from_five(pts)
    moved = box_from_five(pts * 2 + [10, -5])  # a similarity of the face moves its box with it
    np.testing.assert_allclose(moved, b * 2 + [10, -5, 10, -5], atol=1e-9)
    with pytest.raises(ChsError):
        box_from_five(np.full((5, 2), np.nan))
    with pytest.raises(ChsError):
        box_from_five(np.zeros((4, 2)))


def test_box_constants_are_the_ytf68_train_fit(shared_data):
    faces = load_dataset(shared_data / "ytf68" / "train")
    template, coef = fit_five_point_box(np.stack([s.landmarks for s in faces]))
    np.testing.assert_allclose(template, FIVE_TEMPLATE, atol=1e-4)
    np.testing.assert_allclose(coef, BOX_FROM_NOSE, atol=1e-4)


def test_committed_split_keeps_groups_together_and_is_reproducible(shared_data):
    root = shared_data / "mtfl5-train"
    if not root.is_dir():
        pytest.skip(f"mtfl5-train not found in {shared_data}")
    faces = load_mtfl5(root)
    val = MtflSplit().val_stems()
    assert 900 <= len(val) <= 1100
    assert val <= {s.attributes["stem"] for s in faces}
    for group in DUPLICATE_GROUPS:
        assert len({g in val for g in group}) == 1, group
    sides: dict[str, set[bool]] = {}
    for s in faces:
        if s.attributes["person"]:
            sides.setdefault(s.attributes["person"], set()).add(s.attributes["stem"] in val)
    assert all(len(v) == 1 for v in sides.values())
    assert set(make_val_split(faces)) == val


def test_make_val_split_keeps_duplicates_on_one_side(mtfl):
    faces = load_dataset(mtfl)
    for seed in range(20):
        val = set(make_val_split(faces, 0.5, seed))
        assert ("net_5373" in val) == ("net_5455" in val)


def test_shift_corrected_nme_removes_a_constant_shift():
    rng = np.random.default_rng(0)
    gt = rng.uniform(20, 140, (6, 5, 2))
    iod = np.linalg.norm(gt[:, 0] - gt[:, 1], axis=-1)
    shift = np.array([0.03, -0.04])  # in IOD units
    pred = gt + shift * iod[:, None, None]
    np.testing.assert_allclose(nme(pred, gt, "5"), 0.05)
    np.testing.assert_allclose(shift_corrected_nme(pred, gt, "5"), 0.0, atol=1e-12)
    res = summarize(pred, gt, "5", shift="own")
    assert res["nme"] == pytest.approx(0.05) and res["nme_shifted"] == pytest.approx(0.0, abs=1e-12)
    assert (res["shift_x"], res["shift_y"]) == pytest.approx((0.03, -0.04))
    # a given (set-wide) shift is removed as given, not re-estimated on the subset
    assert summarize(pred, gt, "5", shift=(0.0, 0.0))["nme_shifted"] == pytest.approx(0.05)
    groups = group_summary(pred, gt, "5", ["a", "b", "a", None, "b", "a"], order=("b",), shift="own")
    assert list(groups) == ["b", "a"] and groups["a"]["n"] == 3 and groups["b"]["n"] == 2


def test_evaluate_reduces_a_68_point_model_to_the_five_labelled_points(mtfl, tmp_path):
    torch = pytest.importorskip("torch")
    from chs.model.chs import build_model
    from chs.model.config import get_preset
    from chs.model.runner import TorchRunner
    from chs.runtime.evaluate import evaluate_runner, load_images, predict_samples, sample_box

    torch.manual_seed(0)
    runner = TorchRunner(build_model(get_preset("tiny")))
    faces = load_dataset(mtfl)
    res = evaluate_runner(runner, faces)
    kept, images, _ = load_images(faces)
    pred = predict_samples(runner, images, [sample_box(s, runner.meta) for s in kept])["landmarks"]
    five = get_scheme("68").to_five(pred)
    gt = np.stack([s.landmarks for s in kept])
    assert res["scheme"] == "5" and res["n"] == 8
    assert res["nme"] == pytest.approx(nme(five, gt, "5").mean())
    assert res["nme_shifted"] == pytest.approx(shift_corrected_nme(five, gt, "5").mean())
    assert list(res["subsets"]) == ["profile", "half", "frontal"]
    counts = [sum(s.attributes["pose_subset"] == k for s in kept) for k in ("profile", "half", "frontal")]
    assert [res["subsets"][k]["n"] for k in ("profile", "half", "frontal")] == counts == [2, 4, 2]
    assert res["subsets"]["half"]["shift_x"] == pytest.approx(res["shift_x"])  # the set-wide shift
    assert np.array(res["offset_per_point"]).shape == (5, 2)


def test_evaluate_refuses_a_partial_face_without_a_landmark_box(mtfl):
    torch = pytest.importorskip("torch")
    from chs.model.chs import build_model
    from chs.model.config import get_preset
    from chs.model.runner import TorchRunner
    from chs.runtime.evaluate import evaluate_runner

    torch.manual_seed(0)
    faces = load_dataset(mtfl)[:2]
    for f in faces:
        f.landmark_box = False
    with pytest.raises(ChsError, match="no 68-point landmark box"):
        evaluate_runner(TorchRunner(build_model(get_preset("tiny"))), faces)


def test_chs_eval_prints_the_five_point_report(mtfl):
    proc = subprocess.run([sys.executable, "-m", "chs", "eval", "default", "--data", str(mtfl)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "n=8" in out and "after removing the set-wide shift NME" in out
    assert [ln.split()[0] for ln in out.splitlines() if ln.startswith("  ")] == ["profile", "half", "frontal"]
    bad = subprocess.run([sys.executable, "-m", "chs", "eval", "default", "--data", str(mtfl), "--split", "x"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error:") and len(bad.stderr.splitlines()) == 1


def test_dlib_peer_row_reduces_to_five_points(mtfl):
    """chs-bench's dlib peer on 5-point faces: dlib's 68 points reduced like the model's, shift reported."""
    from chs.benchmarks.accuracy import peer_accuracy_row
    from chs.benchmarks.peers import dlib_peer

    if dlib_peer()[0] is None:
        pytest.skip(dlib_peer()[1])
    row = peer_accuracy_row(load_dataset(mtfl), "mtfl5")
    assert row["status"] == "ok", row["reason"]
    assert row["n_images"] == 8 and row["n"] + row["misses"] == 8
    assert 0 < row["nme_shifted"] < 1 and 0 < row["nme"] < 1 and row["shift_x"] is not None
