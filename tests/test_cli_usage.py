"""Usage errors (an unknown option, a value of the wrong type, a missing argument) end like every other bad
input: one ``error:`` line and exit code 2, not click's multi-line usage panel; help is unchanged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def _chs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chs", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, message", [
    (("train", "--epochs", "1.5"), "error: Invalid value for '--epochs'"),
    (("train", "--batch-size", "nan"), "error: Invalid value for '--batch-size'"),
    (("align", "--nope"), "error: No such option: --nope"),
    (("export",), "error: Missing argument 'model'."),
    (("no-such-command",), "error: No such command 'no-such-command'."),
])
def test_usage_errors_are_one_line_and_exit_2(args, message):
    res = _chs(*args)
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), res.stderr
    assert res.stdout == ""


def test_help_shows_options_and_their_bracketed_text():
    res = _chs("align", "--help")
    assert res.returncode == 0 and "Usage:" in res.stdout and "--out" in res.stdout and res.stderr == ""
    text = " ".join(res.stdout.split())  # help texts are plain: brackets are not eaten as rich markup
    assert "dlib (pip install chs[detect])" in text and "lost) [default: 30]" in text
    bare = _chs()  # no command: the help, as before
    assert bare.returncode in (0, 2) and "Usage:" in bare.stdout + bare.stderr and "error:" not in bare.stderr



def test_train_help_names_every_preset():
    from chs.model.config import PRESETS

    text = " ".join(_chs("train", "--help").stdout.split())
    assert f"Model preset: {', '.join(PRESETS)}." in text


NO_PACKAGE = """
import sys
class Missing:  # what Python raises for a package that is not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, Missing())
from chs.cli import {app}
{app}()
"""


@pytest.mark.parametrize("blocked, app, args, install", [
    ("torch", "export_app", ["default", "--out", "{tmp}/e"], "pip install torch==2.13.0"),
    ("matplotlib", "eval_app", ["default", "--data", "{fixtures}/pts", "--plot", "{tmp}/ced.png"],
     "pip install 'chs[plot]'"),
])
def test_a_missing_optional_package_names_its_install(blocked, app, args, install, tmp_path, fixtures_dir):
    code = NO_PACKAGE.format(blocked=blocked, app=app)
    argv = [a.format(tmp=tmp_path, fixtures=fixtures_dir) for a in args]
    res = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: this command needs {blocked}, which is not installed: ")
    assert install in lines[0]


def test_eval_of_an_onnx_file_needs_no_torch(fixtures_dir):
    """chs-eval on an exported model runs in a torch-free install (the README's `serve` / runtime-only use)."""
    onnx_file = Path(__file__).resolve().parents[1] / "runtime" / "assets" / "default" / "model.onnx"
    code = NO_PACKAGE.format(blocked="torch", app="eval_app")
    res = subprocess.run([sys.executable, "-c", code, str(onnx_file), "--data", str(fixtures_dir / "pts"), "--json"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert out["n"] == 4 and 0 < out["nme_iod"] < 0.2
    ckpt = subprocess.run([sys.executable, "-c", code, str(onnx_file.parent), "--data", str(fixtures_dir / "pts")],
                          capture_output=True, text=True, timeout=300)
    assert ckpt.returncode == 2 and ckpt.stderr.startswith(
        "error: evaluating a checkpoint (or --ccr) needs torch: this command needs torch, which is not installed: pip "
        "install torch==2.13.0"), ckpt.stderr


def test_eval_plot_with_detector_boxes(fixtures_dir, tmp_path):
    pytest.importorskip("matplotlib")
    onnx_file = Path(__file__).resolve().parents[1] / "runtime" / "assets" / "default" / "model.onnx"
    res = _chs("eval", str(onnx_file), "--data", str(fixtures_dir / "pts"), "--boxes", "detector",
               "--plot", str(tmp_path / "ced.png"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "ced.png").stat().st_size > 1000 and res.stdout.startswith("n=")


def test_sigterm_cleans_up_like_ctrl_c(tmp_path):
    """SIGTERM (a supervisor, `timeout`, `docker stop`) runs the command's cleanup as Ctrl-C does: an export's
    temporary folder beside --out was left behind when Python's default ended the process on the spot."""
    script = f"""
import os, signal, shutil, time
from pathlib import Path
from chs.errors_cli import one_line_errors

@one_line_errors
def command():
    partial = Path({str(tmp_path)!r}) / ".e.partial"
    partial.mkdir()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)
    finally:
        shutil.rmtree(partial)

command()
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert (res.returncode, res.stderr.strip()) == (143, "terminated")
    assert list(tmp_path.iterdir()) == []
