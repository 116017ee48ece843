"""``chs-bench latency / accuracy / tradeoff`` on a tiny random checkpoint: structure and values, never speed.

Timings are not asserted (shared, virtualised cores); only that they are positive, ordered and joined to
the right GMACs, and that the trade-off files are written. One tiny export per CCR count is shared by all
tests through the work folder.
"""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from chs.bench_cmd import bench_app
from chs.benchmarks.latency import latency_rows
from chs.benchmarks.peers import detector_row
from chs.benchmarks.report import format_ratios, speed_ratios
from chs.benchmarks.request import BenchRequest
from chs.benchmarks.tradeoff import format_markdown, join_rows, plot_points
from chs.model.checkpoint import save_checkpoint
from chs.model.chs import build_model
from chs.model.complexity import count_complexity
from chs.model.config import get_preset

FIXTURE_PTS = Path(__file__).resolve().parent / "fixtures" / "pts"


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    ckpt = save_checkpoint(build_model(get_preset("tiny")), tmp / "ckpt")
    rows = latency_rows(BenchRequest(ckpt, ("torch", "ort"), ("fp32",), (0, 1), (1,), tmp / "work", repeats=3, warmup=1,
                                     peak_seconds=0.2, detector=False, threads=1))
    return {"tmp": tmp, "ckpt": ckpt, "work": tmp / "work", "rows": rows}


def _macs(k: int) -> int:
    cfg = get_preset("tiny", ccr_stages=k)
    with torch.device("meta"):
        return count_complexity(build_model(cfg), cfg.input_size).macs


def test_latency_rows(bench):
    rows = bench["rows"]
    lm = [r for r in rows if r["kind"] == "landmarks"]
    assert len(lm) == 4  # ccr 0, 1 x torch, ort x fp32 x batch 1
    assert {(r["ccr"], r["backend"]) for r in lm} == {(0, "torch"), (0, "ort"), (1, "torch"), (1, "ort")}
    for r in lm:
        assert r["status"] == "ok", r
        assert math.isfinite(r["p50_ms"]) and 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert len(r["p50_ms_passes"]) == 2 and all(p > 0 for p in r["p50_ms_passes"])
        assert isinstance(r["noisy"], bool)
        assert r["faces_per_s"] == pytest.approx(1e3 / r["p50_ms"])
        assert r["macs"] == _macs(r["ccr"]) and r["gmacs"] == pytest.approx(r["macs"] / 1e9)
        assert r["peak_gflops"] > 0
        assert r["floor_ms"] == pytest.approx(2 * r["macs"] / (r["peak_gflops"] * 1e9) * 1e3)
        assert 0 < r["efficiency"] <= 1.5
    assert lm[0]["macs"] < [r for r in lm if r["ccr"] == 1][0]["macs"]
    assert all((bench["work"] / f"ccr{k}" / "model_fp32.onnx").is_file() for k in (0, 1))
    peer = [r for r in rows if r["kind"] == "peer"]
    assert len(peer) == 1 and (peer[0]["status"] == "ok" or peer[0]["reason"])
    ratios = speed_ratios(rows)
    assert len(ratios) == 2 and all(q["speedup"] > 0 for q in ratios)


def test_exports_are_not_reused_across_export_forms(bench, tmp_path, monkeypatch):
    """A new form of the exported files (e.g. the u8s8 file's BatchNorm folds) must not meet a cache of old ones."""
    import shutil

    import chs.export.options as options
    from chs.benchmarks.runners import ensure_exports

    work = tmp_path / "work"
    shutil.copytree(bench["work"], work)
    said: list[str] = []
    ensure_exports(bench["ckpt"], 0, work, ["fp32"], log=said.append)
    assert not said  # same form: the files are reused
    before = (work / "ccr0" / "model_fp32.onnx").stat().st_mtime_ns
    monkeypatch.setattr(options, "EXPORT_FORM", options.EXPORT_FORM + 1)
    ensure_exports(bench["ckpt"], 0, work, ["fp32"], log=said.append)
    assert said[0].startswith("exporting CCR 0")
    assert (work / "ccr0" / "model_fp32.onnx").stat().st_mtime_ns != before
    assert json.loads((work / "ccr0" / "bench_source.json").read_text())["source"]["export_form"] == \
        options.EXPORT_FORM


def test_skipped_rows_have_reasons(bench):
    rows = latency_rows(BenchRequest(bench["ckpt"], ("torch", "ort", "trt"), ("int8",), (0,), (1,), bench["work"],
                                     repeats=3, detector=False, peer=False))
    assert len(rows) == 3 and all(r["status"] == "skipped" and r["reason"] for r in rows)
    assert "calib" in [r for r in rows if r["backend"] == "ort"][0]["reason"]


def test_ort_batches_split_over_sessions(bench, monkeypatch):
    """--ort-sessions 2: batches of 2+ crops run on two single-thread sessions, marked in the row; the
    runner (and its sessions' thread pool) is closed when the rows are done."""
    from chs.runtime.backends.ort import OrtRunner

    closed: list[bool] = []
    close = OrtRunner.close

    def spy(self) -> None:
        closed.append(self._pool is not None)
        close(self)

    monkeypatch.setattr(OrtRunner, "close", spy)
    res = CliRunner().invoke(bench_app, [
        "latency", "--model", str(bench["ckpt"]), "--backend", "ort", "--ccr", "0", "--batch", "1,3",
        "--repeats", "2", "--warmup", "1", "--work-dir", str(bench["work"]), "--no-detector", "--threads", "2",
        "--ort-sessions", "2", "--json"])
    assert res.exit_code == 0, (res.stdout, res.stderr)
    lm = [r for r in json.loads(res.stdout)["rows"] if r["kind"] == "landmarks"]
    assert [(r["batch"], r["runner"], r["threads"], r["status"]) for r in lm] == [
        (1, "ort-cpu", 2, "ok"), (3, "ort-cpu/2x1", 1, "ok")]
    assert closed == [True]  # the one ORT runner, with its split-session pool


def test_ort_executors_get_a_row_each_and_ratios_take_each_precisions_fastest(bench):
    """--ort-executor sequential,parallel: a row per executor at batch 1; a split batch is the sequential row's
    (the parallel one says so); ratios pair each precision's fastest runner and name both."""
    res = CliRunner().invoke(bench_app, [
        "latency", "--model", str(bench["ckpt"]), "--backend", "ort", "--ccr", "0", "--batch", "1,3",
        "--repeats", "2", "--warmup", "1", "--work-dir", str(bench["work"]), "--no-detector",
        "--threads", "2", "--ort-sessions", "2", "--ort-executor", "sequential,parallel", "--json"])
    assert res.exit_code == 0, (res.stdout, res.stderr)
    lm = [r for r in json.loads(res.stdout)["rows"] if r["kind"] == "landmarks"]
    assert [(r["batch"], r["runner"], r["mode"], r["status"]) for r in lm] == [
        (1, "ort-cpu", "", "ok"), (3, "ort-cpu/2x1", "", "ok"), (1, "ort-cpu/par", "parallel", "ok"),
        (3, None, "parallel", "skipped")]
    assert "--ort-sessions" in lm[3]["reason"]

    def row(precision, mode, runner, p50, batch=1):
        return {"kind": "landmarks", "status": "ok", "ccr": 1, "backend": "ort", "mode": mode,
                "precision": precision, "batch": batch, "runner": runner, "p50_ms": p50}

    rows = [row("fp32", "", "ort-cpu", 3.5), row("fp32", "parallel", "ort-cpu/par", 5.0),
            row("int8", "", "ort-cpu", 3.0), row("int8", "parallel", "ort-cpu/par", 2.0),
            row("fp32", "", "ort-cpu/2x1", 2.8, 8), row("int8", "", "ort-cpu/2x1", 1.4, 8)]
    acc = [{"status": "ok", "ccr": 1, "backend": "ort", "precision": p, "nme": n}
           for p, n in (("fp32", 0.0393), ("int8", 0.0395))]
    got = [(q["batch"], q["base_runner"], q["new_runner"], round(q["speedup"], 3), round(q["dnme_pt"], 3))
           for q in speed_ratios(rows, acc)]
    assert got == [(1, "ort-cpu", "ort-cpu/par", 1.75, 0.02), (8, "ort-cpu/2x1", "ort-cpu/2x1", 2.0, 0.02)]


def test_ort_runner_parallel_executor_answers_like_the_sequential_one(bench):
    from chs.runtime.backends.opener import open_model
    from chs.runtime.backends.ort import OrtRunner
    from chs.runtime.errors import ChsError

    path = bench["work"] / "ccr1" / "model_fp32.onnx"
    x = np.random.default_rng(0).random((3, 3, 64, 64), np.float32)
    seq = OrtRunner(path, providers="cpu", threads=2)
    par = open_model(path, "ort", "cpu", threads=2, executor="parallel")
    assert (seq.name, par.name) == ("ort-cpu", "ort-cpu/par")
    np.testing.assert_allclose(par.infer(x)["landmarks"], seq.infer(x)["landmarks"], atol=1e-5)
    with pytest.raises(ChsError, match="unknown ONNX Runtime executor 'pipelined' \\(sequential, parallel\\)"):
        OrtRunner(path, providers="cpu", executor="pipelined")
    with pytest.raises(ChsError, match="unknown ONNX Runtime executor 'x' \\(sequential, parallel\\)"):
        BenchRequest(bench["ckpt"], ort_executors=("x",), work_dir=bench["work"])


@pytest.mark.parametrize("message, reason", [("", "ChsError"), ("engine profile too small\nsee the log", None)])
def test_a_failing_row_is_skipped_with_the_first_line_of_its_error(message, reason):
    """A runner's ChsError becomes the row's reason (its first line; an empty message crashed the run)."""
    from types import SimpleNamespace

    from chs.benchmarks import latency
    from chs.runtime.errors import ChsError

    def infer(x):
        raise ChsError(message)

    runner = SimpleNamespace(infer=infer, synchronize=lambda: None)
    row = {"status": "ok", "ccr": 0, "backend": "trt", "mode": "", "precision": "fp32", "batch": 1}
    req = SimpleNamespace(passes=2, repeats=3, warmup=1, max_seconds=1.0)
    samples = latency._time(req, [(row, runner, np.zeros((1, 3, 8, 8), np.float32))], log=lambda _: None)
    assert samples == {id(row): []}
    assert row["status"] == "skipped" and row["reason"] == (reason or message.splitlines()[0])


def test_detector_row(monkeypatch):
    import chs.runtime.detector as det

    class Fake:
        name = "fake-det"

        def detect(self, image):
            return np.array([[1.0, 2.0, 30.0, 40.0]]), np.array([1.0])

    monkeypatch.setattr(det, "default_detector", lambda: Fake())
    r = detector_row(repeats=3, passes=2)
    assert r["status"] == "ok" and r["backend"] == "fake-det" and r["faces"] == 1
    assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] and len(r["p50_ms_passes"]) == 2

    def missing():
        raise det.ChsError(det.NO_DETECTOR)

    monkeypatch.setattr(det, "default_detector", missing)
    r = detector_row(repeats=3)
    assert r["status"] == "skipped" and r["reason"] == det.NO_DETECTOR


def test_join_markdown_and_points():
    lat = [{"kind": "landmarks", "ccr": k, "backend": b, "mode": "", "precision": p, "batch": 1, "status": "ok",
            "reason": "", "runner": f"{b}-cpu", "p50_ms": t, "p90_ms": t, "p99_ms": t, "gmacs": 0.1 * (k + 1),
            "noisy": False, "p50_ms_passes": [t, t]}
           for k, b, p, t in ((0, "ort", "fp32", 2.0), (0, "torch", "fp32", 3.0), (0, "ort", "int8", 1.0))]
    acc = [{"ccr": 0, "backend": b, "precision": p, "status": "ok", "nme": n, "fr_10": 0.0, "auc_10": 0.5}
           for b, p, n in (("ort", "fp32", 0.05), ("torch", "fp32", 0.05), ("ort", "int8", 0.052))]
    rows = join_rows(lat, acc)
    assert rows[2]["dnme_pt"] == pytest.approx(0.2) and rows[0]["dnme_pt"] is None
    md = format_markdown(rows, "machine")
    assert len([ln for ln in md.splitlines() if ln.startswith("|")]) == len(rows) + 2
    pts = plot_points(rows)
    assert [(p["precision"], p["backend"]) for p in pts] == [("fp32", "ort"), ("int8", "ort")]
    ratios = speed_ratios(lat, acc)
    q = [q for q in ratios if q["what"] == "ort_int8_vs_fp32"][0]
    assert q["speedup"] == pytest.approx(2.0) and q["dnme_pt"] == pytest.approx(0.2) and not q["noisy"]
    assert "noisy" not in format_ratios(ratios)
    lat[2] |= {"noisy": True, "p50_ms_passes": [0.8, 1.2]}  # a ratio on a row whose passes disagree says so
    marked = [q for q in speed_ratios(lat, acc) if q["noisy"]]
    assert [q["what"] for q in marked] == ["ort_int8_vs_fp32"]
    assert format_ratios(marked).endswith("= 2.00x, ΔNME +0.200 pt (ort-cpu -> ort-cpu); "
                                          "noisy: a row's two passes differ > 10 %")


def test_tradeoff_cli(bench):
    out = bench["tmp"] / "tradeoff"
    onnx0 = bench["work"] / "ccr0" / "model_fp32.onnx"
    mtime = onnx0.stat().st_mtime_ns
    res = CliRunner().invoke(bench_app, [
        "tradeoff", "--model", str(bench["ckpt"]), "--data", str(FIXTURE_PTS), "--out", str(out), "--ccr", "0,1",
        "--batch", "1", "--repeats", "3", "--warmup", "1", "--work-dir", str(bench["work"]), "--no-detector",
        "--threads", "1"])
    assert res.exit_code == 0, (res.stdout, res.stderr)
    assert onnx0.stat().st_mtime_ns == mtime  # exports reused, not redone
    for name in ("table.md", "table.csv", "table.json", "nme_vs_latency.png", "nme_vs_gmacs.png", "machine.json",
                 "command.txt"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    data = json.loads((out / "table.json").read_text())
    rows = data["rows"]
    md = (out / "table.md").read_text().splitlines()
    assert len([ln for ln in md if ln.startswith("|")]) == len(rows) + 2
    assert len((out / "table.csv").read_text().strip().splitlines()) == len(rows) + 1
    lm = [r for r in rows if r["kind"] == "landmarks"]
    assert len(lm) == 4 and all(0 < r["nme"] < 10 for r in lm)
    # the same FP32 weights through torch and ORT give the same NME
    by = {(r["ccr"], r["backend"]): r["nme"] for r in lm}
    assert by[(1, "torch")] == pytest.approx(by[(1, "ort")], abs=1e-4)
    assert json.loads((out / "machine.json").read_text())["logical_cores"] >= 1
    assert "tradeoff" in (out / "command.txt").read_text()
    assert "ORT FP32 vs torch eager FP32" in res.stdout


@pytest.mark.parametrize("args", [["--ccr", "x"], ["--ccr", "0,5"], ["--backend", "torch,foo"],
                                  ["--batch", "0"], ["--precision", "fp64"], ["--ort-sessions", "0"],
                                  ["--ort-sessions", "1000"]])
def test_bad_lists_one_line_error(bench, args):
    res = CliRunner().invoke(bench_app, ["latency", "--model", str(bench["ckpt"]), *args])
    assert res.exit_code == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr


@pytest.mark.parametrize("args,message", [
    (["latency", "--threads", "-1"], "--threads must be >= 1, got -1"),
    (["latency", "--threads", "0"], "--threads must be >= 1, got 0"),
    (["latency", "--max-seconds", "nan"], "--max-seconds must be a finite number > 0, got nan"),
    (["latency", "--max-seconds", "-1"], "--max-seconds must be a finite number > 0, got -1.0"),
    (["latency", "--warmup", "-1"], "--warmup must be >= 0, got -1"),
    (["profile", "missing.onnx", "--top", "-1"], "--top must be >= 1, got -1"),
    (["profile", "missing.onnx", "--threads", "-2"], "--threads must be >= 1, got -2"),
    (["profile", "missing.onnx", "--runs", "0"], "--runs must be >= 1, got 0"),
])
def test_bad_numbers_refused_before_work(args, message):
    """Values torch would crash on (threads), that never stop a row (NaN seconds) or that silently drop rows
    (a negative --top): one line naming the option, before any model is opened."""
    res = CliRunner().invoke(bench_app, [*args, "--no-detector"] if args[0] == "latency" else args)
    assert res.exit_code == 2, (res.stdout, res.stderr)
    assert res.stderr.strip().splitlines() == [f"error: {message}"]


def test_bench_cli_defaults_are_the_librarys(monkeypatch):
    """chs-bench restates no default: every one comes from the library (accuracy once used batches (1,) where
    BenchRequest says (1, 8))."""
    from typer.main import get_command

    from chs.benchmarks import accuracy, video
    from chs.benchmarks.complexity import PAPER_PRESET, complexity_rows
    from chs.benchmarks.profile import ProfileOptions, format_profiles, op_profile
    from chs.runtime.errors import ChsError

    def seen(req, log):
        raise ChsError(f"batches {req.batches}")

    monkeypatch.setattr(accuracy, "accuracy_rows", seen)
    res = CliRunner().invoke(bench_app, ["accuracy", "--data", str(FIXTURE_PTS)])
    assert res.stderr.strip() == f"error: batches {BenchRequest.batches}"

    defaults = {name: {p.name: p.default for p in cmd.params} for name, cmd in get_command(bench_app).commands.items()}
    assert defaults["complexity"]["preset"] == PAPER_PRESET == inspect.signature(complexity_rows).parameters[
        "preset"].default
    prof = inspect.signature(op_profile).parameters
    assert defaults["profile"]["batch"] == ProfileOptions.batch == prof["batch"].default
    assert defaults["profile"]["runs"] == ProfileOptions.runs == prof["runs"].default
    assert defaults["profile"]["top"] == ProfileOptions.top == inspect.signature(format_profiles).parameters[
        "top"].default
    assert defaults["video"]["model"] == video.VideoBench.model
    assert defaults["video"]["detectors"] == ",".join(video.VideoBench.detectors)
    assert inspect.signature(video.default_rows).parameters["detectors"].default == video.VideoBench.detectors


def test_work_dir_defaults_to_the_user_cache_in_the_library(monkeypatch, tmp_path):
    """BenchRequest, not the CLI, resolves a missing work_dir: ~/.cache/chs/bench/<model>-<path hash>."""
    import hashlib

    from chs.runtime.assets import DEFAULT_DIR

    monkeypatch.setenv("HOME", str(tmp_path))
    tag = hashlib.sha256(str(DEFAULT_DIR.resolve()).encode()).hexdigest()[:10]
    assert BenchRequest("default").work_dir == tmp_path / ".cache" / "chs" / "bench" / f"{DEFAULT_DIR.name}-{tag}"
    assert BenchRequest("default", work_dir="mine").work_dir == "mine"


def test_serve_bench_crops_use_the_box_the_model_was_trained_on():
    """WFLW/COCO sets carry detector boxes; a landmark-box model must be fed ground-truth-landmark boxes."""
    from types import SimpleNamespace

    from chs.benchmarks.serve import real_crops
    from chs.runtime.artifact import ModelMeta
    from chs.runtime.assets import demo_face
    from chs.runtime.datasets import load_dataset
    from chs.runtime.evaluate import crop_batch
    from chs.runtime.geometry import box_from_landmarks

    data = str(Path(__file__).resolve().parent / "fixtures" / "coco-style" / "wflw" / "test_wflw.json")
    meta = ModelMeta(scheme="98", num_points=98, input_size=64, heatmap_stride=4, ccr=1, precision="fp32")
    samples = load_dataset(data)[:3]
    assert all(s.box is not None and not s.landmark_box for s in samples)  # detector boxes in the file
    want = crop_batch([s.load_image() for s in samples], [box_from_landmarks(s.landmarks) for s in samples], meta)[0]
    np.testing.assert_array_equal(real_crops(SimpleNamespace(meta=meta), data, 3), want)
    image, box = demo_face()
    np.testing.assert_array_equal(real_crops(SimpleNamespace(meta=meta), None, 3), crop_batch([image], [box], meta)[0])


@pytest.mark.parametrize("url, protocol", [("triton+http://h:1/chs", "http"), ("triton://h:1/chs", "http"),
                                           ("triton+grpc://h:1/chs", "grpc")])
def test_serve_bench_files_a_running_server_under_its_urls_protocol(monkeypatch, url, protocol):
    """--url triton+http://... is an HTTP row (it was filed under gRPC: any scheme but triton:// was)."""
    from chs.benchmarks import serve
    from chs.runtime.backends import triton
    from chs.runtime.backends.opener import open_model

    class FakeTriton:  # the served model is the local one: only the row's protocol is under test
        def __init__(self, u: str, timeout: float) -> None:
            assert u == url
            self.infer = open_model("default", backend="ort", providers="cpu").infer

        def batch_counts(self) -> tuple[int, int]:
            return 0, 0

        def close(self) -> None:
            pass

    monkeypatch.setattr(triton, "TritonRunner", FakeTriton)
    opts = serve.ServeBenchOptions(url=url, clients=1, requests=1, passes=1)
    rows = serve.run_serve_bench(opts, log=lambda _: None)["rows"]
    assert [r["row"] for r in rows][-1] == f"Triton {protocol}, 1 clients" and len(rows) == 3


def test_dlib_peer_row_on_real_faces():
    """dlib's 68-point predictor with its own HOG boxes on the four real fixture faces (when installed)."""
    from chs.benchmarks.accuracy import load_samples, peer_accuracy_row
    from chs.benchmarks.peers import dlib_68_model_path

    if dlib_68_model_path() is None:
        pytest.skip("dlib peer needs dlib and face_recognition_models (pip install face-recognition-models)")
    row = peer_accuracy_row(load_samples(FIXTURE_PTS), "fixtures")
    assert row["status"] == "ok" and row["boxes"] == "dlib-hog"
    assert row["n_images"] == 4 and row["n"] == 4 - row["misses"] and row["misses"] == 2  # HOG misses 2 of 4
    assert 0.005 < row["nme_iod"] < 0.08  # a real fit on large, frontal faces; a wrong box convention is > 0.1


def test_op_profile_counts_the_graph(tiny_onnx, foreign_onnx):
    """Per-op-type kernel times from ONNX Runtime's profiler: shares add up, and the RoiAlign count is one
    node per CCR stage (tiny has 2)."""
    from chs.benchmarks.profile import CONV_OPS, format_profiles, op_profile

    prof = op_profile(tiny_onnx, batch=2, runs=3, threads=1)
    ops = {o["op"]: o for o in prof["ops"]}
    assert ops["RoiAlign"]["nodes"] == 2
    assert "Conv" in ops or "FusedConv" in ops
    assert sum(o["share"] for o in prof["ops"]) == pytest.approx(1.0)
    assert prof["kernel_ms"] == pytest.approx(sum(o["ms"] for o in prof["ops"]))
    assert [o["ms"] for o in prof["ops"]] == sorted((o["ms"] for o in prof["ops"]), reverse=True)
    assert prof["batch"] == 2 and prof["ms_per_call"] > 0
    assert 0 < prof["conv_ms"] < prof["kernel_ms"]
    assert prof["conv_ms"] == pytest.approx(sum(o["ms"] for o in prof["ops"] if o["op"] in CONV_OPS))
    # the graph has parallel branches (selective-feature branches, decode), so the chain is shorter than the sum
    assert max(o["ms"] / o["nodes"] for o in prof["ops"]) < prof["critical_path_ms"] < prof["kernel_ms"]
    assert "| RoiAlign |" in format_profiles([prof], top=50)
    assert "longest dependency chain" in format_profiles([prof])
    res = CliRunner().invoke(bench_app, ["profile", str(foreign_onnx)])
    assert res.exit_code == 2 and "no CHS metadata" in res.output


def test_critical_path_is_the_longest_dependent_chain():
    """a -> b -> d and a -> c -> d: the chain takes the slower branch, not the sum of both."""
    from chs.benchmarks.profile import critical_path_us

    nodes = [(["x"], ["a"]), (["a"], ["b"]), (["a"], ["c"]), (["b", "c"], ["d"]), (["x"], ["e"])]
    assert critical_path_us(nodes, [1.0, 5.0, 2.0, 1.0, 4.0]) == 7.0  # a + b + d; e runs beside
    assert critical_path_us(nodes, [1.0, 5.0, 2.0, 1.0, 9.0]) == 9.0  # the lone node e is the longest
    assert critical_path_us(nodes[:2], [1.0, 5.0]) == 6.0  # a plain chain: the sum


def test_compare_runs_reports_run_to_run_agreement(tmp_path):
    from chs.benchmarks.tradeoff import compare_runs, format_comparison, load_previous_rows
    from chs.runtime.errors import ChsError

    def row(ccr, backend, p50, batch=1, precision="fp32"):
        return {"kind": "landmarks", "ccr": ccr, "backend": backend, "runner": f"{backend}-cpu",
                "precision": precision, "batch": batch, "p50_ms": p50}

    before = [row(0, "ort", 5.0), row(1, "ort", 8.0), row(2, "ort", 10.0), row(0, "torch", 20.0, precision="")]
    now = [row(0, "ort", 5.4), row(1, "ort", 10.0), row(2, "ort", 9.5), row(0, "ort", 3.0, batch=8),
           {"kind": "landmarks", "ccr": 0, "backend": "trt", "status": "skipped", "p50_ms": None}]
    (tmp_path / "table.json").write_text(json.dumps({"rows": before}))
    cmp = compare_runs(now, load_previous_rows(tmp_path))
    assert cmp["compared"] == 3 and cmp["within"] == 2  # +8 %, +25 %, -5 %; batch 8 had no earlier row
    assert [round(c["change"], 3) for c in cmp["rows"]] == [0.08, 0.25, -0.05]
    text = format_comparison(cmp, "run1")
    assert text.startswith("Run-to-run against run1: 2 of 3 timed rows within 10 % at p50.")
    assert "| 1 | ort-cpu | fp32 | 1 | 10.000 | 8.000 | +25 % |" in text
    with pytest.raises(ChsError, match="not found"):
        load_previous_rows(tmp_path / "nothing.json")
    (tmp_path / "bad.json").write_text("{ not json")
    with pytest.raises(ChsError, match="--compare file .*bad.json is not valid JSON"):
        load_previous_rows(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"rows": 3}')
    with pytest.raises(ChsError, match="not a chs-bench table.json"):
        load_previous_rows(tmp_path / "other.json")
    res = CliRunner().invoke(bench_app, ["tradeoff", "--data", str(FIXTURE_PTS), "--out", str(tmp_path / "o"),
                                         "--compare", str(tmp_path / "nothing.json")])
    assert res.exit_code == 2 and "not found" in res.output and not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", [["latency"], ["accuracy", "--data", str(FIXTURE_PTS)],
                                     ["tradeoff", "--data", str(FIXTURE_PTS)], ["video", "--data", str(FIXTURE_PTS)],
                                     ["serve"]])
def test_out_on_an_existing_file_is_refused_before_the_benchmark(command, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    res = CliRunner().invoke(bench_app, [*command, "--out", str(afile)])
    assert res.exit_code == 2 and f"--out {afile} exists and is not a folder" in res.output, res.output
    assert afile.read_text() == "keep me"
