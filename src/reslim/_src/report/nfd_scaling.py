"""Analysis, figure and report section of the ``nfd-scaling`` kind (docs/nfd-scaling.md): the NFD
limit's depth trend, the finite-width error, the crossover and the compute frontier, fitted by
:func:`reslim._src.diagnostics.nfd_scaling.scaling_laws`. A leaf renderer: it reads the store
through the kind it is handed; figures use matplotlib's ``Figure`` API. Each training mode is
compared with its own limit (ordinary networks with the reused-weight NFD, GIA networks with the
decoupled one); every table says which (column ``limit``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from . import figures
from .nfd import counts_text, dataset_names
from .report import Section


@dataclass
class NFDScalingAnalysis:
    tables: dict = field(default_factory=dict)  # dataset -> nfd_scaling table
    laws: dict = field(default_factory=dict)  # dataset -> ScalingLaws
    counts: dict = field(default_factory=dict)  # role -> status -> n
    names: list = field(default_factory=list)  # dataset -> name


def analyse(kind, spec, store) -> NFDScalingAnalysis:
    from ..diagnostics.nfd_scaling import scaling_laws

    res = NFDScalingAnalysis(names=dataset_names(spec))
    for r in kind.records(spec, store):
        by = res.counts.setdefault(r.config["role"], {})
        by[r.status] = by.get(r.status, 0) + 1
    for i, _ in enumerate(spec.datasets):
        df = kind.table(spec, store, i)
        if df.empty:
            continue
        res.tables[i] = df
        res.laws[i] = scaling_laws(df, n_boot=spec.analysis.n_boot)
    return res


def _f(v, fmt="+.3f") -> str:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return "-"
    return format(v, fmt) if math.isfinite(v) else "-"


def law_lines(laws) -> list[str]:
    """Plain-text lines of the fitted laws (used by the summary and the report)."""
    out = []
    for cp, f in laws.depth_fits.items():
        if f is None:
            continue
        out.append(
            f"NFD limit ({cp} coupling) vs depth: R_inf(L) = {f.R_nfd:.4f} + {f.a:.4f} L^-{f.p:.2f}; "
            f"p = {f.p:.2f} [{f.p_ci[0]:.2f}, {f.p_ci[1]:.2f}], a = {f.a:.4f} [{f.a_ci[0]:.4f}, "
            f"{f.a_ci[1]:.4f}], R_NFD = {f.R_nfd:.4f} [{f.R_nfd_ci[0]:.4f}, {f.R_nfd_ci[1]:.4f}] "
            f"(chi2/dof {f.chi2_per_dof:.2f})"
        )
    for r in laws.width_fits.to_dict("records"):
        if r["L"] == "all":
            what = "single-network error eps" if r["metric"] == "eps" else "seed-mean bias"
            out.append(
                f"finite-width {what} ({r['mode']} vs the {r['limit']} limit, all depths): ~ "
                f"D^{_f(r['exponent'])} [{_f(r['ci_low'])}, {_f(r['ci_high'])}]"
            )
    for r in laws.compute_fits.to_dict("records"):
        out.append(
            f"compute frontier ({r['mode']} vs the {r['limit']} limit, {int(r['n_points'])} points, "
            f"{int(r.get('n_above', 0))} above R_NFD): R - R_NFD ~ C^{_f(r.get('exponent'))} "
            f"[{_f(r.get('ci_low'))}, {_f(r.get('ci_high'))}] (t-interval; two-term "
            f"model R_NFD + a L^-p + b D^-q at L D^2 = C: C^{_f(r.get('predicted_eps'))} with eps's q, "
            f"C^{_f(r.get('predicted_bias'))} with the bias's)"
        )
    for r in laws.crossover.to_dict("records"):
        out.append(
            f"crossover ({r['mode']} vs the {r['limit']} limit, D = {int(r['width'])}): L* = "
            f"{_f(r['L_star_bias_model'], '.1f')} against the bias (measured "
            f"{_f(r['L_star_bias_measured'], '.0f')}), {_f(r['L_star_eps_model'], '.1f')} against eps "
            f"(measured {_f(r['L_star_eps_measured'], '.0f')})"
        )
    return out


def summary_lines(res: NFDScalingAnalysis) -> list[str]:
    lines = ["nfd-scaling: the NFD limit and finite networks against depth, width and compute"]
    for i, laws in res.laws.items():
        name = res.names[i] if i < len(res.names) else str(i)
        lines += [f"  dataset {name}: {s}" for s in law_lines(laws)]
    return lines


def sections(kind, spec, store, res: NFDScalingAnalysis, fig_dir) -> list[Section]:
    from ..diagnostics.nfd_scaling import plot_scaling

    tr = spec.train
    out = [
        Section(
            "Scaling laws from the NFD view",
            [
                f"Final training loss after {tr.steps} {tr.optimizer} steps (lr eta = {tr.lr:g}, loss "
                f"{tr.loss}) of the NFD limit (reslim.limits.NFDLimit, {spec.nfd.particles} particles in "
                f"{spec.nfd.replicas} replicas) on the depth grids L = "
                f"{', '.join(map(str, spec.depths))} and of finite one-layer depth-muP networks at widths "
                f"D = {', '.join(map(str, spec.widths))} ({spec.repetitions} seeds; "
                f"{' and '.join(spec.modes)} training). Each mode is compared with its own limit: "
                "ordinary networks with the reused-weight NFD (coupling reused: the backward pass reuses "
                "the forward weights), GIA networks with the decoupled NFD (coupling gia); the column "
                "limit of every table says which.",
                "Fits: R_inf(L) = R_NFD + a L^-p (weighted by the replica errors; parametric-bootstrap 95% "
                "intervals); eps(L, D), one network's error, and bias(L, D), the seed mean's, against "
                "R_inf(L), noise-corrected, ~ D^-q (bootstrap over seeds); crossover L*(D) where the "
                "doubling gain a L^-p (1 - 2^-p) equals b D^-q; compute C = 6 b K L D^2 and the "
                "frontier's R - R_NFD ~ C^-r against the two-term model's r = p q / (q + 2 p).",
                f"Runs: {counts_text(res.counts)}.",
            ],
        )
    ]
    for i, laws in res.laws.items():
        d = spec.datasets[i]
        name = res.names[i] if i < len(res.names) else str(i)
        sec = Section(f"Dataset {name} (P = {d.P})", [*law_lines(laws), *laws.notes])
        lim = laws.limit.rename(
            columns={
                "loss_final": "R_inf",
                "loss_stderr": "stderr",
                "gain": "R(L) - R(2L)",
                "gain_se": "gain stderr",
            }
        )
        sec.tables.append(("The NFD limits against depth", lim))
        if len(laws.cells):
            sec.tables.append(
                (
                    "Finite networks: seed-mean loss, finite-width error eps and bias",
                    laws.cells.drop(columns=["n_diverged"]),
                )
            )
        if len(laws.width_errors):
            sec.tables.append(
                ("Finite-width error pooled over depths (RMS, noise-corrected)", laws.width_errors)
            )
        if len(laws.width_fits):
            sec.tables.append(("Finite-width error exponents (error ~ D^p)", laws.width_fits))
        if len(laws.crossover):
            sec.tables.append(("Crossover depth", laws.crossover))
        if len(laws.frontier):
            sec.tables.append(("Compute frontier", laws.frontier))
        if len(laws.compute_fits):
            sec.tables.append(("Compute-frontier exponents (R - R_NFD ~ C^r)", laws.compute_fits))
        fig = plot_scaling(res.tables[i], laws)
        sec.figures.append(
            figures.save(
                fig,
                fig_dir,
                f"nfd-scaling-{i}",
                f"{name}: loss against depth (both limits with their fits, the networks' seed means), "
                "the finite-width error against width (each mode against its own limit), loss against "
                "compute with the frontiers.",
            )
        )
        out.append(sec)
    return out
