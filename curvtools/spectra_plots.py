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
    """Save ``fig`` to ``path`` (.png/.pdf/.svg by suffix) and free it; the saved area holds
    every label and title (``bbox_inches="tight"``)."""
    fig.savefig(path, dpi=150, bbox_inches="tight")
    _pyplot().close(fig)


def fit_title(ax, title: str, fontsize: float = 10) -> None:
    """Set ``title`` so that it fits the figure's width: on one line when it does, else broken
    at the ``", "`` or ``": "`` nearest its middle (never inside a name or a number), else in a
    smaller font."""
    fig = ax.figure
    ax.set_title(title, fontsize=fontsize)
    room = fig.get_window_extent().width * 0.98
    renderer = fig.canvas.get_renderer()
    if ax.title.get_window_extent(renderer).width <= room:
        return
    cuts = [i + len(sep) for sep in (", ", ": ") for i in range(len(title))
            if title.startswith(sep, i)]
    if cuts:
        cut = min(cuts, key=lambda i: abs(i - len(title) / 2))
        ax.set_title(title[:cut].rstrip() + "\n" + title[cut:], fontsize=fontsize)
    while ax.title.get_window_extent(renderer).width > room and fontsize > 6:
        fontsize -= 0.5
        ax.title.set_fontsize(fontsize)


def _visible(values) -> bool:
    """True when a series has a finite value (a legend entry would otherwise be empty)."""
    import numpy as np

    return bool(np.isfinite(np.asarray(values, float)).any())


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
    fit_title(ax, title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[1]:
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

        for (low, high), alpha in (((0.05, 0.95), 0.12), ((0.25, 0.75), 0.28)):
            lo, hi = column(quantile_key(low)), column(quantile_key(high))
            if _visible(hi - lo) and np.nanmax(hi - lo) > 0:  # a band of zero width: no entry
                ax.fill_between(epochs, lo, hi, color="tab:red", alpha=alpha, linewidth=0,
                                label=f"{100 * low:.0f}-{100 * high:.0f}% of examples")
        if _visible(column("median")):
            ax.plot(epochs, column("median"), color="tab:red", marker="o", label="median")
        if _visible(column("mean")):
            ax.plot(epochs, column("mean"), color="black", marker="s", linestyle="--",
                    markersize=4, label="mean")
        shown = np.concatenate([column(k) for k in ("mean", "median", quantile_key(0.05),
                                                    quantile_key(0.95))])
        shown = shown[np.isfinite(shown)]
        ax.set_xlim(epochs.min() - 0.5, epochs.max() + 0.5)
        if shown.size:
            pad = 0.05 * (shown.max() - shown.min()) or 0.05 * max(abs(shown.max()), 1.0)
            ax.set_ylim(shown.min() - pad, shown.max() + pad)
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlabel("epoch")
    ax.set_ylabel(r"largest eigenvalue $\lambda_{max}$ of the input Hessian")
    fit_title(ax, title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
