"""The ``nfd`` experiment end to end on a tiny spec (a few seconds): runs, report sections,
figures, the stored results, a rerun that skips every run, and one-line spec errors."""

import numpy as np

TINY = ["widths=[16,32,64]", "width_depth=2", "depths=[2,4,8]", "depth_width=32", "repetitions=2",
        "joint_depths=[1,2]", "joint_width=8",
        'datasets=[{kind="synthetic", P=4, P_test=4}, {kind="digits", P=4, P_test=0}]', "train.steps=3",
        "nfd.L=8", "nfd.particles=256", "nfd.replicas=2", "analysis.n_boot=20"]


def test_nfd_experiment_end_to_end_through_the_cli(tmp_path, one_thread):
    from typer.testing import CliRunner

    import reslim.cli  # noqa: F401  (registers commands)
    from reslim._src.cli.app import app
    from reslim.experiments import load_results, load_spec, run_sweep

    out = tmp_path / "out"
    args = ["run", "nfd", "--out", str(out), "--no-progress"]
    for s in TINY:
        args += ["--set", s]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "width sweep, depth-mup gia: error ~ D^" in result.output
    assert "mup sweep, mup ordinary" in result.output and "joint sweep, depth-mup gia" in result.output
    md = (out / "report.md").read_text()
    for title in ("The limit's depth error", "(b, c) Width and depth", "(d) muP without depth scaling",
                  "Training loss"):
        assert title in md, title
    # prose without dict reprs; datasets by name in the tables
    assert "{'" not in md and "Runs: 16 limit runs and 60 finite runs done;" in md
    assert "| synthetic | width |" in md and "| digits | width |" in md
    for name in ("width-0", "depth-0", "loss-0", "width-1", "depth-1", "loss-1"):
        assert (out / "figures" / f"nfd-{name}.png").exists(), name
    df = load_results(out)
    # per dataset: 4 limit grids (L = 1, 2, 4, 8) x 2 couplings + finite cells x 2 reps: (3 widths
    # + 3 depths + 2 joint
    # - 2 shared) x 2 modes + 3 muP depths
    assert len(df) == 2 * (4 * 2 + 6 * 2 * 2 + 3 * 2) and (df["status"] == "done").all()
    fin = df[df["config.role"] == "finite"]
    loss = np.array(fin["metrics.loss"].tolist(), dtype=float)
    assert loss.shape == (len(fin), 4) and np.isfinite(loss).all()
    rerun = run_sweep(load_spec("nfd", TINY), out, progress=False)
    assert rerun.skipped == len(df) and sum(rerun.counts.values()) == 0


def test_nfd_spec_errors_are_one_line(tmp_path):
    from typer.testing import CliRunner

    import reslim.cli  # noqa: F401
    from reslim._src.cli.app import app

    for bad, field in (("nfd.L=4", "nfd.L"), ("train.optimizer=\"sgd\"", "batch_size"),
                       ("nfd.replicas=3", "replicas")):
        res = CliRunner().invoke(app, ["run", "nfd", "--out", str(tmp_path / "bad"), "--no-progress",
                                       *sum((["--set", s] for s in TINY), []), "--set", bad])
        lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
        assert res.exit_code == 2 and len(lines) == 1 and field in lines[0], res.output
        assert not (tmp_path / "bad").exists()


def test_run_labels_name_the_datasets():
    """`reslim runs` shows which dataset a run belongs to by name (synthetic, digits), not index."""
    import reslim._src.experiments.nfd  # noqa: F401  (registers the kind)
    import reslim._src.experiments.nfd_scaling  # noqa: F401
    from reslim._src.experiments.registry import get_experiment
    from reslim._src.experiments.spec import load_spec

    for name in ("nfd", "nfd-scaling"):
        labels = [r.label for r in get_experiment(name).expand(load_spec(name))]
        assert any("(dataset synthetic," in lb for lb in labels), labels[:3]
        assert not any("(dataset 0," in lb for lb in labels)
