import math

import numpy as np
import pytest

from chs.runtime.errors import ChsError
from chs.runtime.metrics import (
    auc,
    ced,
    failure_rate,
    mean_offset,
    nme,
    normalizing_distance,
    subset_summary,
    summarize,
)
from chs.runtime.schemes import get_scheme


def face68(iod: float = 10.0) -> np.ndarray:
    """A 68-point 'face' with outer eye corners exactly iod apart; other points spread in a 20x20 box."""
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 20, (68, 2))
    pts[36] = (5.0, 8.0)
    pts[45] = (5.0 + iod, 8.0)
    return pts


def test_nme_exact_iod():
    gt = face68(10.0)
    pred = gt + np.array([0.6, 0.8])  # every point off by exactly 1 px
    np.testing.assert_allclose(nme(pred, gt, "68"), [0.1])
    np.testing.assert_allclose(nme(pred[None], gt[None], 68, kind="iod"), [0.1])


def test_nme_ignores_nan_gt_and_uses_other_normalisers():
    gt = face68(10.0)
    pred = gt.copy()
    pred[0] += (3.0, 4.0)  # 5 px error on one point
    gt_missing = gt.copy()
    gt_missing[0] = np.nan  # ... which is unannotated: ignored
    np.testing.assert_allclose(nme(pred, gt_missing, "68"), [0.0])
    np.testing.assert_allclose(nme(pred, gt, "68"), [5.0 / 68 / 10.0])
    # box: a 40 x 10 box -> sqrt(400) = 20; diag of the same box -> sqrt(1700)
    box = np.array([[0.0, 0.0, 40.0, 10.0]])
    np.testing.assert_allclose(nme(pred, gt, "68", "box", box), [5.0 / 68 / 20.0])
    np.testing.assert_allclose(nme(pred, gt, "68", "diag", box), [5.0 / 68 / math.sqrt(1700.0)])


def test_normalizing_distances():
    gt = face68(10.0)
    gt[36:42] = (0.0, 0.0)
    gt[42:48] = (6.0, 8.0)
    gt[36] = (0.0, 0.0)
    gt[45] = (6.0, 8.0)
    assert normalizing_distance(gt[None], "68", "iod")[0] == pytest.approx(10.0)
    assert normalizing_distance(gt[None], "68", "ipd")[0] == pytest.approx(10.0)
    # GT bounding box of a square 0..20 face
    sq = np.zeros((68, 2))
    sq[:, 0] = np.linspace(0, 20, 68)
    sq[:, 1] = np.linspace(0, 5, 68)
    sq[36] = (1.0, 1.0)
    assert normalizing_distance(sq[None], "68", "box")[0] == pytest.approx(10.0)
    assert normalizing_distance(sq[None], "68", "diag")[0] == pytest.approx(math.hypot(20, 5))
    w = normalizing_distance(np.zeros((2, 98, 2)) + np.arange(98)[None, :, None], "98", "ipd")
    np.testing.assert_allclose(w, [math.hypot(1, 1)] * 2)  # pupils 96, 97


def test_zero_iod_raises_with_sample_index():
    gt = np.stack([face68(10.0), face68(10.0), face68(0.0)])
    with pytest.raises(ChsError, match="sample 2 has a zero inter-ocular distance"):
        normalizing_distance(gt, "68")
    with pytest.raises(ChsError, match="sample 2 has a zero inter-ocular distance"):
        nme(gt, gt, "68")
    gt[0, 36] = np.nan
    with pytest.raises(ChsError, match="sample 0 .*non-finite inter-ocular"):
        normalizing_distance(gt, "68")


def test_nan_prediction_and_shape_mismatch_raise():
    gt = face68()
    pred = gt.copy()
    pred[3, 0] = np.nan
    with pytest.raises(ChsError, match="sample 0"):
        nme(pred, gt, "68")
    with pytest.raises(ChsError, match="shape"):
        nme(gt[:50], gt[:50], "68")


def test_failure_rate_and_auc_hand_computed():
    errors = [0.02, 0.05, 0.08, 0.12]
    assert failure_rate(errors, 0.10) == 0.25
    assert failure_rate(errors, 0.08) == 0.25  # 0.08 is not above 0.08
    assert failure_rate(errors, 0.05) == 0.5
    # area under the step CED on [0, 0.1]: sum over errors of (0.1 - e)+ / n, normalised by 0.1
    assert auc(errors, 0.10) == pytest.approx((0.08 + 0.05 + 0.02 + 0.0) / 4 / 0.10)
    assert auc(errors, 0.08) == pytest.approx((0.06 + 0.03 + 0.0 + 0.0) / 4 / 0.08)
    assert auc([0.0, 0.0], 0.1) == pytest.approx(1.0)
    assert auc([0.5], 0.1) == 0.0
    assert isinstance(auc(errors), float) and isinstance(failure_rate(errors), float)


def test_ced_matches_auc():
    errors = np.random.default_rng(3).uniform(0, 0.15, 200)
    x, y = ced(errors, 0.10, steps=2000)
    assert x[0] == 0.0 and x[-1] == pytest.approx(0.10) and len(x) == 2001
    assert y[-1] == pytest.approx(np.mean(errors <= 0.10))
    assert np.trapezoid(y, x) / 0.10 == pytest.approx(auc(errors, 0.10), abs=1e-3)


def test_empty_errors_raise():
    with pytest.raises(ChsError):
        failure_rate([])


def test_summarize_keys_and_values():
    gt = np.stack([face68(10.0)] * 4)
    offsets = np.array([0.2, 0.5, 0.9, 1.5])  # px error per point -> NME iod 0.02, 0.05, 0.09, 0.15
    pred = gt + offsets[:, None, None] * np.array([0.6, 0.8])
    out = summarize(pred, gt, "68")
    assert set(out) >= {"n", "nme_iod", "nme_ipd", "nme_box", "nme_diag", "fr_8", "fr_10", "auc_8", "auc_10"}
    assert out["n"] == 4
    assert out["nme_iod"] == pytest.approx((0.02 + 0.05 + 0.09 + 0.15) / 4)
    assert out["fr_10"] == 0.25 and out["fr_8"] == 0.5
    assert out["auc_10"] == pytest.approx((0.08 + 0.05 + 0.01) / 4 / 0.10)
    assert all(isinstance(v, float) for k, v in out.items() if k != "n")
    # every sample shifted by +(0.6, 0.8) * offset px, IOD 10: mean offset (0.6, 0.8) * mean(offsets) / 10
    assert out["offset_x"] == pytest.approx(0.6 * offsets.mean() / 10)
    assert out["offset_y"] == pytest.approx(0.8 * offsets.mean() / 10)
    extra = summarize(pred, gt, "68", auc_threshold=0.07)
    assert extra["auc_7"] == pytest.approx((0.05 + 0.02) / 4 / 0.07)


def test_mean_offset_separates_shift_from_scatter():
    gt = np.stack([face68(10.0), face68(20.0)])
    rng = np.random.default_rng(1)
    scatter = rng.normal(size=(1, 68, 2))
    scatter -= scatter.mean(axis=1, keepdims=True)  # zero-mean per axis: contributes no offset
    pred = gt + scatter + np.array([1.0, -2.0])  # each face shifted by (+1, -2) px
    # per sample normalised by its own IOD: x (1/10 + 1/20) / 2, y (-2/10 - 2/20) / 2
    np.testing.assert_allclose(mean_offset(pred, gt, "68"), [0.075, -0.15], atol=1e-12)
    gt_missing = gt.copy()
    gt_missing[0, 0] = np.nan  # unannotated points are left out, not NaN-poisoning the mean
    assert np.isfinite(mean_offset(pred, gt_missing, "68")).all()
    with pytest.raises(ChsError, match="NaN"):
        mean_offset(np.full_like(pred, np.nan), gt, "68")
    with pytest.raises(ChsError, match="zero"):
        mean_offset(pred, np.zeros_like(gt), "68")


def test_summarize_aflw_uses_box_and_reports_7():
    s = get_scheme("19")
    gt = np.random.default_rng(4).uniform(0, 100, (2, 19, 2))
    boxes = np.array([[0, 0, 100, 100], [0, 0, 50, 200]], dtype=float)  # both sqrt(w*h) = 100
    pred = gt + np.array([3.0, 4.0])  # 5 px -> 0.05
    out = summarize(pred, gt, s, boxes=boxes)
    assert out["nme_box"] == pytest.approx(0.05) and out["nme"] == pytest.approx(0.05)
    assert out["fr_7"] == 0.0 and out["auc_7"] == pytest.approx(0.02 / 0.07)


def test_subset_summary():
    gt = np.stack([face68(10.0)] * 3)
    pred = gt + np.array([[[0.6, 0.8]], [[0.0, 0.0]], [[1.2, 1.6]]])
    attrs = [{"pose": True, "blur": True}, {"pose": False}, {"make-up": True, "blur": True}]
    out = subset_summary(pred, gt, "68", attrs)
    assert set(out) == {"pose", "makeup", "blur"}
    assert out["pose"]["n"] == 1 and out["pose"]["nme_iod"] == pytest.approx(0.1)
    assert out["blur"]["n"] == 2 and out["blur"]["nme_iod"] == pytest.approx(0.15)
    assert out["makeup"]["nme_iod"] == pytest.approx(0.2)
