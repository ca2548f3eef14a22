"""The mean-field view of residual networks and the training schemes it suggests
(docs/mean-field.md; Lu, Ma, Lu, Lu, Ying, *A Mean-field Analysis of Deep ResNet and Beyond*,
arXiv 2003.05508)::

    view = mean_field_view(model)            # reslim ResNet, or any nn.Module with residual_stages()
    view = mean_field_view(model, stages=[model.blocks])   # ... or its block lists given
    view.depth_statistics() -> DataFrame     per-depth statistics of the parameter law
    view.adjoint(X, Y, loss)                 p_l = dl/dh_l by the discrete adjoint equation
    view.first_variation(X, Y, ...)          E_x[p_{l+1} . g(h_l; theta)]
    view.surrogate() -> nn.Module            x + sum_l g_l(x): the shallow ensemble (trainable)
    view.permute(stage, perm, optimizer)     reorder blocks (optimizer state follows)

    make_scheme("random-reorder" | "sort-reorder" | "surrogate-pretrain" | "plain", ...)
    train_with_scheme(model, X, Y, scheme, epochs=...)   full-batch SGD of any model (reslim ResNet too)
    ConvResNet(block="basic" | "next", ...)  small image ResNet / ResNeXt with listed stages
    image_data("digits" | "cifar10" | "cifar100", data_dir), train_image_classifier(model, data, scheme, cfg)
"""

from ._src.diagnostics.mean_field import ModuleBlocks as ModuleBlocks
from ._src.diagnostics.mean_field import ResNetBlocks as ResNetBlocks
from ._src.diagnostics.mean_field import block_statistic as block_statistic
from ._src.diagnostics.mean_field import cross_entropy as cross_entropy
from ._src.diagnostics.mean_field import mean_field_view as mean_field_view
from ._src.diagnostics.mean_field import squared_loss as squared_loss
from ._src.models.conv_resnet import ConvResNet as ConvResNet
from ._src.training.image_training import TrainConfig as TrainConfig
from ._src.training.image_training import TrainResult as TrainResult
from ._src.training.image_training import augment as augment
from ._src.training.image_training import image_data as image_data
from ._src.training.image_training import train_image_classifier as train_image_classifier
from ._src.training.schemes import RandomReorder as RandomReorder
from ._src.training.schemes import Scheme as Scheme
from ._src.training.schemes import SortReorder as SortReorder
from ._src.training.schemes import SurrogatePretrain as SurrogatePretrain
from ._src.training.schemes import make_scheme as make_scheme
from ._src.training.schemes import train_with_scheme as train_with_scheme
