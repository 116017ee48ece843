"""Face-alignment metrics (NME, failure rate, CED / AUC) in plain numpy.

One implementation for training-time validation, the evaluation CLI and benchmarks, so that numbers
reported anywhere in the project are computed the same way. Errors are fractions (0.05 = 5 %).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence

import numpy as np

from .errors import ChsError
from .schemes import WFLW_ATTRIBUTES, LandmarkScheme, get_scheme

_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2.0 only has trapz

_KIND_WORDS = {"iod": "inter-ocular distance", "ipd": "inter-pupil distance", "box": "box size", "diag": "box diagonal"}



def _as_batch(points, scheme: LandmarkScheme, what: str) -> np.ndarray:
    """(n, 2) or (N, n, 2) -> (N, n, 2) float64, checking the point count against the scheme."""
    a = np.asarray(points, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[1:] != (scheme.num_points, 2):
        raise ChsError(f"{what} must have shape (N, {scheme.num_points}, 2) for scheme {scheme.name}, "
                       f"got {tuple(a.shape)}")
    return a


def _boxes_wh(gt: np.ndarray, boxes) -> tuple[np.ndarray, np.ndarray]:
    """Widths and heights of the given [x0, y0, x1, y1] boxes, or of the GT landmarks' bounding boxes."""
    if boxes is None:
        with np.errstate(all="ignore"), _quiet_nan_warnings():
            lo = np.nanmin(gt, axis=1)
            hi = np.nanmax(gt, axis=1)
        return hi[:, 0] - lo[:, 0], hi[:, 1] - lo[:, 1]
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(b) != len(gt):
        raise ChsError(f"got {len(b)} boxes for {len(gt)} samples")
    return b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]


@contextlib.contextmanager
def _quiet_nan_warnings() -> Iterator[None]:
    """nanmin / nanmean warn on all-NaN rows; we report those rows ourselves with a sample index."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def normalizing_distance(gt, scheme: str | int | LandmarkScheme, kind: str = "iod", boxes=None) -> np.ndarray:
    """Per-sample normaliser [N]: "iod" (outer eye corners), "ipd" (eye centres), "box" (sqrt(w*h) of the
    boxes, or of the GT landmarks' bounding box when boxes is None) or "diag" (that box's diagonal)."""
    sch = get_scheme(scheme)
    g = _as_batch(gt, sch, "ground truth")
    if kind == "iod":
        a, b = sch.iod
        d = np.linalg.norm(g[:, a] - g[:, b], axis=-1)
    elif kind == "ipd":
        with _quiet_nan_warnings():
            left = np.nanmean(g[:, list(sch.eyes[0])], axis=1)
            right = np.nanmean(g[:, list(sch.eyes[1])], axis=1)
        d = np.linalg.norm(left - right, axis=-1)
    elif kind in ("box", "diag"):
        w, h = _boxes_wh(g, boxes)
        with np.errstate(invalid="ignore"):
            d = np.sqrt(w * h) if kind == "box" else np.hypot(w, h)
        d = np.where((w < 0) | (h < 0), np.nan, d)
    else:
        raise ChsError(f"unknown normalisation '{kind}' (known: iod, ipd, box, diag)")
    words = _KIND_WORDS[kind]
    bad = np.flatnonzero(~np.isfinite(d))
    if len(bad):
        raise ChsError(f"sample {bad[0]} has a missing or non-finite {words} (NaN ground truth or box?)")
    zero = np.flatnonzero(d <= 0)
    if len(zero):
        raise ChsError(f"sample {zero[0]} has a zero {words}")
    return d


def _signed_errors(pred, gt, scheme: str | int | LandmarkScheme, kind: str, boxes
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checked inputs of the error metrics: (pred - gt [N, n, 2], normaliser [N], annotated mask [N, n])."""
    sch = get_scheme(scheme)
    p = _as_batch(pred, sch, "predictions")
    g = _as_batch(gt, sch, "ground truth")
    if p.shape != g.shape:
        raise ChsError(f"{len(p)} predictions but {len(g)} ground-truth samples")
    bad_pred = np.flatnonzero(~np.isfinite(p).all(axis=(1, 2)))
    if len(bad_pred):
        raise ChsError(f"prediction for sample {bad_pred[0]} contains NaN or infinity")
    norm = normalizing_distance(g, sch, kind, boxes)
    valid = np.isfinite(g).all(axis=-1)  # [N, n]
    return p - g, norm, valid


def nme(pred, gt, scheme: str | int | LandmarkScheme, kind: str = "iod", boxes=None) -> np.ndarray:
    """Per-sample normalised mean error [N]: mean over points of ||pred - gt|| / normaliser.

    Points whose ground truth is NaN (not annotated) are left out of the mean; a NaN prediction is a bug
    upstream and raises rather than silently improving the score.
    """
    d, norm, valid = _signed_errors(pred, gt, scheme, kind, boxes)
    empty = np.flatnonzero(~valid.any(axis=1))
    if len(empty):
        raise ChsError(f"sample {empty[0]} has no annotated ground-truth points")
    err = np.linalg.norm(np.where(valid[..., None], d, 0.0), axis=-1)
    return err.sum(axis=1) / valid.sum(axis=1) / norm


def mean_offset(pred, gt, scheme: str | int | LandmarkScheme, kind: str = "iod", boxes=None) -> np.ndarray:
    """Mean signed error (x, y) over samples and annotated points, each sample's divided by its normaliser.

    NME cannot tell scatter from a systematic shift; this can. A shift that persists on the training set means the model
    cannot represent the labels' convention (e.g. labels that are not mirror-symmetric, trained with flip augmentation).
    """
    d, norm, valid = _signed_errors(pred, gt, scheme, kind, boxes)
    return (d / norm[:, None, None])[valid].mean(axis=0)


def shift_corrected_nme(pred, gt, scheme: str | int | LandmarkScheme, kind: str = "iod", boxes=None,
                        shift=None) -> np.ndarray:
    """Per-sample NME after removing a set-wide mean shift (default: this set's :func:`mean_offset`).

    Two label sets whose pixel conventions differ (0- vs 1-based, pupil vs eye-contour centre) differ by a
    near-constant shift per normaliser; removing it compares models trained on either fairly. The shift is
    in normaliser units, so each sample moves by shift x its own normaliser.
    """
    d, norm, valid = _signed_errors(pred, gt, scheme, kind, boxes)
    s = mean_offset(pred, gt, scheme, kind, boxes) if shift is None else np.asarray(shift, dtype=np.float64)
    d = d - s.reshape(1, 1, 2) * norm[:, None, None]
    err = np.linalg.norm(np.where(valid[..., None], d, 0.0), axis=-1)
    return err.sum(axis=1) / np.maximum(valid.sum(axis=1), 1) / norm


def _errors(errors) -> np.ndarray:
    e = np.asarray(errors, dtype=np.float64).reshape(-1)
    if e.size == 0:
        raise ChsError("no errors to summarise (empty evaluation set)")
    if not np.isfinite(e).all():
        raise ChsError("errors contain NaN or infinity")
    return e


def failure_rate(errors, threshold: float = 0.10) -> float:
    """Fraction of samples whose error is strictly above the threshold."""
    e = _errors(errors)
    return float(np.mean(e > threshold))


def ced(errors, threshold: float = 0.10, steps: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative error distribution on steps+1 evenly spaced thresholds 0..threshold: (x, fraction <= x)."""
    e = np.sort(_errors(errors))
    x = np.linspace(0.0, threshold, steps + 1)
    y = np.searchsorted(e, x, side="right") / e.size
    return x, y


def auc(errors, threshold: float = 0.10) -> float:
    """Area under the CED curve from 0 to threshold, divided by threshold (1 = every error is 0).

    The CED is a step function, so it is integrated exactly (trapezoids over its corners) instead of on a
    grid; a fine-grid estimate as used in the literature agrees to within the grid spacing.
    """
    if threshold <= 0:
        raise ChsError(f"AUC threshold must be positive, got {threshold}")
    e = np.sort(_errors(errors))
    inside = e[e < threshold]
    n = e.size
    # corners of the step curve: (e_k, k/n) then (e_k, (k+1)/n), starting at (0, #zeros... handled by e_k=0)
    xs = np.concatenate([[0.0], np.repeat(inside, 2), [threshold]])
    ys = np.concatenate([[0.0], np.repeat(np.arange(len(inside) + 1) / n, 2)[1:-1], [len(inside) / n]])
    return float(_trapezoid(ys, xs) / threshold)


def _pct_key(threshold: float) -> str:
    return f"{threshold * 100:g}"


def primary_normaliser(scheme: str) -> str:
    """The scheme's customary NME normaliser: the face box for AFLW-19, the inter-ocular distance otherwise."""
    return "box" if scheme == "19" else "iod"


def summarize(pred, gt, scheme: str | int | LandmarkScheme, boxes=None,
              auc_threshold: float | Sequence[float] | None = None, shift=None) -> dict:
    """The usual report: mean NME under each normaliser, FR and AUC at 8 % and 10 % (plus 7 % for AFLW-19),
    and the mean signed error (``offset_x``, ``offset_y``, in the customary normaliser).

    With ``shift`` ("own", or an (x, y) offset in normaliser units, e.g. a whole set's while reporting a
    subset) also ``nme_shifted``, ``fr_10_shifted`` and ``auc_10_shifted``: the same after removing that
    set-wide shift (:func:`shift_corrected_nme`), plus the shift removed (``shift_x``, ``shift_y``).

    FR / AUC (and "nme") use the scheme's customary normaliser: the box for AFLW-19, the inter-ocular
    distance otherwise. Normalisers other than that one become NaN when they cannot be computed for some
    sample (e.g. a missing pupil), instead of failing the whole report. Values are plain Python floats.
    """
    sch = get_scheme(scheme)
    primary = primary_normaliser(sch.name)
    per_kind: dict[str, np.ndarray | None] = {}
    for kind in ("iod", "ipd", "box", "diag"):
        try:
            per_kind[kind] = nme(pred, gt, sch, kind, boxes)
        except ChsError:
            if kind == primary:
                raise
            per_kind[kind] = None
    main = per_kind[primary]
    assert main is not None
    out: dict = {"n": int(main.size), "nme": float(main.mean())}
    for kind, e in per_kind.items():
        out[f"nme_{kind}"] = float(e.mean()) if e is not None else float("nan")
    bx, by = mean_offset(pred, gt, sch, primary, boxes)
    out["offset_x"], out["offset_y"] = float(bx), float(by)
    thresholds = [0.08, 0.10]
    if sch.name == "19":
        thresholds.insert(0, 0.07)
    if auc_threshold is not None:
        extra = [auc_threshold] if np.isscalar(auc_threshold) else list(auc_threshold)
        thresholds += [float(t) for t in extra if float(t) not in thresholds]
    for t in thresholds:
        out[f"fr_{_pct_key(t)}"] = failure_rate(main, t)
        out[f"auc_{_pct_key(t)}"] = auc(main, t)
    if shift is not None:
        s = np.array([bx, by]) if isinstance(shift, str) and shift == "own" else np.asarray(shift, float)
        shifted = shift_corrected_nme(pred, gt, sch, primary, boxes, s)
        out["shift_x"], out["shift_y"] = float(s[0]), float(s[1])
        out["nme_shifted"] = float(shifted.mean())
        out["fr_10_shifted"] = failure_rate(shifted, 0.10)
        out["auc_10_shifted"] = auc(shifted, 0.10)
    return out


def subset_summary(pred, gt, scheme: str | int | LandmarkScheme, attributes: list[dict], boxes=None,
                   auc_threshold: float | Sequence[float] | None = None) -> dict[str, dict]:
    """summarize() on each non-empty WFLW attribute subset (pose, expression, illumination, makeup,
    occlusion, blur); attributes[i] holds sample i's flags ("make-up" is accepted for "makeup")."""
    sch = get_scheme(scheme)
    p = _as_batch(pred, sch, "predictions")
    g = _as_batch(gt, sch, "ground truth")
    if len(attributes) != len(g):
        raise ChsError(f"got {len(attributes)} attribute records for {len(g)} samples")
    b = None if boxes is None else np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    out: dict[str, dict] = {}
    for name in WFLW_ATTRIBUTES:
        mask = np.array([bool(a.get(name, a.get("make-up", False) if name == "makeup" else False))
                         for a in attributes], dtype=bool)
        if mask.any():
            out[name] = summarize(p[mask], g[mask], sch, None if b is None else b[mask], auc_threshold)
    return out


def group_summary(pred, gt, scheme: str | int | LandmarkScheme, groups: Sequence[str | None],
                  order: Sequence[str] = (), shift=None) -> dict[str, dict]:
    """summarize() per named group (e.g. MTFL's pose subsets profile / half / frontal); samples whose group
    is None are left out. Groups in ``order`` come first; ``shift`` as for summarize()."""
    sch = get_scheme(scheme)
    p = _as_batch(pred, sch, "predictions")
    g = _as_batch(gt, sch, "ground truth")
    if len(groups) != len(g):
        raise ChsError(f"got {len(groups)} group labels for {len(g)} samples")
    labels = np.array([str(x) if x is not None else "" for x in groups])
    names = [n for n in order if n in labels] + sorted(set(labels) - set(order) - {""})
    return {n: summarize(p[labels == n], g[labels == n], sch, shift=shift) for n in names}


__all__ = ["auc", "ced", "failure_rate", "group_summary", "mean_offset", "nme", "normalizing_distance",
           "shift_corrected_nme", "subset_summary", "summarize"]
