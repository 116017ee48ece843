"""Dataset evaluation through any runner: the same crops, the same inverse mapping, the same metrics.

``chs-eval`` (PyTorch checkpoints), the ONNX Runtime and TensorRT runtimes and ``chs-bench accuracy``
all call :func:`evaluate_runner`, so their NMEs differ only by what the backends compute.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import numpy as np

from chs.runtime.artifact import ModelMeta
from chs.runtime.backends.base import DEFAULT_BATCH, Runner
from chs.runtime.datasets import FaceSample
from chs.runtime.errors import ChsError
from chs.runtime.geometry import crop_face, invert_affine, transform_points
from chs.runtime.metrics import group_summary, nme, normalizing_distance, primary_normaliser, subset_summary, summarize
from chs.runtime.mtfl import POSE_SUBSETS
from chs.runtime.schemes import WFLW_ATTRIBUTES, get_scheme


def sample_box(sample: FaceSample, meta: ModelMeta) -> np.ndarray:
    """The box a model expects for this sample: GT-landmark box unless the model was trained on boxes; a
    partially labelled face (fewer points than the model's) brings its reader's landmark-equivalent box."""
    if sample.scheme != meta.scheme and not sample.landmark_box and meta.crop.box_source == "landmarks":
        raise ChsError(f"a {sample.scheme}-point face has no {meta.scheme}-point landmark box for this model")
    return sample.crop_box(meta.crop.box_source)


def compared_scheme(data_scheme: str, model_scheme: str) -> str:
    """The scheme predictions and labels are compared in: the model's, or "5" for 5-point labels (the
    model's points reduced by its scheme's ``to5`` groups)."""
    if data_scheme == model_scheme:
        return data_scheme
    if data_scheme == "5" and get_scheme(model_scheme).to5 is not None:
        return "5"
    raise ChsError(f"dataset has {data_scheme}-point landmarks but the model predicts {model_scheme}")


def dataset_scheme(samples: Sequence[FaceSample], model_scheme: str) -> str:
    """The scheme a set of faces is compared in against a model's (:func:`compared_scheme`); evaluation and
    training both refuse a set that mixes schemes (a folder of 5- and 68-point files)."""
    schemes = sorted({s.scheme for s in samples}, key=int)
    if len(schemes) != 1:
        raise ChsError(f"dataset mixes landmark schemes {schemes}; use one scheme per set")
    return compared_scheme(schemes[0], model_scheme)


def load_images(samples: Sequence[FaceSample]) -> tuple[list[FaceSample], list[np.ndarray], list[str]]:
    """Read every image; unreadable ones are skipped with a warning naming the file."""
    kept, images, skipped = [], [], []
    for s in samples:
        try:
            images.append(s.load_image())
            kept.append(s)
        except ChsError as e:
            warnings.warn(f"skipping {s.image_path}: {e}", stacklevel=2)
            skipped.append(str(s.image_path))
    return kept, images, skipped


def crop_batch(images: Iterable[np.ndarray], boxes: Iterable[np.ndarray], meta: ModelMeta
               ) -> tuple[np.ndarray, np.ndarray]:
    """Normalised crops (N, 3, S, S) float32 and the image->crop affines (N, 2, 3)."""
    crops, affines = [], []
    for img, box in zip(images, boxes, strict=True):
        c, m = crop_face(img, box, meta.input_size, meta.crop)
        crops.append(c)
        affines.append(m)
    return meta.norm(np.stack(crops)), np.stack(affines)


def to_image_coords(points: np.ndarray, affines: np.ndarray) -> np.ndarray:
    """(N, n, 2) crop pixels -> image pixels with each crop's inverse affine."""
    return np.stack([transform_points(p, invert_affine(m)) for p, m in zip(points, affines, strict=True)])


def predict_samples(runner: Runner, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray],
                    batch_size: int = DEFAULT_BATCH) -> dict[str, np.ndarray]:
    """Landmarks in image coordinates for every (image, box); extra per-stage outputs kept if present."""
    outs: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(images), batch_size):
        x, affines = crop_batch(images[i : i + batch_size], boxes[i : i + batch_size], runner.meta)
        res = runner.infer(x)
        outs.setdefault("landmarks", []).append(to_image_coords(res["landmarks"], affines))
        outs.setdefault("scores", []).append(res["scores"])
        if "stages" in res:  # (K+1, N, n, 2)
            outs.setdefault("stages", []).append(np.stack([to_image_coords(s, affines) for s in res["stages"]]))
    return {k: np.concatenate(v, axis=1 if k == "stages" else 0) for k, v in outs.items()}


def stage_summary(pred: dict[str, np.ndarray], gt: np.ndarray, scheme: str, shift=None) -> dict:
    """:func:`summarize` of the served landmarks, plus ``nme_iod_per_stage`` when the runner gave stages
    (``shift`` as for summarize)."""
    result = summarize(pred["landmarks"], gt, scheme, shift=shift)
    if "stages" in pred:
        result["nme_iod_per_stage"] = [float(summarize(s, gt, scheme)["nme_iod"]) for s in pred["stages"]]
    return result


def evaluate_runner(runner: Runner, samples: Sequence[FaceSample], batch_size: int = DEFAULT_BATCH) -> dict:
    """Metrics of a runner on annotated samples (fractions, not percent), per CCR stage when available."""
    if not samples:
        raise ChsError("no samples to evaluate")
    kept, images, skipped = load_images(samples)
    if not kept:
        raise ChsError("none of the dataset's images could be read")
    scheme = dataset_scheme(kept, runner.meta.scheme)
    gt = np.stack([s.landmarks for s in kept])
    boxes = [sample_box(s, runner.meta) for s in kept]
    pred = predict_samples(runner, images, boxes, batch_size)
    if scheme != runner.meta.scheme:  # partially labelled faces: compare on the reduced points
        reduce = get_scheme(runner.meta.scheme).to_five
        pred = {k: (reduce(v) if k in ("landmarks", "stages") else v) for k, v in pred.items()}
    five = scheme == "5"
    result = stage_summary(pred, gt, scheme, shift="own" if five else None)
    result["scheme"] = scheme
    result["skipped"] = skipped
    result["ccr"] = runner.meta.ccr
    primary = primary_normaliser(scheme) if result["n"] else "iod"
    result["per_sample_nme"] = nme(pred["landmarks"], gt, scheme, primary)
    attrs = [s.attributes for s in kept]
    if five:  # the signed offset of each of the 5 points (normaliser units): label conventions differ per point
        norm = normalizing_distance(gt, scheme, primary)
        result["offset_per_point"] = ((pred["landmarks"] - gt) / norm[:, None, None]).mean(axis=0).tolist()
    if any("pose_subset" in a for a in attrs):  # MTFL's pose: profile / half / frontal, set-wide shift
        shift = (result["shift_x"], result["shift_y"]) if five else None
        result["subsets"] = group_summary(pred["landmarks"], gt, scheme, [a.get("pose_subset") for a in attrs],
                                          POSE_SUBSETS, shift=shift)
    elif any(name in a for a in attrs for name in WFLW_ATTRIBUTES):  # WFLW-style flags: the per-subset breakdown
        result["subsets"] = subset_summary(pred["landmarks"], gt, scheme, attrs)
    return result
