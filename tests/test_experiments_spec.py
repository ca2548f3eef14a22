"""Specs: validation errors (one line, exit code 2, nothing written) and --set overrides."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import reslim.cli  # noqa: F401  (registers commands)
from _cli import run_spec_text as _run
from reslim._src.cli.app import app
from reslim.experiments import ConvergenceSpec, SpecError, builtin_specs, load_spec

TINY = """
kind = "convergence"
name = "tiny"
repetitions = 1
reference = { kind = "network", shape = [2, 8, 8] }
[grid]
L = [2]
M = [2, 4]
D = [2, 8]
[train]
steps = 2
"""


BAD = [
    ("negative size", TINY.replace("D = [2, 8]", "D = [-2, 8]"), "grid.D.0"),
    ("zero size", TINY.replace("M = [2, 4]", "M = [0, 4]"), "grid.M.0"),
    ("zero repetitions", TINY.replace("repetitions = 1", "repetitions = 0"), "repetitions"),
    ("zero reference size", TINY.replace("shape = [2, 8, 8]", "shape = [2, 0, 8]"),
     "reference.network.shape.1"),
    ("unknown parameterization", TINY + '[model.param]\nname = "nope"\n', "model.param.name"),
    ("unknown parameterization option",
     TINY + '[model.param]\nname = "mlu"\noptions = {bogus = 1}\n', "bogus"),
    ("unknown activation", TINY + '[model]\nactivation = "swish"\n', "model.activation"),
    ("missing field", TINY.replace("[grid]\nL = [2]", "[grid]"), "grid.L"),
    ("missing section", TINY.split("[grid]")[0], "grid"),
    ("unknown field", TINY.replace("repetitions = 1", "repetitions = 1\nrepetition = 3"), "repetition"),
    ("unknown nested field", TINY.replace("steps = 2", "steps = 2\nlearning_rate = 1"),
     "train.learning_rate"),
    ("non-positive lr", TINY.replace("steps = 2", "steps = 2\nlr = 0"), "train.lr"),
    ("malformed TOML", TINY.replace("D = [2, 8]", "D = [2, 8"), "malformed TOML"),
    ("unknown kind", TINY.replace('kind = "convergence"', 'kind = "nope"'), "kind"),
    ("reference too small", TINY.replace("shape = [2, 8, 8]", "shape = [2, 8, 4]"), "reference.shape"),
]


@pytest.mark.parametrize("name,text,field", BAD, ids=[b[0] for b in BAD])
def test_bad_spec_exits_2_with_one_line_and_writes_nothing(tmp_path, name, text, field):
    result, out = _run(tmp_path, text)
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error:") and field in lines[0], lines[0]
    assert not out.exists()


@pytest.mark.parametrize("extra,field", [
    (["--set", "grid.D=[4, -1]"], "grid.D.1"),
    (["--set", "nonsense=1"], "nonsense"),
    (["--set", "grid.D=[4,"], "grid.D"),
    (["--set", "grid"], "key=value"),
    (["--jobs", "0"], "--jobs"),
])
def test_bad_overrides_and_options(tmp_path, extra, field):
    result, out = _run(tmp_path, TINY, *extra)
    assert result.exit_code == 2, result.output
    assert field in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_unknown_builtin_name(tmp_path):
    result = CliRunner().invoke(app, ["run", "no-such-spec", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "unknown spec" in result.output
    assert not (tmp_path / "o").exists()


def test_out_is_a_file(tmp_path):
    (tmp_path / "out").write_text("x")
    result, _ = _run(tmp_path, TINY)
    assert result.exit_code == 2 and "not a directory" in result.output


def test_set_overrides_any_field():
    spec = load_spec("convergence", ["grid.D=[16,32,64]", "repetitions=2", "model.activation=relu",
                                     "reference={kind='network', shape=[10, 128, 64]}", "train.lr=0.5",
                                     "model.param.options.embed_init=1"])
    assert isinstance(spec, ConvergenceSpec)
    assert spec.grid.D == [16, 32, 64] and spec.repetitions == 2 and spec.train.lr == 0.5
    assert spec.model.activation == "relu" and spec.reference.shape == (10, 128, 64)
    assert spec.model.param.options["embed_init"] == 1
    assert spec.model.param.options["readout_init"] == "d_out^0.5"
    with pytest.raises(SpecError, match="grid.D"):
        load_spec("convergence", ["grid.D=[16,0]"])


def test_builtin_specs_validate_and_match_the_paper():
    assert {"convergence", "convergence-paper"} <= set(builtin_specs())
    quick = load_spec("convergence")
    paper = load_spec("convergence-paper")
    from reslim import log_grid

    assert paper.grid.L == [50] and paper.grid.M == paper.grid.D == log_grid(1.5, 2000, 20)
    assert paper.repetitions == 5 and paper.train.steps == 15 and paper.train.lr == 1.0
    assert paper.model.activation == "tanh" and paper.train.loss == "mean"
    assert (paper.data.N, paper.data.d_in, paper.data.d_out) == (10, 5, 5)
    assert paper.reference.shape == (50, 2000, 2000) and paper.runs == ["embedding", "output"]
    assert paper.model.param.options == {"embed_init": "d_in^-0.5", "readout_init": "d_out^0.5"}
    assert quick.kind == "convergence"
    assert (quick.reference.kind, quick.reference.name) == ("limit", "large-d")


NETWORK = "reference={kind='network', shape=[10, 4096, 256]}"  # the quick spec's default is the limit


def test_run_keys_are_config_hashes_and_batches_are_equal_shapes():
    from reslim.experiments import get_experiment, plan_tasks

    spec = load_spec("convergence",
                     ["grid.M=[2,4]", "grid.D=[2,4]", "repetitions=3", NETWORK])
    kind = get_experiment("convergence")
    runs = kind.expand(spec)
    assert len(runs) == 3 + 2 * 4 * 3 and len({r.key for r in runs}) == len(runs)
    assert [r.key for r in kind.expand(spec)] == [r.key for r in runs]  # deterministic
    other = kind.expand(load_spec("convergence", ["grid.M=[2,4]", "grid.D=[2,4]", "repetitions=3",
                                                  NETWORK, "train.lr=0.5"]))
    assert not ({r.key for r in other} & {r.key for r in runs})
    tasks = plan_tasks(runs, kind.module)
    assert len(tasks) == 1 + 2 * 4  # the references, then one task per (role, shape)
    for t in tasks:
        assert len({(r.config.get("role"), tuple(r.config.get("shape", ()))) for r in t.runs}) == 1
        assert len(t.runs) == 3
    assert tasks[0].runs[0].stage == 0
