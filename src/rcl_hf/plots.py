"""Plots a clinician can read: confusion matrices with the critical cells marked,
and the severity matrix as a heat map.  Matplotlib with the Agg backend (headless)."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .severity import SeverityMatrix

__all__ = ["plot_confusion_matrix", "plot_reliability_diagram", "plot_severity_matrix"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _outline_critical(ax, critical: np.ndarray) -> None:
    from matplotlib.patches import Rectangle

    for i, j in zip(*np.nonzero(critical)):
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#d62728", linewidth=2.5))


def plot_confusion_matrix(
    confusion: Sequence[Sequence[int]],
    severity: SeverityMatrix,
    path: Optional[str] = None,
    title: str = "Confusion matrix",
    normalize: bool = False,
):
    """Confusion matrix (rows: truth, columns: prediction) with critical cells outlined in red.

    Each cell shows its count (and the row share when ``normalize``); the title
    gives the number of critical errors. Returns the figure; saves it when ``path``.
    """
    plt = _pyplot()
    cm = np.asarray(confusion, dtype=np.float64)
    k = severity.num_labels
    if cm.shape != (k, k):
        raise ValueError(f"confusion matrix shape {cm.shape} does not match {k} severity labels")
    rows = cm.sum(1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    fig, ax = plt.subplots(figsize=(1.1 * k + 2.5, 1.0 * k + 2))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            text = f"{int(cm[i, j])}" + (f"\n{share[i, j]:.0%}" if normalize else "")
            ax.text(j, i, text, ha="center", va="center", fontsize=9,
                    color="white" if share[i, j] > 0.6 else "black",
                    fontweight="bold" if severity.critical[i, j] and cm[i, j] > 0 else "normal")
    _outline_critical(ax, severity.critical)
    n_crit = int((cm * severity.critical).sum())
    ax.set_xticks(range(k), severity.labels, rotation=45, ha="right")
    ax.set_yticks(range(k), severity.labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}\n{n_crit} critical errors (red cells) of {int(cm.sum())}")
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig


def plot_severity_matrix(severity: SeverityMatrix, path: Optional[str] = None, title: str = "Severity matrix"):
    """Heat map of the costs ``M[i, j]``, critical cells outlined in red and marked ⚠."""
    plt = _pyplot()
    k = severity.num_labels
    fig, ax = plt.subplots(figsize=(1.0 * k + 2.5, 1.0 * k + 1.8))
    im = ax.imshow(severity.matrix, cmap="OrRd", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            mark = " !" if severity.critical[i, j] else ""
            ax.text(j, i, f"{severity.matrix[i, j]:g}{mark}", ha="center", va="center", fontsize=9,
                    color="white" if severity.matrix[i, j] > 0.6 else "black")
    _outline_critical(ax, severity.critical)
    ax.set_xticks(range(k), severity.labels, rotation=45, ha="right")
    ax.set_yticks(range(k), severity.labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title + "\n(red outline: critical error)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="cost")
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig


def plot_reliability_diagram(probs: np.ndarray, labels: np.ndarray, path: Optional[str] = None, n_bins: int = 15,
                             title: str = "Reliability diagram"):
    """Accuracy per equal-width confidence bin against the diagonal (top-label, the bins of
    :func:`rcl_hf.metrics.reliability.calibration_bins`, the ones the ECE is computed on); the number of cases of
    each bin is written above its bar. Saved to ``path`` when given; returns the figure."""
    from .metrics.reliability import calibration_bins

    plt = _pyplot()
    c = calibration_bins(probs, labels, n_bins)
    cnt = np.bincount(c["bin"], minlength=n_bins)
    acc = np.divide(np.bincount(c["bin"], c["correct"], n_bins), cnt, out=np.full(n_bins, np.nan), where=cnt > 0)
    conf = np.divide(np.bincount(c["bin"], c["confidence"], n_bins), cnt, out=np.full(n_bins, np.nan), where=cnt > 0)
    centers = (np.arange(n_bins) + 0.5) / n_bins
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    ax.bar(centers, np.nan_to_num(acc), width=1 / n_bins, edgecolor="k", alpha=0.7, label="accuracy in bin")
    ax.plot(conf, acc, "r.", label="mean confidence in bin")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    for x, a, k in zip(centers, acc, cnt):
        if k:
            ax.text(x, min(a, 0.93) + 0.02, str(int(k)), ha="center", fontsize=6)
    ax.set_xlim(0, 1), ax.set_ylim(0, 1.05)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig
