"""Input gaps (issue 13): every bad input is a one-line error naming the option or field, exit
code 2, raised before anything is computed or written."""

from __future__ import annotations

import time

import pytest

import reslim.cli  # noqa: F401  (registers commands)
from _cli import invoke as _invoke
from _cli import one_line_error as _one_line
from reslim.experiments import SpecError, load_spec

PROBE = 'kind = "probe"\nname = "p"\nruns = 2\nwork = 1\nsize = 4\n'


@pytest.mark.parametrize("argv, option", [
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--lr", "0"], "--lr"),
    (["--lr", "-1"], "--lr"),
    (["--d-in", "0"], "--d-in"),
    (["--d-out", "-3"], "--d-out"),
])
def test_describe_rejects_bad_numbers(capsys, argv, option):
    res = _invoke(capsys, ["describe", "--param", "mlu", "--shape", "2,3,4", *argv])
    _one_line(*res, option)


@pytest.mark.parametrize("override, field", [
    ("repetitions=true", "repetitions"),
    ('train.lr="0.5"', "train.lr"),
    ("train.lr=true", "train.lr"),
    ("train.steps=2.0", "train.steps"),
    ('grid.M=[2, "4"]', "grid.M.1"),
    ("store_h_last=1", "store_h_last"),
    ('reference={kind="network", shape=[4, true, 256]}', "reference.network.shape.1"),
])
def test_strict_spec_fields_are_not_coerced(override, field):
    with pytest.raises(SpecError) as err:
        load_spec("convergence", [override])
    assert str(err.value).startswith(f"{field}: "), str(err.value)


def test_strict_spec_fields_from_a_toml_file(capsys, tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text('kind = "convergence"\nname = "s"\nrepetitions = true\n'
                    'reference = { kind = "network", shape = [2, 8, 8] }\n'
                    '[grid]\nL = [2]\nM = [2]\nD = [2]\n')
    out = tmp_path / "out"
    _one_line(*_invoke(capsys, ["run", str(spec), "--out", str(out)]), "repetitions:")
    assert not out.exists()


def test_integers_still_fill_float_fields_and_arrays_fill_tuples():
    s = load_spec("convergence", ["train.lr=1", "max_task_mb=64",
                                  'reference={kind="network", shape=[10, 64, 256]}'])
    assert s.train.lr == 1.0 and isinstance(s.train.lr, float) and s.max_task_mb == 64.0
    assert s.reference.shape == (10, 64, 256)
    again = load_spec(s.config())  # the stored (JSON) form validates to the same spec
    assert again == s
    base = load_spec("convergence")
    assert load_spec("convergence", ["train.lr=1"]).config() == base.config()  # same keys as 1.0


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../x"])
def test_spec_names_that_are_not_a_folder_of_their_own(name):
    with pytest.raises(SpecError, match="^name: "):
        load_spec("convergence", [f'name="{name}"'])


def test_empty_out_is_refused_before_anything_is_written(capsys, tmp_path, monkeypatch):
    spec = tmp_path / "probe.toml"
    spec.write_text(PROBE)
    monkeypatch.chdir(tmp_path)
    _one_line(*_invoke(capsys, ["run", str(spec), "--out", "", "--no-progress"]), "--out")
    _one_line(*_invoke(capsys, ["run", str(spec), "--out", "  ", "--no-progress"]), "--out")
    _one_line(*_invoke(capsys, ["run", str(spec), "--set", 'name=".."', "--no-progress"]), "name:")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probe.toml"]


def test_non_utf8_spec_file_names_the_file(capsys, tmp_path):
    spec = tmp_path / "latin1.toml"
    spec.write_bytes('kind = "convergence"\nname = "café"\n'.encode("latin-1"))
    out = tmp_path / "out"
    _one_line(*_invoke(capsys, ["run", str(spec), "--out", str(out)]), str(spec), "UTF-8")
    assert not out.exists()


def test_coord_check_out_is_checked_before_the_work(capsys, tmp_path, monkeypatch):
    import reslim._src.diagnostics.coord_check as cc

    def never(*a, **k):
        raise AssertionError("computed before the output folder was checked")

    monkeypatch.setattr(cc, "coord_check", never)
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    _one_line(*_invoke(capsys, ["coord-check", "--out", str(afile)]), "--out", "not a directory")
    _one_line(*_invoke(capsys, ["coord-check", "--out", ""]), "--out")
    _one_line(*_invoke(capsys, ["coord-check", "--all-presets", "--table", str(tmp_path)]), "--table")
    _one_line(*_invoke(capsys, ["coord-check", "--all-presets", "--table", str(afile / "t.md")]),
              "--table")
    assert afile.read_text() == "keep me"


def test_phase_diagram_out_is_checked_before_the_work(capsys, tmp_path, monkeypatch):
    import reslim._src.diagnostics.phase as ph

    def never(*a, **k):
        raise AssertionError("computed before the output folder was checked")

    monkeypatch.setattr(ph, "phase_diagram", never)
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    t0 = time.perf_counter()
    for out in (str(afile), str(afile / "sub"), ""):
        _one_line(*_invoke(capsys, ["phase-diagram", "--out", out]), "--out")
    assert time.perf_counter() - t0 < 30
    assert afile.read_text() == "keep me"


def test_a_folder_named_like_a_builtin_spec_does_not_hide_it(tmp_path, monkeypatch):
    """`reslim run nfd` in a folder holding a directory `nfd/` (a previous --out, say) runs the
    built-in spec; a folder that is no built-in name is a one-line error saying it is a folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "deep-linear").mkdir()
    assert load_spec("deep-linear").kind == "deep-linear"
    (tmp_path / "not-a-spec").mkdir()
    with pytest.raises(SpecError, match="not-a-spec is a directory, not a .toml file"):
        load_spec("not-a-spec")
    with pytest.raises(SpecError, match="missing.toml does not exist"):
        load_spec("missing.toml")
