"""End to end: ``reslim run mean-field`` on a tiny spec (digits subset, 2 epochs, 2 seeds, a
small landscape), its report, verdicts and rerun skipping; the CIFAR path's missing-data error."""

from __future__ import annotations

import numpy as np

TINY = ["archs=['resnet']", "seeds=[0,1]", "schemes=['plain','random-reorder','surrogate-pretrain']",
        "data.n_train=96", "data.n_test=48", "model.width=4", "model.blocks=2", "train.epochs=2",
        "train.batch_size=32", "train.probe=48", "landscape.L=[1,2]", "landscape.M=[1,4]",
        "landscape.seeds=4", "landscape.steps=30"]


def test_experiment_end_to_end_through_the_cli(tmp_path):
    from typer.testing import CliRunner

    import reslim.cli  # noqa: F401  (registers commands)
    from reslim._src.cli.app import app
    from reslim.experiments import load_results, load_spec, run_sweep

    out = tmp_path / "out"
    args = ["run", "mean-field", "--out", str(out), "--no-progress"]
    for s in TINY:
        args += ["--set", s]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "resnet random-reorder - plain" in result.output and "landscape L=2 M=4" in result.output
    md = (out / "report.md").read_text()
    assert "Training schemes against plain training" in md and "reordering" in md
    assert "The landscape" in md and "published gain" in md
    for name in ("accuracy", "jumps", "landscape"):
        assert (out / "figures" / f"mean-field-{name}.png").exists(), name
    df = load_results(out)
    assert len(df) == 3 * 2 + 4 and (df["status"] == "done").all()
    tr = df[df["config.role"] == "train"]
    acc = np.array(tr["metrics.test_accuracy"].tolist(), dtype=float)
    assert np.all((acc >= 0) & (acc <= 1))
    ev = tr[tr["config.scheme_name"] == "random-reorder"]["metrics.events"].tolist()
    assert all(len(e) >= 1 and e[0]["kind"] == "reorder" for e in ev)
    rerun = run_sweep(load_spec("mean-field", TINY), out, progress=False)
    assert rerun.skipped == 10 and sum(rerun.counts.values()) == 0


def test_spec_validation_and_cifar_missing(tmp_path):
    import pytest

    from reslim._src.experiments.mean_field import MFDataSpec, load_data
    from reslim.experiments import load_spec

    with pytest.raises(ValueError, match="plain"):
        load_spec("mean-field", ["schemes=['random-reorder']"])
    with pytest.raises(ValueError, match="data.dir"):  # CIFAR not on disk: a spec-time error
        load_spec("mean-field-full", [])
    spec = load_spec("mean-field-full", ["roles=['landscape']"])
    assert spec.data.kind == "cifar10" and spec.train.flip
    for name, root in (("cifar10", tmp_path / "c10" / "cifar-10-batches-bin"),
                       ("cifar100", tmp_path / "c100" / "cifar-100-binary")):
        root.mkdir(parents=True)
        files = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"] \
            if name == "cifar10" else ["train.bin", "test.bin"]
        for f in files:
            (root / f).write_bytes(b"")
        ok = load_spec("mean-field-full", [f"data.kind='{name}'", f"data.dir='{root.parent}'"])
        assert ok.data.dir == str(root.parent)
    with pytest.raises(ValueError, match="data.dir"):
        load_data(MFDataSpec(kind="cifar100", dir=str(tmp_path)))
