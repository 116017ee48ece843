"""Face detectors side by side for the landmark model: misses, NME/FR@10 with detector boxes, and ms/image.

Run as ``python -m chs.benchmarks.detectors --data ../shared/data/ytf68/val --out DIR``. Accuracy comes
from ``chs.runtime.detector_eval`` (the same code as ``chs-eval --boxes detector``); speed is timed in
one run, the detectors interleaved call by call on the same images, so the ratio holds on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

from chs.runtime.assets import DEFAULT_MODEL
from chs.runtime.backends.opener import open_model
from chs.runtime.datasets import load_dataset
from chs.runtime.detector import FaceDetector, make_detector
from chs.runtime.detector_eval import detector_miss_rate, evaluate_with_detector

SIZES = ((512, 512), (1280, 720))


def _test_image(samples, width: int, height: int) -> np.ndarray:
    """A frame of the given size with a face from the set in it (resized so the face fills ~1/3 of the height)."""
    img = samples[0].load_image()
    scale = height / 3 / max(img.shape[:2]) * 2
    face = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    canvas = np.full((height, width, 3), 110, np.uint8)
    h, w = min(face.shape[0], height), min(face.shape[1], width)
    y, x = (height - h) // 2, (width - w) // 2
    canvas[y : y + h, x : x + w] = face[:h, :w]
    return canvas


def time_detectors(detectors: dict[str, FaceDetector], image: np.ndarray, repeats: int = 20
                   ) -> dict[str, dict[str, float]]:
    """ms per call of each detector on ``image``, calls interleaved (a, b, a, b, ...): ``median`` and ``min``
    (the least disturbed call on a shared machine) of the same calls, so the min never exceeds the median."""
    for det in detectors.values():
        det.detect(image)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in detectors}
    for _ in range(repeats):
        for name, det in detectors.items():
            t0 = time.perf_counter()
            det.detect(image)
            times[name].append((time.perf_counter() - t0) * 1000)
    return {k: {"median": float(np.median(v)), "min": float(np.min(v))} for k, v in times.items()}


def named_detector(name: str) -> FaceDetector:
    """``make_detector`` names, plus ``yunet@N`` / ``FILE.onnx@N``: YuNet with ``max_side=N`` (``@full``: None)."""
    if "@" in name:
        from chs.runtime.yunet import YuNetDetector

        base, side = name.rsplit("@", 1)
        return YuNetDetector(None if base == "yunet" else base, max_side=None if side == "full" else int(side))
    return make_detector(name)


def compare(data: str, names: list[str], model: str = "default", repeats: int = 20, speed_only: bool = False) -> dict:
    samples = load_dataset(data)
    runner = open_model(model if model != "default" else DEFAULT_MODEL)
    detectors = {n: named_detector(n) for n in names}
    rows = []
    for name, det in detectors.items():
        if speed_only:
            rows.append({"detector": name})
            continue
        miss = detector_miss_rate(det, samples)
        ev = evaluate_with_detector(runner, det, samples)
        rows.append({"detector": name, "faces": miss["n"], "misses": miss["misses"],
                     "detections_per_image": round(miss["detections_per_image"], 4),
                     "median_best_iou": round(miss["median_best_iou"], 4), "nme_pct": round(100 * ev["nme"], 3),
                     "fr10_pct": round(100 * ev["fr_10"], 2), "auc10": round(ev["auc_10"], 4)})
    speed, fastest = {}, {}
    for w, h in SIZES:
        image = _test_image(samples, w, h)
        timed = time_detectors(detectors, image, repeats)
        speed[f"{w}x{h}"] = {k: t["median"] for k, t in timed.items()}
        fastest[f"{w}x{h}"] = {k: t["min"] for k, t in timed.items()}
    return {"data": data, "model": model, "rows": rows, "ms_per_image": speed, "ms_per_image_min": fastest}


def format_markdown(result: dict) -> str:
    """Accuracy columns, then ms/image per size as "median (min)"."""
    lines = ["| detector | misses | NME % | FR@10 % | AUC@10 | median IoU | " +
             " | ".join(f"ms/image {k} median (min)" for k in result["ms_per_image"]) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(result["ms_per_image"])]
    for r in result["rows"]:
        name = r["detector"]
        ms = " | ".join(f"{v[name]:.1f} ({result['ms_per_image_min'][k][name]:.1f})"
                        for k, v in result["ms_per_image"].items())
        if "misses" in r:
            acc = (f"{r['misses']}/{r['faces']} | {r['nme_pct']:.2f} | {r['fr10_pct']:.2f} | {r['auc10']:.3f} | "
                   f"{r['median_best_iou']:.3f}")
        else:
            acc = "- | - | - | - | -"
        lines.append(f"| {name} | {acc} | {ms} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--detectors", default="yunet,dlib")
    ap.add_argument("--model", default="default")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", default=None)
    ap.add_argument("--speed-only", action="store_true")
    args = ap.parse_args()
    result = compare(args.data, args.detectors.split(","), args.model, args.repeats, args.speed_only)
    table = format_markdown(result)
    print(table)
    if args.out:
        from chs.benchmarks.machine import machine_info

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        result["machine"] = machine_info()
        (out / "comparison.json").write_text(json.dumps(result, indent=1) + "\n")
        (out / "comparison.md").write_text(table)


if __name__ == "__main__":
    main()
