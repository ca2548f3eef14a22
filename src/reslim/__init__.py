"""reslim: large-scale limits of residual-network training.

Public API (internals live in ``reslim._src``)::

    Shape, log_grid                       shapes and the papers' grids
    Parameterization, RoleScaling, Monomial, PRESETS, get_parameterization
    ResNet                                finite networks (a batch of seeds, stacked weights)
    DeepLinearNetwork                     finite deep linear networks (docs/deep-linear.md)
    Dataset, gaussian_data, linear_teacher, digits, make_dataset
    train, Trajectory                     GD / SGD / Adam with per-role learning rates
    threads                               a torch thread budget for a block of code (restored after)
"""

from ._src.models.deep_linear import DeepLinearNetwork
from ._src.models.resnet import ResNet
from ._src.scaling.monomial import Monomial
from ._src.scaling.parameterization import (
    PRESETS,
    ROLES,
    Parameterization,
    RoleScaling,
    get_parameterization,
)
from ._src.scaling.shapes import Shape, log_grid
from ._src.scaling.user_models import param_groups
from ._src.training.data import Dataset, digits, gaussian_data, linear_teacher, make_dataset
from ._src.training.trainer import threads, train
from ._src.training.trajectory import Trajectory

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "ROLES",
    "Dataset",
    "DeepLinearNetwork",
    "Monomial",
    "Parameterization",
    "ResNet",
    "RoleScaling",
    "Shape",
    "Trajectory",
    "digits",
    "gaussian_data",
    "get_parameterization",
    "linear_teacher",
    "log_grid",
    "make_dataset",
    "param_groups",
    "threads",
    "train",
]
