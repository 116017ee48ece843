"""The CHS crop-level model for Triton's python backend: the exported ONNX file run by ``OrtRunner``.

A python-backend repository written by ``chs-export --triton-backend python`` holds a ``model.py`` that
imports :class:`TritonPythonModel` from here. Triton's dynamic batcher hands ``execute`` several requests
at once; their crops run as one batch and the results are split back. Tensors cross the stub by DLPack:
the ``nvidia-pytriton`` stub was built against numpy 1.x, and with numpy 2 its ``as_numpy()`` returns
wrong values and ``Tensor(name, ndarray)`` sends empty outputs, while ``from_dlpack`` in both directions is
exact. Shape and dtype are checked by the server against ``config.pbtxt`` before a request gets here; a
request with NaN/inf crops is answered with an error of its own, without failing the others in the batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from chs.runtime.artifact import INPUT_NAME, OUTPUT_LANDMARKS, OUTPUT_SCORES
from chs.runtime.errors import ChsError

_CAPSULE_NAME_TAKEN = b"used_dlpack"  # what the python backend stub renames a capsule it took to
_CAPSULE_NAME_USED = b"used_dltensor"  # what numpy's capsule destructor recognises (the DLPack spec's name)


def tensor_from_array(pb_utils, name: str, array: np.ndarray):
    """``pb_utils.Tensor.from_dlpack`` on numpy's own capsule, renamed afterwards to the spec's "used" name.

    The stub takes ownership of the capsule and marks it ``used_dlpack``; numpy 2 only recognises
    ``used_dltensor`` and otherwise prints a ValueError traceback into the server log for every output
    tensor (the data itself is right). The rename tells numpy that the consumer owns the tensor now.
    """
    import ctypes

    capsule = np.ascontiguousarray(array).__dlpack__()
    tensor = pb_utils.Tensor.from_dlpack(name, capsule)
    api = ctypes.pythonapi
    api.PyCapsule_IsValid.argtypes = [ctypes.py_object, ctypes.c_char_p]
    api.PyCapsule_SetName.argtypes = [ctypes.py_object, ctypes.c_char_p]
    if api.PyCapsule_IsValid(capsule, _CAPSULE_NAME_TAKEN):
        api.PyCapsule_SetName(capsule, _CAPSULE_NAME_USED)
    return tensor


def split_by_request(outputs: dict[str, np.ndarray], sizes: list[int]) -> list[dict[str, np.ndarray]]:
    """Cut one batch's outputs back into per-request pieces (contiguous, as DLPack needs)."""
    pieces, start = [], 0
    for n in sizes:
        pieces.append({k: np.ascontiguousarray(v[start : start + n]) for k, v in outputs.items()})
        start += n
    return pieces


class TritonPythonModel:
    """Triton python-backend model: ``initialize`` opens ``<version>/model.onnx``; ``execute`` runs it."""

    def initialize(self, args: dict) -> None:
        from chs.runtime.backends.ort import OrtRunner

        config = json.loads(args["model_config"])
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.runner = OrtRunner(path, providers="cpu")
        s = self.runner.meta.input_size
        dims = [list(map(int, t["dims"])) for t in config["input"] if t["name"] == INPUT_NAME]
        if dims != [[3, s, s]]:
            raise ChsError(f"config.pbtxt input '{INPUT_NAME}' dims {dims} do not match the model's [3, {s}, {s}]")

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        crops: list[np.ndarray | None] = []
        for request in requests:
            x = np.from_dlpack(pb_utils.get_input_tensor_by_name(request, INPUT_NAME))
            crops.append(np.array(x, dtype=np.float32, copy=True) if np.isfinite(x).all() else None)
        good = [x for x in crops if x is not None]
        error = None
        pieces: list[dict[str, np.ndarray]] = []
        if good:
            try:
                pieces = split_by_request(self.runner.infer(np.concatenate(good)), [len(x) for x in good])
            except Exception as e:  # answer every request with the error instead of failing the batch silently
                error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        responses, k = [], 0
        for x in crops:
            if x is None or error is not None:
                msg = "input crops contain NaN or infinity" if x is None else error
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(msg)))
                continue
            out = pieces[k]
            k += 1
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                tensor_from_array(pb_utils, OUTPUT_LANDMARKS, out["landmarks"]),
                tensor_from_array(pb_utils, OUTPUT_SCORES, out["scores"]),
            ]))
        return responses

    def finalize(self) -> None:
        """Triton unloads the model: close the ONNX Runtime session now, not whenever it is collected."""
        runner, self.runner = getattr(self, "runner", None), None
        if runner is not None:
            runner.close()
