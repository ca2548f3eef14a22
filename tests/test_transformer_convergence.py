"""The transformer-convergence kind end to end on a tiny spec."""

from __future__ import annotations

import numpy as np
import pytest

TINY = ["seeds=2", "steps=4", "M_sweep.values=[2, 4, 8]", "M_sweep.L=2", "M_sweep.D=4",
        "M_sweep.reference=[2, 32, 4]", "D_sweep.values=[2, 4]", "D_sweep.L=2", "D_sweep.M=8",
        "D_sweep.reference=[2, 8, 8]", "LM_sweep.M=8", "LM_sweep.D=4", "LM_sweep.values=[1, 2, 4, 8]",
        "LM_sweep.reference=[4, 16, 4]"]


def test_transformer_convergence_runs_and_reports(tmp_path, one_thread):
    import reslim.cli  # noqa: F401  (registers commands)
    from reslim.experiments import load_results, load_spec, run_sweep

    spec = load_spec("transformer-convergence", TINY)
    out = tmp_path / "out"
    from reslim._src.experiments.sweep import run_experiment

    summary = run_experiment(spec, out, progress=False)
    md = (out / "report.md").read_text()
    assert "Transformers: convergence to the reference" in md and "Fitted exponents" in md
    df = load_results(out)
    assert len(df) == 2 * (3 + 2 + 4) and (df["status"] == "done").all()
    err = df["metrics.error"].to_numpy(dtype=float)
    assert np.isfinite(err).all() and (err > 0).all()
    m = df[df["config.sweep"] == "M"].groupby("config.M")["metrics.error"].mean()
    assert m.iloc[-1] < m.iloc[0]  # more heads per layer, closer to the reference
    assert any("M sweep: error ~ M^" in line and "(theory -1/2)" in line for line in summary.summary_lines)
    # every fitted exponent carries the theory's value and a verdict, and the sweeps are drawn
    fits_table = md.split("Fitted exponents")[1].split("Error per shape")[0]
    assert "theory" in fits_table and "verdict" in fits_table
    assert fits_table.count("consistent") == 3  # consistent or inconsistent, once per sweep
    assert (out / "figures" / "transformer-convergence.png").is_file()
    again = run_sweep(spec, out, progress=False)
    assert again.skipped == again.total == len(df)  # stored: nothing to redo


def test_spec_checks():
    from reslim.experiments import SpecError, load_spec

    with pytest.raises(SpecError, match="divide"):
        load_spec("transformer-convergence", ["LM_sweep.values=[3]"])
    with pytest.raises(SpecError, match="transformer preset"):
        load_spec("transformer-convergence", ["param=ntk"])
    with pytest.raises(SpecError, match="reference's D"):
        load_spec("transformer-convergence", ["D_sweep.values=[128]"])


def test_transformer_convergence_with_layernorm(tmp_path, one_thread):
    """norm = "layer" (outside the theory): the same sweeps, every run converges and errors fall in M."""
    import reslim.cli  # noqa: F401
    from reslim._src.experiments.sweep import run_experiment
    from reslim.experiments import load_results, load_spec

    spec = load_spec("transformer-convergence", [*TINY, 'norm="layer"'])
    run_experiment(spec, tmp_path / "out", progress=False)
    df = load_results(tmp_path / "out")
    assert (df["status"] == "done").all() and (df["config.norm"] == "layer").all()
    m = df[df["config.sweep"] == "M"].groupby("config.M")["metrics.error"].mean()
    assert m.iloc[-1] < m.iloc[0]
