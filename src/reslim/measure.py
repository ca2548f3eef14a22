"""reslim.measure: errors against a reference, rate fits with uncertainty, compute-optimal shapes.

Public API (internals in ``reslim._src.measure``)::

    embedding_error(traj, ref, per_repetition=False)   (K+1,) or (K+1, B) RMS of h_L - h_L^ref[:D]
    output_error(traj, ref, per_repetition=False)      (K+1,) or (K+1, B) RMS of y - y^ref
    error_stats(traj, ref, field)                      per-repetition MSE, counts of excluded runs
    max_layer_mean_abs_error(hidden, ref_hidden)       max_l mean_{n,d} |h_l - H(s_l)| (theory §3.2)
    fit_power_law(x, err, n_boot, seed, ci)            PowerLawFit: err ~ C x^p with bootstrap CIs
    fit_power_term(x, err, floor, background, ...)     PowerLawFit of one term: err^2 - floor =
                                                       C^2 x^2p + background terms (BACKGROUNDS)
    fit_additive(L, M, D, err, kind, n_boot, seed)     AdditiveFit: err^2 = a^2/L^2 + b^2 ... + c^2/D
    compute_optimal_shape(budget, model, slack=0.1)    (Shape, predicted error) at L M D ~ budget
    continuous_optimal_shape(budget, model, slack)     the same before rounding: (L, M, D, error)
    optimal_exponents(model)                           P-exponents {"L", "M", "D", "rate"}
    theory_model(name), THEORY_MODELS                  "bound" and "output" error models
"""

from ._src.measure.errors import (
    ErrorStats,
    embedding_error,
    error_stats,
    max_layer_mean_abs_error,
    output_error,
)
from ._src.measure.fits import (
    ADDITIVE_TERMS,
    BACKGROUNDS,
    AdditiveFit,
    PowerLawFit,
    fit_additive,
    fit_power_law,
    fit_power_term,
)
from ._src.measure.optimal import (
    THEORY_MODELS,
    compute_optimal_shape,
    continuous_optimal_shape,
    optimal_exponents,
    theory_model,
)

__all__ = [
    "ADDITIVE_TERMS",
    "BACKGROUNDS",
    "THEORY_MODELS",
    "AdditiveFit",
    "ErrorStats",
    "PowerLawFit",
    "compute_optimal_shape",
    "continuous_optimal_shape",
    "embedding_error",
    "error_stats",
    "fit_additive",
    "fit_power_law",
    "fit_power_term",
    "max_layer_mean_abs_error",
    "optimal_exponents",
    "output_error",
    "theory_model",
]
