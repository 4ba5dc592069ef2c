"""Checks a figure must pass before it goes into a paper: nothing plotted outside the axes,
whole-number epoch ticks. Tests call :func:`axes_problems`; :func:`paper_figs.output.save_figure`
reports any problem as a note in the output instead of saving a figure that silently cuts data.

A zoom is declared, never silent: :func:`declare_zoom` marks an axes whose y range is fitted to
the epochs from ``from_x`` on (the overfitting region); there, and only there, earlier points may
lie outside, and the check still holds every later point to the axes.
"""

from __future__ import annotations

import math

import numpy as np

_ZOOM = "_paper_figs_zoom_from"


def declare_zoom(ax, from_x: float) -> None:
    """Mark ``ax`` as a declared zoom: points at x < ``from_x`` may lie outside its y range."""
    setattr(ax, _ZOOM, float(from_x))


def drawn_points(ax) -> np.ndarray:
    """Every finite data point drawn on ``ax`` [n, 2] (lines, scatter points, bands)."""
    return _points(ax)


def _points(ax) -> np.ndarray:
    """Every finite data point drawn on ``ax`` (lines, scatter points, filled bands)."""
    chunks = []
    for line in ax.get_lines():
        if not line.get_visible() or line.get_transform() != ax.transData:
            continue  # a reference line in axes units (axvline) spans the axes by design
        x = np.asarray(line.get_xdata(), dtype=float)
        y = np.asarray(line.get_ydata(), dtype=float)
        if x.size and x.shape == y.shape:
            chunks.append(np.column_stack([x, y]))
    for coll in ax.collections:
        if not coll.get_visible():
            continue
        offsets = np.asarray(coll.get_offsets(), dtype=float)
        if offsets.ndim == 2 and offsets.shape[1] == 2 and len(offsets) and \
                coll.get_offset_transform() == ax.transData:
            chunks.append(offsets)
        for path in getattr(coll, "get_paths", lambda: [])():
            if len(path.vertices) and coll.get_transform() == ax.transData:
                chunks.append(np.asarray(path.vertices, dtype=float))
    for patch in ax.patches:  # bars
        bbox = patch.get_bbox()
        if patch.get_transform() == ax.transData:
            chunks.append(np.array([[bbox.x0, bbox.y0], [bbox.x1, bbox.y1]]))
    if not chunks:
        return np.zeros((0, 2))
    pts = np.concatenate(chunks)
    return pts[np.isfinite(pts).all(axis=1)]


def axes_problems(fig) -> list[str]:
    """Problems of ``fig``: data outside an axes' limits; non-integer ticks on an epoch axis."""
    problems = []
    fig.canvas.draw()
    for i, ax in enumerate(fig.axes):
        name = ax.get_title() or ax.get_title(loc="left").split("\n")[0] or f"axes {i}"
        pts = _points(ax)
        zoom = getattr(ax, _ZOOM, None)
        if zoom is not None:  # the earlier epochs may run off a declared zoom, no later ones
            pts = pts[pts[:, 0] >= zoom]
        (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
        tol_x, tol_y = 1e-9 * max(1.0, abs(x1 - x0)), 1e-9 * max(1.0, abs(y1 - y0))
        if len(pts):
            outside = ((pts[:, 0] < x0 - tol_x) | (pts[:, 0] > x1 + tol_x)
                       | (pts[:, 1] < y0 - tol_y) | (pts[:, 1] > y1 + tol_y))
            if outside.any():
                x, y = pts[outside][0]
                problems.append(f"{name}: {int(outside.sum())} points outside the axes, e.g. "
                                f"({x:g}, {y:g}) vs x {x0:g}..{x1:g}, y {y0:g}..{y1:g}")
        if "epoch" in ax.get_xlabel().lower():
            ticks = [t for t in ax.get_xticks() if x0 - tol_x <= t <= x1 + tol_x]
            frac = [t for t in ticks if not math.isclose(t, round(t), abs_tol=1e-9)]
            if frac:
                problems.append(f"{name}: fractional epoch ticks {frac}")
    return problems
