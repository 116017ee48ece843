"""ONNX Runtime runner: CPU, CUDA or TensorRT execution providers, chosen by what is installed."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from chs.runtime.artifact import INPUT_NAME, OUTPUT_LANDMARKS, OUTPUT_SCORES, ModelMeta
from chs.runtime.backends.base import RunnerBase
from chs.runtime.errors import ChsError, first_line
from chs.runtime.meta_checks import check_onnx_meta

# what ONNX Runtime raises when a loaded model fails while running (damaged weights feeding RoiAlign NaN rois...)
_ORT_ERRORS = tuple(getattr(ort.capi.onnxruntime_pybind11_state, n) for n in (
    "Fail", "InvalidArgument", "RuntimeException", "EPFail", "NotImplemented", "EngineError"))
MAX_SESSIONS = 64  # split sessions per runner (each holds its own copy of the model's weights)
PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
EXECUTORS = ("sequential", "parallel")


def check_executor(executor: str) -> None:
    if executor not in EXECUTORS:
        raise ChsError(f"unknown ONNX Runtime executor '{executor}' ({', '.join(EXECUTORS)})")


def split_count(sessions: int, batch: int) -> int:
    """How many of ``sessions`` split single-thread sessions a batch of ``batch`` crops runs on (0: none, the
    batch runs on the runner's one session): batches of two or more, as many sessions as crops at most."""
    return min(sessions, batch) if sessions > 1 and batch >= 2 else 0


def pick_providers(requested: str = "auto") -> list[str]:
    """'auto' = the best installed provider first; or 'cpu', 'cuda', 'tensorrt'."""
    available = ort.get_available_providers()
    if requested == "auto":
        return [p for p in PROVIDER_ORDER if p in available] or ["CPUExecutionProvider"]
    name = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
            "tensorrt": "TensorrtExecutionProvider"}.get(requested)
    if name is None:
        raise ChsError(f"unknown ONNX Runtime provider '{requested}' (auto, cpu, cuda, tensorrt)")
    if name not in available:
        raise ChsError(f"ONNX Runtime provider {name} is not installed (available: {', '.join(available)})")
    return [name, "CPUExecutionProvider"] if name != "CPUExecutionProvider" else [name]


def open_session(path: Path, what: str, providers: str = "auto", threads: int = 0,
                 executor: str = "sequential") -> ort.InferenceSession:
    """One ONNX Runtime session opener (landmark model and face detector): quiet logs, the provider choice,
    thread count, executor, and ORT's own exception types turned into one line naming ``what``.

    ``executor``: "sequential" runs one node at a time on ``threads`` intra-op threads; "parallel" runs
    independent nodes side by side on ``threads`` inter-op threads, each node on one thread (ORT_PARALLEL).

    The pool threads stop spinning when ``run`` returns (``session.force_spinning_stop``). By default they spin on
    for ~10-30 ms, so the next stage of a pipeline (the detector before the landmark model, the landmark model
    before the next frame's detector, a second session) runs with a core taken: here a landmark session's first
    calls after another two-thread session's ran 2-3x slower, and detector + landmarks per image took 1.2-1.4x as
    long. While ``run`` works the threads spin as before: back-to-back calls of one session are as fast either way."""
    check_executor(executor)
    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # errors reach the caller as exceptions (one ChsError line), not as log lines
    if executor == "parallel":
        opts.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        opts.intra_op_num_threads = 1  # two pools of N threads on N cores only fight each other
        if threads:
            opts.inter_op_num_threads = threads
    elif threads:
        opts.intra_op_num_threads = threads
    # ORT's pool threads otherwise spin on after run() returns (~10-30 ms here), taking a core from the next stage
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    try:
        return ort.InferenceSession(str(path), opts, providers=pick_providers(providers))
    except ChsError:
        raise
    except Exception as e:  # onnxruntime raises its own exception types for unreadable models
        raise ChsError(f"cannot load {what} {path}: {first_line(e)}") from None


class OrtRunner(RunnerBase):
    """Runs an exported CHS model; InferenceSession.run is thread-safe, so one runner serves many threads.

    ``sessions`` > 1 (CPU provider): batches of two or more crops are split over that many single-thread
    sessions run side by side, one batch of one crop runs on the ``threads``-thread session. On a small CPU
    this is what makes INT8 pay: ONNX Runtime's int8 convolutions gain little from a second intra-op thread
    at this network's size (16-64 channels, 32x32 down to 4x4), two independent sessions use both cores.
    ``executor="parallel"`` runs that session's independent nodes (the hourglass's branches) side by side,
    one thread each (:func:`open_session`): on a VM whose second vCPU is busy with another tenant, INT8 at
    batch 1 runs faster that way than on two intra-op threads (and slower when both cores are free).
    """

    def __init__(self, path: str | os.PathLike, providers: str = "auto", threads: int = 0, sessions: int = 1,
                 executor: str = "sequential"):
        p = Path(path)
        if not p.is_file():
            raise ChsError(f"model not found: {p}")
        if not 1 <= sessions <= MAX_SESSIONS:
            raise ChsError(f"ONNX Runtime sessions must be 1-{MAX_SESSIONS}, got {sessions}")
        self.session = open_session(p, "ONNX model", providers, threads, executor)
        props = self.session.get_modelmeta().custom_metadata_map
        self.meta = ModelMeta.from_props(props, source=f"ONNX model {p.name}")
        names = {o.name for o in self.session.get_outputs()}
        if {OUTPUT_LANDMARKS, OUTPUT_SCORES} - names or INPUT_NAME not in {i.name for i in self.session.get_inputs()}:
            raise ChsError(f"ONNX model {p.name} lacks the '{INPUT_NAME}' -> '{OUTPUT_LANDMARKS}', "
                           f"'{OUTPUT_SCORES}' interface")
        check_onnx_meta(self.meta, self.session, f"ONNX model {p.name}")
        dim = next(i.shape for i in self.session.get_inputs() if i.name == INPUT_NAME)[0]
        # a graph exported with a fixed batch runs in chunks of exactly that many crops (the last one padded)
        self.fixed_batch = dim if isinstance(dim, int) and dim > 0 else 0
        if self.fixed_batch and sessions > 1:
            raise ChsError(f"ONNX model {p.name} has a fixed batch of {dim}: split sessions need a dynamic batch axis")
        self.path = p
        self.name = "ort-" + self.session.get_providers()[0].replace("ExecutionProvider", "").lower()
        if executor == "parallel":
            self.name += "/par"
        self.split: list[ort.InferenceSession] = []
        self._pool: ThreadPoolExecutor | None = None
        if sessions > 1:
            if self.session.get_providers()[0] != "CPUExecutionProvider":
                raise ChsError(f"split sessions run on ONNX Runtime's CPU provider, not {self.name}")
            self.split = [open_session(p, "ONNX model", "cpu", 1) for _ in range(sessions)]
            self._pool = ThreadPoolExecutor(sessions, thread_name_prefix="chs-ort")

    def split_for(self, batch: int) -> int:
        """How many single-thread sessions a batch of ``batch`` crops runs on (0: the ``threads``-thread one)."""
        return split_count(len(self.split), batch)

    def _run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        if self.session is None:
            raise ChsError(f"runner {self.name} is closed")
        try:
            lm, sc = self._run_sessions(x)
        except _ORT_ERRORS as e:
            raise ChsError(f"ONNX model {self.path.name} failed while running: {first_line(e, 300)}") from None
        return {"landmarks": lm.astype(np.float32), "scores": sc.astype(np.float32)}

    def _run_sessions(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        outs = [OUTPUT_LANDMARKS, OUTPUT_SCORES]
        n = self.fixed_batch
        if n and not len(x):  # what a dynamic-batch graph answers for no crops
            k = self.meta.num_points
            return np.zeros((0, k, 2), np.float32), np.zeros((0, k), np.float32)
        if n and len(x) != n:
            padded = np.concatenate([x, np.repeat(x[-1:], -len(x) % n, axis=0)])
            parts = [self.session.run(outs, {INPUT_NAME: padded[i:i + n]}) for i in range(0, len(padded), n)]
            return tuple(np.concatenate(o)[:len(x)] for o in zip(*parts, strict=True))
        parts_count = self.split_for(len(x))
        if not parts_count:
            return tuple(self.session.run(outs, {INPUT_NAME: x}))
        # onnxruntime releases the GIL while it runs: the parts run on separate cores
        parts = np.array_split(x, parts_count)
        done = [f.result() for f in [self._pool.submit(s.run, outs, {INPUT_NAME: part})
                                     for s, part in zip(self.split, parts, strict=False)]]
        return tuple(np.concatenate(o) for o in zip(*done, strict=True))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        self.session, self.split, self._pool = None, [], None
