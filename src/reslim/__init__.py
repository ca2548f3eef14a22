"""reslim: large-scale limits of residual-network training.

Public API (internals live in ``reslim._src``)::

    Shape, log_grid                       shapes and the papers' grids
    Parameterization, RoleScaling, Monomial, PRESETS, get_parameterization
    ResNet                                finite networks (a batch of seeds, stacked weights)
    Transformer, get_transformer_parameterization, TRANSFORMER_PRESETS
                                          attention heads as units (docs/transformers.md)
    Architecture, Role, RoleTable         block families and their parameterizations as data
    DeepLinearNetwork                     finite deep linear networks (docs/deep-linear.md)
    Dataset, gaussian_data, linear_teacher, digits, make_dataset
    train, Trajectory                     GD / SGD / Adam with per-role learning rates
    train_modules, train_generic          many seeds of any module as one computation (vmap)
    threads                               a torch thread budget for a block of code (restored after)
    load_results                          a store's runs as a DataFrame (L, M, D columns, datetimes)
"""

from ._src.models.deep_linear import DeepLinearNetwork
from ._src.models.resnet import ResNet
from ._src.models.transformer import TRANSFORMER_PRESETS, Transformer, get_transformer_parameterization
from ._src.scaling.architecture import Architecture, Role
from ._src.scaling.monomial import Monomial
from ._src.scaling.parameterization import (
    PRESETS,
    ROLES,
    Parameterization,
    RoleScaling,
    get_parameterization,
)
from ._src.scaling.role_table import RoleTable
from ._src.scaling.shapes import Shape, log_grid
from ._src.scaling.user_models import param_groups
from ._src.training.data import Dataset, digits, gaussian_data, linear_teacher, make_dataset
from ._src.training.generic import train_generic
from ._src.training.modules import train_modules
from ._src.training.trainer import threads, train
from ._src.training.trajectory import Trajectory

__version__ = "0.1.0"


def __getattr__(name: str):
    # load_results lives with the stores (reslim.experiments); imported on first use so that
    # ``import reslim`` does not pay for pandas and SQLite
    if name == "load_results":
        from ._src.experiments.store import load_results

        return load_results
    raise AttributeError(f"module 'reslim' has no attribute {name!r}")


__all__ = [
    "PRESETS",
    "ROLES",
    "TRANSFORMER_PRESETS",
    "Architecture",
    "Dataset",
    "DeepLinearNetwork",
    "Monomial",
    "Parameterization",
    "ResNet",
    "Role",
    "RoleScaling",
    "RoleTable",
    "Shape",
    "Trajectory",
    "Transformer",
    "digits",
    "gaussian_data",
    "get_parameterization",
    "get_transformer_parameterization",
    "linear_teacher",
    "load_results",
    "log_grid",
    "make_dataset",
    "param_groups",
    "threads",
    "train",
    "train_generic",
    "train_modules",
]
