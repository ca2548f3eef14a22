"""Reports: the spec collapsed at the end, verdicts of fitted exponents against theory, titled and
labelled figures, and the analysis cache (a rerun with nothing new does not refit)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from reslim._src.experiments.reporting import CACHE_FILE, write_report
from reslim._src.experiments.spec import load_spec
from reslim._src.experiments.sweep import run_experiment
from reslim._src.report import figures
from reslim._src.report.report import (
    Section,
    render_html,
    render_markdown,
    verdict,
    verdict_note,
    with_verdicts,
)

TINY = ["grid.L=[2]", "grid.M=[2,8]", "grid.D=[2,4]", "repetitions=1", "train.steps=3", "analysis.n_boot=10",
        "reference={kind='network', shape=[2,8,4]}"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("polish") / "D"
    run_experiment(load_spec("convergence", TINY), out, progress=False)
    return out



def _capture_savefig(monkeypatch) -> list:
    """Every matplotlib Figure saved from now on, in order (the figure objects themselves)."""
    from matplotlib.figure import Figure

    saved = []
    original = Figure.savefig

    def capture(self, *a, **k):
        saved.append(self)
        return original(self, *a, **k)

    monkeypatch.setattr(Figure, "savefig", capture)
    return saved

def test_spec_is_collapsed_at_the_end(tiny):
    page = (tiny / "report.html").read_text()
    assert page.count("<details>") == 1
    details = page.index("<details>")
    assert details > page.rindex("<h2>")  # after the last section heading: the report's end
    assert 'name = &quot;' in page[details:]  # the TOML spec is inside it
    assert "<pre>" not in page[:details]  # no spec dump near the top
    md = (tiny / "report.md").read_text()
    assert md.rindex("## Spec") > md.index("## Overview")
    assert re.findall(r"^## .*", md, re.M)[-1] == "## Spec"


def test_tables_scroll_and_text_left_aligned(tiny):
    page = (tiny / "report.html").read_text()
    assert '<div class="table-wrap"><table>' in page
    assert ".table-wrap{overflow-x:auto" in page
    assert '<td class="text">' in page


def test_verdict_flags_an_inconsistent_exponent():
    assert verdict(-1.0, -0.528, -0.113) == "inconsistent"
    assert verdict("-1/2", -0.6, -0.4) == "consistent"
    assert verdict(float("nan"), -1, 0) == ""
    assert "INCONSISTENT" in verdict_note(-1.0, -0.528, -0.113)
    assert "docs/experiments.md#" in verdict_note(-1.0, -0.528, -0.113)
    df = pd.DataFrame([{"error": "output", "against": "M", "exponent": -0.294, "CI low": -0.528,
                        "CI high": -0.113, "theory": -1.0},
                       {"error": "output", "against": "D", "exponent": -0.49, "CI low": -0.6,
                        "CI high": -0.4, "theory": -0.5}])
    assert list(with_verdicts(df)["verdict"]) == ["inconsistent", "consistent"]
    sec = Section("Fits", tables=[("fits", df)])
    page = render_html("t", [sec])
    assert '<td class="text inconsistent"><a href="docs/experiments.md#' in page
    assert "| inconsistent |" in render_markdown("t", [sec], base=None)


def test_report_fit_table_has_a_verdict_column(tiny):
    md = (tiny / "report.md").read_text()
    header = next(line for line in md.splitlines() if "| exponent |" in line and "| theory |" in line)
    assert header.rstrip().endswith("| verdict |")


def test_figures_have_titles_and_axis_labels():
    rng = np.random.default_rng(0)
    rows = [{"L": 4, "M": M, "D": D, "P": 4 * M * D, "rms": float(rng.uniform(0.1, 1))}
            for M in (2, 4, 8) for D in (2, 4)]
    agg = pd.DataFrame(rows)
    made = [figures.error_vs_axis(agg, "M", "D", {"L": 4}, "error"),
            figures.error_vs_P(agg, "error", guides={"P^-1/6": (1.0, -1 / 6)}),
            figures.losses([("a", np.linspace(1, 0.1, 5), 16.0), ("b", np.linspace(1, 0.2, 5), 64.0)],
                           np.linspace(1, 0.05, 5))]
    try:
        for fig in made:
            ax = fig.axes[0]
            assert ax.get_title(), fig
            assert ax.get_xlabel() and ax.get_ylabel(), fig
    finally:
        import matplotlib.pyplot as plt

        for fig in made:
            plt.close(fig)


def test_cached_rerun_does_not_analyse(tiny, monkeypatch):
    from reslim._src.experiments.registry import get_experiment

    assert (tiny / CACHE_FILE).is_file()
    first = write_report(tiny)  # the fixture's report: cached
    kind = type(get_experiment("convergence"))
    calls = []
    original = kind.analyse

    def counting(self, *a, **k):
        calls.append(1)
        return original(self, *a, **k)

    monkeypatch.setattr(kind, "analyse", counting)
    again = write_report(tiny)
    assert calls == [] and again.analysis is None and again.summary == first.summary
    (tiny / CACHE_FILE).write_text('{"key": "stale", "summary": []}')  # a changed store: recomputed
    fresh = write_report(tiny)
    assert calls == [1] and fresh.analysis is not None and fresh.summary == first.summary


def test_depth_figures_titled_labelled_guided_and_finite():
    import matplotlib.pyplot as plt

    from reslim._src.report.depth import plot_vs_depth

    rows = [{"optimizer": "sgd", "correction": 0.0, "L": L, "seed": s,
             "dp_own": (np.inf if (L == 8 and s == 1) else L ** -0.5), "dh": 1.0}
            for L in (2, 4, 8) for s in (0, 1)]
    fig = plot_vs_depth(pd.DataFrame(rows), ["dp_own", "dh"], ["optimizer", "correction"],
                        guides={"dp_own": [(-0.5, "L^-1/2")]})
    try:
        assert fig._suptitle is not None and fig._suptitle.get_text()
        for ax in fig.axes:
            assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
        labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert "optimizer sgd, correction 0" in labels and "L^-1/2" in labels
        for coll in fig.axes[0].collections:  # the min-max band stays finite (diverged seed left out)
            for path in coll.get_paths():
                assert np.isfinite(path.vertices).all()
    finally:
        plt.close(fig)


def test_coord_check_figure_has_y_and_one_colour_per_position(tmp_path, monkeypatch):

    from reslim.diagnostics import coord_check, plot_coord_check

    df = coord_check("depth-mup", "L", (2, 4), base=(2, 8, 6), steps=1, seeds=(0,), block="one-layer")
    saved = _capture_savefig(monkeypatch)
    plot_coord_check(df, str(tmp_path / "cc.png"))
    (fig,) = saved
    assert fig._suptitle is not None and fig._suptitle.get_text()
    titles = [ax.get_title() for ax in fig.axes]
    assert "y" in titles
    colours: dict[str, set] = {}
    for ax in fig.axes:
        assert ax.get_title() and ax.get_xlabel()
        for line in ax.get_lines():
            pos = line.get_label().split(" (")[0]
            colours.setdefault(pos, set()).add(line.get_color() if isinstance(line.get_color(), str)
                                               else tuple(line.get_color()))
    assert colours and all(len(c) == 1 for c in colours.values())


def test_phase_diagram_legend_sits_outside_the_map(tmp_path, monkeypatch):

    from reslim.diagnostics import phase_diagram, plot_phase_diagram

    grid = phase_diagram("L", "M", (-1.5, -1.0), (-1.0,), axes=("L",), base=(8, 128, 64), steps=1,
                         seeds=(0,), sizes={"L": (4, 8, 16), "M": (64, 128, 256), "D": (32, 64, 128)})
    saved = _capture_savefig(monkeypatch)
    plot_phase_diagram([grid], str(tmp_path / "p.png"))
    (fig,) = saved
    ax = fig.axes[0]
    assert ax.get_legend() is None and fig.legends  # a figure legend, not one drawn over the cells
    fig.canvas.draw()
    box, cells = fig.legends[0].get_window_extent(), ax.get_window_extent()
    assert box.y1 <= cells.y0  # below the map
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
