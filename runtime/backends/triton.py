"""A runner that infers on a remote Triton Inference Server: ``triton://HOST:PORT/NAME`` (HTTP) or
``triton+grpc://HOST:PORT/NAME`` (gRPC), optionally ``/NAME/VERSION`` and ``?timeout=SECONDS``.

Cropping and mapping back stay local (``LandmarkRuntime``); only the crop batch travels. The model's
metadata (crop rule, input size, scheme) is read from the server: every repository ``chs-export --triton``
writes carries it in the config parameter ``chs.meta``, whichever backend serves it (python, ONNX Runtime,
TensorRT). ``tritonclient`` is imported lazily (the ``serve`` extra). Every failure — no server, a server
that is not Triton, an unknown model, a timeout, a request the server refuses — is one ChsError line.
Thread-safe: each thread gets its own client (the HTTP client is gevent-based and must stay on its thread).
"""

from __future__ import annotations

import threading
from urllib.parse import parse_qs, urlsplit

import numpy as np

from chs.runtime.artifact import INPUT_NAME, META_KEY, OUTPUT_LANDMARKS, OUTPUT_SCORES, ModelMeta
from chs.runtime.backends.base import check_outputs
from chs.runtime.errors import ChsError

SCHEMES = {"triton": "http", "triton+http": "http", "triton+grpc": "grpc"}
DEFAULT_TIMEOUT = 30.0  # seconds per call; a URL's ?timeout=S or the constructor's timeout overrides it
_NP_TYPES = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16}


def is_triton_url(model: object) -> bool:
    return isinstance(model, str) and model.split("://", 1)[0].lower() in SCHEMES and "://" in model


def parse_triton_url(url: str) -> tuple[str, str, str, str]:
    """``triton[+grpc]://HOST:PORT/NAME[/VERSION]`` -> (protocol, "HOST:PORT", NAME, VERSION or "")."""
    bad = ChsError(f"Triton model URL must be triton://HOST:PORT/NAME[/VERSION] (or triton+grpc://...), got '{url}'")
    try:
        parts = urlsplit(url)  # raises ValueError itself for e.g. an unclosed IPv6 bracket
        port = parts.port
    except ValueError:
        raise bad from None
    protocol = SCHEMES.get(parts.scheme.lower())
    path = [p for p in parts.path.split("/") if p]
    if protocol is None or not parts.hostname or port is None or not 1 <= len(path) <= 2:
        raise bad
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return protocol, f"{host}:{port}", path[0], path[1] if len(path) == 2 else ""


def _one_line(e: BaseException) -> str:
    """A client exception as one short line (tritonclient, gevent, grpc and socket errors alike)."""
    status = str(e.status()) if callable(getattr(e, "status", None)) else ""
    if isinstance(e, TimeoutError) or type(e).__name__ == "Timeout" or "DEADLINE_EXCEEDED" in status:
        return "timed out"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused (is the server running?)"
    msg = e.message() if callable(getattr(e, "message", None)) else str(e)
    msg = (msg or "").strip()
    return ((msg.splitlines()[0] if msg else "") or type(e).__name__)[:300]


class TritonRunner:
    """The Runner protocol over ``tritonclient`` (HTTP or gRPC); ``timeout`` (s) bounds every call (default:
    the URL's ``?timeout=``, else 30 s)."""

    def __init__(self, url: str, timeout: float | None = None):
        self.protocol, self.address, self.model, self.version = parse_triton_url(url)
        query = parse_qs(urlsplit(url).query, keep_blank_values=True)
        if set(query) - {"timeout"}:
            raise ChsError(f"unknown option in '{url}': only ?timeout=SECONDS")
        if timeout is None:
            try:
                timeout = float(query["timeout"][-1]) if "timeout" in query else DEFAULT_TIMEOUT
            except ValueError:
                raise ChsError(f"timeout in '{url}' must be a number of seconds") from None
        if not timeout > 0:
            raise ChsError(f"timeout must be > 0 seconds, got {timeout}")
        self.url, self.timeout = url, float(timeout)
        try:
            if self.protocol == "grpc":
                import tritonclient.grpc as client_module
            else:
                import tritonclient.http as client_module
        except ImportError:
            raise ChsError("Triton models need the serve extra: pip install 'chs[serve]'") from None
        self._mod = client_module
        self._local = threading.local()
        self._clients: list = []
        self._lock = threading.Lock()
        self.name = f"triton-{self.protocol}"
        config = self._fetch_config()
        self.meta = self._meta_from(config)
        self.max_batch = int(config.get("max_batch_size", 0)) or 1
        self.input_dtype = self._check_interface(config)

    # -------------------------------------------------------------------------------------- plumbing
    def _client(self):
        c = getattr(self._local, "client", None)
        if c is None:
            if self.protocol == "grpc":
                c = self._mod.InferenceServerClient(url=self.address)
            else:
                c = self._mod.InferenceServerClient(url=self.address, connection_timeout=self.timeout,
                                                    network_timeout=self.timeout)
            self._local.client = c
            with self._lock:
                self._clients.append(c)
        return c

    def _call(self, what: str, fn, *args, **kwargs):
        if self.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout
        try:
            return fn(*args, **kwargs)
        except ChsError:
            raise
        except BaseException as e:  # gevent's Timeout is a BaseException; KeyboardInterrupt passes through
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            self._drop_client()
            why = _one_line(e)
            if why == "timed out":
                why = f"timed out after {self.timeout:g} s"
            raise ChsError(f"Triton at {self.address} ({what} '{self.model}'): {why}") from None

    def _drop_client(self) -> None:
        """After a failure the connection may be half-used: the next call on this thread starts afresh."""
        c = getattr(self._local, "client", None)
        self._local.client = None
        if c is not None:
            with self._lock:
                if c in self._clients:
                    self._clients.remove(c)
            try:
                c.close()
            except Exception:  # noqa: S110 (closing a broken connection may fail; it is discarded anyway)
                pass

    def _fetch_config(self) -> dict:
        c = self._client()
        if not self._call("checking", c.is_server_live):
            raise ChsError(f"{self.address} answers but is not a live Triton server (/v2/health/live)")
        if not self._call("checking", c.is_model_ready, self.model, self.version):
            raise ChsError(f"Triton at {self.address} has no ready model '{self.model}'"
                           + (f" version {self.version}" if self.version else ""))
        kwargs = {"as_json": True} if self.protocol == "grpc" else {}
        cfg = self._call("reading the config of", c.get_model_config, self.model, self.version, **kwargs)
        return cfg.get("config", cfg) if self.protocol == "grpc" else cfg

    def _meta_from(self, config: dict) -> ModelMeta:
        param = (config.get("parameters") or {}).get(META_KEY) or {}
        text = param.get("string_value") if isinstance(param, dict) else None
        if not text:
            raise ChsError(f"Triton model '{self.model}' at {self.address} carries no '{META_KEY}' parameter: "
                           "serve a repository written by chs-export --triton")
        return ModelMeta.from_props({META_KEY: text}, source=f"Triton model '{self.model}'")

    def _check_interface(self, config: dict) -> type:
        s, n = self.meta.input_size, self.meta.num_points
        ins = {t.get("name"): t for t in config.get("input", [])}
        outs = {t.get("name") for t in config.get("output", [])}
        inp = ins.get(INPUT_NAME)
        dims = [int(d) for d in inp.get("dims", [])] if inp is not None else None
        if dims != [3, s, s] or {OUTPUT_LANDMARKS, OUTPUT_SCORES} - outs:
            raise ChsError(f"Triton model '{self.model}' does not serve the CHS contract: '{INPUT_NAME}' "
                           f"[3, {s}, {s}] -> '{OUTPUT_LANDMARKS}' [{n}, 2], '{OUTPUT_SCORES}' [{n}]")
        dtype = _NP_TYPES.get(inp.get("data_type", "TYPE_FP32"))
        if dtype is None:
            raise ChsError(f"Triton model '{self.model}' takes {inp.get('data_type')}: not a CHS crop input")
        return dtype

    # -------------------------------------------------------------------------------------- inference
    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Send the crops (chunks of the model's max_batch_size); the server checks shape and dtype."""
        x = np.ascontiguousarray(batch)
        if x.dtype == np.float32 and self.input_dtype != np.float32:
            x = x.astype(self.input_dtype)
        if x.ndim < 1 or len(x) == 0:
            raise ChsError(f"input batch must have shape (N, 3, S, S) with N >= 1, got {tuple(x.shape)}")
        lms, scs = [], []
        for s in range(0, len(x), self.max_batch):
            out = self._infer_chunk(x[s : s + self.max_batch])
            lms.append(out[0])
            scs.append(out[1])
        return check_outputs({"landmarks": np.concatenate(lms), "scores": np.concatenate(scs)}, self.name)

    def _infer_chunk(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m = self._mod
        try:
            datatype = {np.dtype(np.float32): "FP32", np.dtype(np.float16): "FP16", np.dtype(np.float64): "FP64",
                        np.dtype(np.uint8): "UINT8", np.dtype(np.int32): "INT32", np.dtype(np.int64): "INT64"}[x.dtype]
        except KeyError:
            raise ChsError(f"input batch dtype {x.dtype} cannot be sent to Triton (use float32)") from None
        inp = m.InferInput(INPUT_NAME, list(x.shape), datatype)
        if self.protocol == "grpc":
            inp.set_data_from_numpy(x)
            outputs = [m.InferRequestedOutput(OUTPUT_LANDMARKS), m.InferRequestedOutput(OUTPUT_SCORES)]
        else:
            inp.set_data_from_numpy(x, binary_data=True)
            outputs = [m.InferRequestedOutput(OUTPUT_LANDMARKS, binary_data=True),
                       m.InferRequestedOutput(OUTPUT_SCORES, binary_data=True)]
        res = self._call("inferring with", self._client().infer, self.model, [inp], model_version=self.version,
                         outputs=outputs)
        lm, sc = res.as_numpy(OUTPUT_LANDMARKS), res.as_numpy(OUTPUT_SCORES)
        n = self.meta.num_points
        if lm is None or sc is None or lm.shape != (len(x), n, 2) or sc.shape != (len(x), n):
            raise ChsError(f"Triton model '{self.model}' answered {len(x)} crops with landmarks "
                           f"{None if lm is None else lm.shape} and scores {None if sc is None else sc.shape}")
        return lm.astype(np.float32), sc.astype(np.float32)

    def batch_counts(self) -> tuple[int, int]:
        """(inferences, executions) of this model on the server: their ratio is the dynamic batcher's mean."""
        kwargs = {"as_json": True} if self.protocol == "grpc" else {}
        stats = self._call("reading statistics of", self._client().get_inference_statistics, self.model,
                           self.version, **kwargs)
        m = (stats.get("model_stats") or [{}])[0]
        return int(m.get("inference_count", 0)), int(m.get("execution_count", 0))

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for c in clients:
            try:
                c.close()
            except Exception:  # noqa: S110
                pass
