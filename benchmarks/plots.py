"""CED (cumulative error distribution) plot for ``chs-eval --plot``."""

from __future__ import annotations

import numpy as np

from chs.runtime.metrics import ced


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
