"""CED (cumulative error distribution) plot for ``chs-eval --plot``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from chs.runtime.errors import ChsError
from chs.runtime.files import check_output_dir
from chs.runtime.metrics import ced

PLOT_EXTENSIONS = (".png", ".pdf", ".svg")


def check_plot_path(path: str, option: str = "--plot") -> Path:
    """Refuse a plot file name matplotlib cannot write, or a folder that cannot be made, before any work."""
    p = Path(path)
    if p.suffix.lower() not in PLOT_EXTENSIONS:
        raise ChsError(f"{option} {p.name}: use a {', '.join(PLOT_EXTENSIONS)} file name")
    if p.is_dir():
        raise ChsError(f"{option} {p} is a folder; give a file name")
    check_output_dir(p.parent, option)
    return p


def plot_ced(curves: dict[str, np.ndarray], path: str, threshold: float = 0.10) -> None:
    """One curve per label from per-sample NMEs; x in percent of the normalising distance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    for label, errors in curves.items():
        x, y = ced(errors, threshold)
        ax.plot(np.asarray(x) * 100, y, label=label)
    ax.set_xlabel("NME (%)")
    ax.set_ylabel("fraction of faces")
    ax.set_xlim(0, threshold * 100)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
