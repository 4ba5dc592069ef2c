"""curvtools' own figures: Figure 2 keeps every activation visible; `curvtools hessian --plot`
titles fit the figure and its legend names only what is drawn."""

from __future__ import annotations

import numpy as np

from curvtools.activations import resolve


def test_fig2_draws_a_curve_that_would_hide_an_earlier_one_as_a_named_thin_overlay():
    from curvtools.figures import activation_figure

    fig = activation_figure([resolve("relu"), resolve("leakyrelu", k=0.01),
                             resolve("leakyrelu", k=0.3)])
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()
             if not ln.get_label().startswith("_")}
    assert set(lines) == {"relu", "leakyrelu(k=0.01) (~ relu)", "leakyrelu(k=0.3)"}
    relu, near = lines["relu"], lines["leakyrelu(k=0.01) (~ relu)"]
    assert relu.get_linestyle() == "-" and near.get_linestyle() == "--"
    assert near.get_linewidth() < relu.get_linewidth() and near.get_zorder() > relu.get_zorder()
    assert lines["leakyrelu(k=0.3)"].get_linestyle() != "--"  # visibly different: own style


def test_hessian_histogram_title_fits_the_figure_without_breaking_a_name(tmp_path):
    from curvtools.spectra_plots import histogram_figure, save

    title = ("pswish(beta=0.5): epoch_0010.pt (epoch 10), input-Hessian eigenvalues of 256 "
             "test examples")
    fig = histogram_figure(np.linspace(0, 1, 50), -np.linspace(0, 1, 50), title)
    fig.canvas.draw()
    box = fig.axes[0].title.get_window_extent(fig.canvas.get_renderer())
    width = fig.get_window_extent().width
    assert 0 <= box.x0 and box.x1 <= width
    text = fig.axes[0].get_title()
    assert "\n" in text and text.replace("\n", " ") == title  # broken after a comma only
    assert "256 test" in text and "epoch_0010.pt" in text
    save(fig, tmp_path / "h.png")


def test_hessian_curve_legend_names_only_what_is_drawn():
    from curvtools.spectra_plots import curve_figure
    from curvtools.spectra_report import spectra_summary

    one = [{"epoch": e, "summary": spectra_summary([float(e)], [-0.1], [True], [5])}
           for e in (1, 2, 3)]  # one example: every quantile equal, bands of zero width
    fig = curve_figure(one, "one example")
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels == ["median", "mean"]
    nan = [{"epoch": e, "summary": spectra_summary([], [], [], [0])} for e in (1, 2)]
    fig = curve_figure(nan, "no finite value")
    assert fig.axes[0].get_legend() is None
