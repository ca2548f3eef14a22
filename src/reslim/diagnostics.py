"""Diagnostics: is a parameterization right at every size?

Coordinate checks over ``L``, ``M``, ``D`` (``width`` = M and D together, ``alpha``)::

    coord_check(param, axis=("L", "M", "D"), sizes=None, *, tol=0.25, base=(8, 256, 64),
                optimizer="gd", lr=0.1, steps=3, seeds=(0, 1, 2, 3), ...) -> DataFrame
    measure(...)                    raw per-layer RMS records of one sweep
    coord_check(factory, axis, sizes, data=..., ...)   any nn.Module: factory(size, seed) -> module
                                    or (module, param_groups(...)) (docs/transformers.md)
    coord_check_modules, measure_modules               the same, by name
    fit_exponents(records, tol)     log-log slopes per quantity, depth position and step
    classify(exponents, step, tol)  verdict per axis: feature learning / lazy / partial / unstable
    exponent_table(params, axes)    the measured exponent table of several parameterizations
    markdown_table(summary)         ... as Markdown
    plot_coord_check(exponents, path)

Phase diagram of residual scalings ``beta = alpha L^a M^b D^c`` (two-layer blocks)::

    residual_scaling(L, M, D, alpha) -> Parameterization   (tied lr eta D / (L M beta^2))
    phase_diagram(x="L", y="M", x_exponents, y_exponents, fixed) -> DataFrame
    alpha_sweep(alphas) -> DataFrame
    plot_phase_diagram(maps, path, alpha=None)

Depth (docs/depth.md)::

    gia_gap(data, params, depths, width, seeds, steps, lr, ...) -> DataFrame   ordinary vs GIA
    first_layer_collapse(data, depths, width, seeds, optimizers, corrections, ...) -> DataFrame
    fit_depth_exponents(df, metrics, by), summarize_by_depth(df, metrics, by)
    lr_sweep(data, param, depths, widths, lrs, ...) -> DataFrame   (one batched run per shape)
    optimal_lr(lrs, losses), lr_drift(depths, lr_star), optima(df), verdicts(opt), plot_transfer
    correction_study(data, depths, width, seeds, optimizers, variants, ...) -> CorrectionStudy
                                    first-layer update, function update, eta*(L) of the correction
    plot_correction(study, path), correction_table(fits)

Scaling laws from the NFD view (docs/nfd-scaling.md)::

    nfd_scaling(problem, depths, widths, seeds, modes, particles, ...) -> DataFrame
    scaling_laws(df) -> ScalingLaws   depth trend of each limit (coupling reused / gia), width error
                                      of each mode against its own limit, crossover, compute
    fit_depth_trend(L, R, se), plot_scaling(df, laws, path)

Thresholds and meaning: docs/regimes.md.
"""

from ._src.diagnostics.coord_check import (
    AXES,
    DEFAULT_BASE,
    DEFAULT_SIZES,
    TOL,
    classify,
    exponent_table,
    fit_exponents,
    markdown_table,
    measure,
    plot_coord_check,
    trend,
)
from ._src.diagnostics.correction import (
    VARIANTS,
    CorrectionStudy,
    correction_study,
    correction_table,
    plot_correction,
    update_metrics,
)
from ._src.diagnostics.depth import (
    feature_updates,
    first_layer_collapse,
    fit_depth_exponents,
    gap_metrics,
    gia_gap,
    summarize_by_depth,
)
from ._src.diagnostics.module_check import coord_check, coord_check_modules, measure_modules
from ._src.diagnostics.nfd_scaling import (
    ScalingLaws,
    fit_depth_trend,
    nfd_scaling,
    plot_scaling,
    scaling_laws,
)
from ._src.diagnostics.phase import (
    alpha_sweep,
    classify_point,
    phase_diagram,
    plot_phase_diagram,
    residual_scaling,
)
from ._src.diagnostics.transfer import (
    lr_drift,
    lr_grid,
    lr_sweep,
    optima,
    optimal_lr,
    plot_transfer,
    verdicts,
)

__all__ = [
    "AXES",
    "DEFAULT_BASE",
    "DEFAULT_SIZES",
    "TOL",
    "alpha_sweep",
    "classify",
    "classify_point",
    "coord_check",
    "coord_check_modules",
    "measure_modules",
    "exponent_table",
    "fit_exponents",
    "markdown_table",
    "measure",
    "phase_diagram",
    "plot_coord_check",
    "plot_phase_diagram",
    "residual_scaling",
    "trend",
    "feature_updates",
    "first_layer_collapse",
    "fit_depth_exponents",
    "gap_metrics",
    "gia_gap",
    "summarize_by_depth",
    "lr_drift",
    "lr_grid",
    "lr_sweep",
    "optima",
    "optimal_lr",
    "plot_transfer",
    "verdicts",
    "VARIANTS",
    "CorrectionStudy",
    "correction_study",
    "correction_table",
    "plot_correction",
    "update_metrics",
    "ScalingLaws",
    "fit_depth_trend",
    "nfd_scaling",
    "plot_scaling",
    "scaling_laws",
]
