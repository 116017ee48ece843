"""The import layers: runtime <- model <- calibration <- export <- benchmarks <- chs (the CLI), no cycle.

Walks every ``import`` statement of the package's source (function-level lazy imports included), so a
backwards import fails here even when no test happens to execute it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# folder -> import package, lowest layer first; a module may import only its own layer or lower ones
LAYERS = [("runtime", "chs.runtime"), ("model", "chs.model"), ("calibration", "chs.calibration"),
          ("export", "chs.export"), ("benchmarks", "chs.benchmarks"), ("chs", "chs")]
RANK = {pkg: i for i, (_, pkg) in enumerate(LAYERS)}
TORCH_FREE = ("chs.runtime",)


def _layer(module: str) -> str | None:
    """The layer package of a dotted ``chs...`` module name (``chs`` itself: the CLI layer)."""
    for _, pkg in LAYERS[:-1]:
        if module == pkg or module.startswith(pkg + "."):
            return pkg
    return "chs" if module == "chs" or module.startswith("chs.") else None


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in one file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "chs":  # ``from chs import __version__``: name the imported attributes
                out += [(node.lineno, f"chs.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, node.module))
    return out


def _sources() -> list[tuple[str, Path]]:
    files = []
    for folder, pkg in LAYERS:
        for p in sorted((ROOT / folder).rglob("*.py")):
            files.append((pkg, p))
    return files


def test_imports_flow_one_way():
    bad = []
    for pkg, path in _sources():
        for line, mod in _imports(path):
            target = _layer(mod)
            if mod == "chs.__version__" or target is None:  # the version string sits in the root package
                continue
            if RANK[target] > RANK[pkg]:
                bad.append(f"{path.relative_to(ROOT)}:{line} ({pkg}) imports {mod} ({target})")
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_runtime_never_imports_torch():
    bad = [f"{path.relative_to(ROOT)}:{line} imports {mod}"
           for pkg, path in _sources() if pkg in TORCH_FREE
           for line, mod in _imports(path) if mod == "torch" or mod.startswith("torch.")]
    assert not bad, "\n".join(bad)


def test_layer_check_catches_a_backwards_import(tmp_path):
    """The walker itself: a runtime module importing the model layer is reported."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from chs.model.config import ChsConfig\n    import torch\n")
    mods = [m for _, m in _imports(f)]
    assert mods == ["chs.model.config", "torch"]
    assert RANK[_layer("chs.model.config")] > RANK["chs.runtime"]
    assert _layer("chs.cli") == "chs" and _layer("numpy") is None
