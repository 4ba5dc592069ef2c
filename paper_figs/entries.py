"""The list of the paper's figures and tables, and rendering all of them from run directories.

Each entry reads run directories (files only) and writes into the output folder; an entry whose
runs are all missing renders nothing and the missing runs are reported, never raised.

Example::

    >>> report = render_all(Context(Path("runs"), Path("docs/figures"), scale="mini"))
    >>> [r.name for r in report if r.outputs]
    ['fig2', 'fig5', 'fig6', 'table1']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from paper_figs.curves import figure1, figure4
from paper_figs.hessian import figure3
from paper_figs.runsets import Context
from paper_figs.shapes import Unavailable, shape_figure
from paper_figs.synthesis import ANALYSES
from paper_figs.synthesis_render import synthesis
from paper_figs.tables import render_table
from paper_figs.width import figure7


@dataclass(frozen=True)
class Entry:
    """One figure or table: its name, what it shows, which specs feed it, how to draw it."""

    name: str
    title: str
    specs: tuple[str, ...]
    render: Callable[[Context], list[Path]]


ENTRIES: tuple[Entry, ...] = (
    Entry("fig1", "robust test loss vs epoch, ReLU vs SiLU", ("table1-cifar10",), figure1),
    Entry("fig2", "activations with f' and f''", (), partial(shape_figure, name="fig2")),
    Entry("fig3", "input-Hessian lambda_max vs epoch, every activation with data",
          ("table1-cifar10",),
          figure3),
    Entry("fig4", "learning curves per activation (error and loss)", ("table1-cifar10",),
          figure4),
    Entry("fig5", "PSwish shapes for beta 0.5..10", (), partial(shape_figure, name="fig5")),
    Entry("fig6", "LeakyReLU shapes for k 0.5..-0.2", (), partial(shape_figure, name="fig6")),
    Entry("fig7", "robust error vs WRN width, ReLU vs SiLU", ("fig7-width",), figure7),
    Entry("table1", "activations on CIFAR-10/100", ("table1-cifar10", "table1-cifar100"),
          partial(render_table, name="table1")),
    Entry("table2", "PSwish beta", ("table2-pswish",), partial(render_table, name="table2")),
    Entry("table3", "LeakyReLU k", ("table3-leakyrelu",), partial(render_table, name="table3")),
    Entry("synthesis", "gap vs curvature: pre-registered trend and interior-peak tests",
          tuple(ANALYSES), synthesis),
)


@dataclass
class EntryResult:
    """What one entry produced and what it lacked."""

    name: str
    title: str
    outputs: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unavailable: str = ""
    error: str = ""
    notes: list[str] = field(default_factory=list)  # stale inputs, missing manifests, checks


def render_all(ctx: Context, only: list[str] | None = None) -> list[EntryResult]:
    """Render every entry (or the ``only`` ones) the runs allow.

    Missing runs are listed in each result, never raised; an entry that fails for another reason
    records the error in ``EntryResult.error`` and the other entries still render.
    """
    results = []
    for entry in ENTRIES:
        if only and entry.name not in only:
            continue
        result = EntryResult(entry.name, entry.title)
        ctx.missing.pop(entry.name, None)  # rendering twice must not list runs twice
        ctx.notes.pop(entry.name, None)
        try:
            result.outputs = entry.render(ctx)
        except Unavailable as err:
            result.unavailable = str(err)
        except Exception as err:  # one broken entry must not stop the others; it is reported
            result.error = f"{type(err).__name__}: {err}"
        result.missing = ctx.missing.get(entry.name, [])
        result.notes = [*ctx.notes.get(entry.name, []), *ctx.notes.get(entry.name + ":scale", [])]
        results.append(result)
    return results
