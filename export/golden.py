"""Golden inputs/outputs so an engine built later on a GPU machine can be checked against this export.

Written as Polygraphy JSON (``polygraphy run model.onnx --trt --load-inputs golden_inputs.json
--load-outputs golden_outputs.json``) when Polygraphy is installed, and always as ``golden.npz``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from chs.runtime.artifact import INPUT_NAME


def write_golden(out_dir: Path, inputs: np.ndarray, outputs: dict[str, np.ndarray], runner_name: str) -> list[str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez(out_dir / "golden.npz", **{INPUT_NAME: inputs}, **outputs)
    written = ["golden.npz"]
    try:
        from polygraphy.comparator import IterationResult, RunResults
        from polygraphy.json import save_json
        from polygraphy.logger import G_LOGGER
    except ImportError:
        return written
    G_LOGGER.module_severity = G_LOGGER.ERROR  # keep chs-export's output to its own lines
    save_json([{INPUT_NAME: inputs}], str(out_dir / "golden_inputs.json"))
    results = RunResults([(runner_name, [IterationResult(outputs=dict(outputs), runner_name=runner_name)])])
    results.save(str(out_dir / "golden_outputs.json"))
    return written + ["golden_inputs.json", "golden_outputs.json"]
