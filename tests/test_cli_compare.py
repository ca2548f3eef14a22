"""``reslim compare DIR1 DIR2 ...``: fits of several stores side by side, one-line errors."""

from __future__ import annotations

import csv
import io

import pytest

from _cli import invoke, one_line_error
from reslim.experiments import Store, load_spec, run_sweep

TINY = ["depths=[2,4,8]", "seeds=2", "train.steps=3", "data.n_train=48", "analysis.n_boot=20"]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Two tiny gia-gap stores (widths 4 and 6) and a store of another kind (spec only)."""
    root = tmp_path_factory.mktemp("compare")
    for name, width in (("w4", 4), ("w6", 6)):
        run_sweep(load_spec("gia-gap", [*TINY, f"width={width}"]), root / name, progress=False)
    with Store(root / "conv") as store:
        store.set_meta("spec", load_spec("convergence").config())
    return root


def _fits(root, name):
    from reslim._src.cli.compare import fit_rows
    from reslim._src.experiments.registry import get_experiment
    from reslim._src.experiments.spec import validate_spec

    with Store(root / name, create=False) as store:
        spec = validate_spec(store.get_meta("spec"))
        kind = get_experiment(spec.kind)
        view = store.only(r.key for r in kind.expand(spec))
        return {r["fit"]: r for r in fit_rows(kind.analyse(spec, view))}


def test_table_has_one_row_per_fit_and_one_column_per_store(stores, capsys):
    code, out, err = invoke(capsys, ["compare", str(stores / "w4"), str(stores / "w6")])
    assert code == 0, err
    assert "w4" in out and "w6" in out and "fitted exponents (gia-gap)" in out
    w4, w6 = _fits(stores, "w4"), _fits(stores, "w6")
    assert set(w4) == set(w6) and "depth-mup loss_gap" in w4 and "mup output_gap" in w4
    for name in w4:
        line = next(ln for ln in out.splitlines() if f" {name} " in ln)
        r4, r6 = w4[name], w6[name]
        assert f"{r4['value']:+.3f} [{r4['low']:+.3f}, {r4['high']:+.3f}]" in line
        assert f"{r6['value']:+.3f} [{r6['low']:+.3f}, {r6['high']:+.3f}]" in line
    assert "no verdicts" in out  # the depth kinds' fits have no theory exponent


def test_csv_and_markdown(stores, capsys):
    code, out, err = invoke(capsys, ["compare", str(stores / "w4"), str(stores / "w6"), "--format", "csv"])
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    w4 = _fits(stores, "w4")
    assert [r["fit"] for r in rows] == list(w4)
    assert {"w4 value", "w4 low", "w4 high", "w4 verdict", "w6 value"} <= set(rows[0])
    for r in rows:
        assert float(r["w4 value"]) == pytest.approx(w4[r["fit"]]["value"], rel=1e-12)
    code, out, err = invoke(capsys, ["compare", str(stores / "w4"), str(stores / "w6"),
                                     "--format", "markdown"])
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "| fit | w4 | w6 |" and lines[1] == "|---|---|---|"
    assert len(lines) == 2 + len(w4)


def test_verdicts_against_theory():
    import pandas as pd

    from reslim._src.cli.compare import _cell, fit_rows

    fits = pd.DataFrame([
        {"error": "output", "against": "M", "held at": "L=10, D=8", "fit": "log-log", "exponent": -0.29,
         "CI low": -0.53, "CI high": -0.11, "theory": -1.0},
        {"error": "output", "against": "D", "held at": "L=10, M=8", "fit": "log-log", "exponent": -0.45,
         "CI low": -0.6, "CI high": -0.3, "theory": "-1/2"},
    ])
    rows = fit_rows(type("A", (), {"fits": fits})())
    assert [r["fit"] for r in rows] == ["output vs M (L=10, D=8)", "output vs D (L=10, M=8)"]
    assert [r["verdict"] for r in rows] == ["inconsistent", "consistent"]
    assert _cell(rows[0]) == "-0.290 [-0.530, -0.110] inconsistent"
    verdicts = pd.DataFrame([{"dataset": "digits", "param": "mlu", "width": 16, "drift": 0.1,
                              "transfers": True}])
    (t,) = fit_rows({"verdicts": verdicts})
    assert t["fit"] == "digits W=16 mlu lr drift" and t["verdict"] == "transfers"


def test_rows_of_the_newer_kinds_are_named_and_never_merged():
    import pandas as pd

    from reslim._src.cli.compare import fit_rows

    # transformer-convergence and nfd name their fits by sweep (and mode)
    fits = pd.DataFrame([{"sweep": s, "variable": v, "exponent": -0.5, "CI low": -0.6, "CI high": -0.4,
                          "theory": "-1/2"} for s, v in (("M", "M"), ("D", "D"))])
    assert [r["fit"] for r in fit_rows({"fits": fits})] == ["M", "D"]
    nfd = pd.DataFrame([{"dataset": "digits", "sweep": "width", "param": "depth-mup", "mode": m,
                         "exponent": -0.45, "CI low": -0.5, "CI high": -0.4, "theory": "-1/2"}
                        for m in ("ordinary", "gia")])
    assert [r["fit"] for r in fit_rows({"fits": nfd})] == ["digits width depth-mup ordinary",
                                                           "digits width depth-mup gia"]
    # rows no name column tells apart are both kept
    twin = pd.DataFrame([{"exponent": e, "CI low": e - 0.1, "CI high": e + 0.1} for e in (-1.0, -0.5)])
    assert [r["value"] for r in fit_rows({"fits": twin})] == [-1.0, -0.5]
    # mean-field: paired differences to plain training, with the kind's own verdict
    paired = pd.DataFrame([{"arch": "resnet", "scheme": "random-reorder", "diff (points)": -0.35,
                            "CI low": -1.6, "CI high": 0.9, "at 95%": "no difference"}])
    (r,) = fit_rows({"paired": paired})
    assert r["fit"] == "resnet random-reorder" and r["verdict"] == "no difference" and r["value"] == -0.35


def test_errors_are_one_line_exit_2(stores, tmp_path, capsys):
    w4 = str(stores / "w4")
    one_line_error(*invoke(capsys, ["compare", w4, str(tmp_path / "missing")]), "missing",
                   "no such directory")
    one_line_error(*invoke(capsys, ["compare", w4, str(tmp_path)]), "holds no results store")
    (tmp_path / "file").write_text("x")
    one_line_error(*invoke(capsys, ["compare", w4, str(tmp_path / "file")]), "not a directory")
    one_line_error(*invoke(capsys, ["compare", w4, str(stores / "conv")]),
                   "different experiment kinds", "w4 is gia-gap", "conv is convergence")
    one_line_error(*invoke(capsys, ["compare", w4]), "two or more")
    one_line_error(*invoke(capsys, ["compare", w4, w4, "--format", "xml"]), "--format",
                   "table, csv, markdown")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.sqlite").write_bytes(b"not a database" * 100)
    one_line_error(*invoke(capsys, ["compare", w4, str(bad)]), "bad")


def test_help_lists_the_formats(capsys):
    code, out, _ = invoke(capsys, ["compare", "-h"])
    assert code == 0 and "table|csv|markdown" in out and "side by side" in out
