"""Figures of input-Hessian spectra: the per-example histogram of one checkpoint and lambda_max
over a run's checkpoints (Figure 3). Builders return the matplotlib Figure (tests read its data);
:func:`save` writes and closes it. matplotlib (Agg) is imported on first use.

Example::

    >>> fig = curve_figure(rows, "silu run: lambda_max over training")
    >>> save(fig, Path("curve.png"))
"""

from __future__ import annotations

from pathlib import Path

from curvtools.spectra_report import quantile_key


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> None:
    """Save ``fig`` to ``path`` (.png/.pdf/.svg by suffix) and free it."""
    fig.savefig(path, dpi=150)
    _pyplot().close(fig)


def histogram_figure(lambda_max, lambda_min, title: str, bins: int = 40):
    """Overlaid histograms of lambda_max and lambda_min ([n] each) on ONE set of bin edges, so
    that bar widths compare (non-finite values are left out)."""
    import numpy as np

    plt = _pyplot()
    series = {}
    for key, values in (("lambda_max", lambda_max), ("lambda_min", lambda_min)):
        v = np.asarray(values, float)
        series[key] = v[np.isfinite(v)]
    both = np.concatenate(list(series.values()))
    edges = np.histogram_bin_edges(both, bins=bins) if both.size else np.linspace(0, 1, bins + 1)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for (key, values), color in zip(series.items(), ("tab:red", "tab:blue"), strict=True):
        if values.size:
            ax.hist(values, bins=edges, alpha=0.55, color=color, edgecolor="white",
                    linewidth=0.4, label=f"{key} (median {np.median(values):.3g})")
    ax.set_xlabel("eigenvalue of the input Hessian")
    ax.set_ylabel("test examples")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def curve_figure(rows: list[dict], title: str):
    """Mean and median lambda_max per epoch with the 25-75% and 5-95% bands of the examples.

    ``rows``: ``{"epoch": int, "summary": spectra_summary(...)}`` per checkpoint (rows without
    an epoch are left out). x ticks are whole epochs; the limits hold every plotted point.
    """
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    points = sorted((r["epoch"], r["summary"]["lambda_max"]) for r in rows
                    if r.get("epoch") is not None)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if points:
        epochs = np.array([e for e, _ in points], float)

        def column(key: str):
            return np.array([s[key] for _, s in points], float)

        ax.fill_between(epochs, column(quantile_key(0.05)), column(quantile_key(0.95)),
                        color="tab:red", alpha=0.12, linewidth=0, label="5-95% of examples")
        ax.fill_between(epochs, column(quantile_key(0.25)), column(quantile_key(0.75)),
                        color="tab:red", alpha=0.28, linewidth=0, label="25-75% of examples")
        ax.plot(epochs, column("median"), color="tab:red", marker="o", label="median")
        ax.plot(epochs, column("mean"), color="black", marker="s", linestyle="--",
                markersize=4, label="mean")
        shown = np.concatenate([column(k) for k in ("mean", "median", quantile_key(0.05),
                                                    quantile_key(0.95))])
        shown = shown[np.isfinite(shown)]
        ax.set_xlim(epochs.min() - 0.5, epochs.max() + 0.5)
        if shown.size:
            pad = 0.05 * (shown.max() - shown.min()) or 0.05 * max(abs(shown.max()), 1.0)
            ax.set_ylim(shown.min() - pad, shown.max() + pad)
        ax.legend(fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(r"largest eigenvalue $\lambda_{max}$ of the input Hessian")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
