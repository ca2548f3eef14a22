"""Training schemes from the mean-field view (docs/mean-field.md), as small strategy objects.

Lu, Ma, Lu, Lu, Ying (*A Mean-field Analysis of Deep ResNet and Beyond*, arXiv 2003.05508) read a
ResNet's blocks as particles of a law over depth and derive training schemes from it, one of them
"switching the order of the residual blocks". The exact procedure could not be recovered here
(docs/mean-field.md says what the search found), so these are candidates derived from the model:
in the mean-field limit the network depends on the law of the blocks along depth, and a
stage's blocks are, to first order in ``1/L``, exchangeable (the shallow-ensemble surrogate
``x + mean_l f(x, theta_l)`` does not depend on their order at all).

A scheme is used by a training loop through two hooks: :meth:`Scheme.surrogate_epochs` (train the
surrogate first for that many epochs) and :meth:`Scheme.after_epoch` (called after every epoch
with the model's mean-field view; it may reorder blocks and says whether it did). Schemes work on
any view of :mod:`reslim._src.diagnostics.mean_field`: the built-in ResNet or user block lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..diagnostics.mean_field import ModuleBlocks, ResNetBlocks, block_statistic

View = ResNetBlocks | ModuleBlocks


def _stage_sizes(view: View) -> list[int]:
    if isinstance(view, ResNetBlocks):
        return [view.depth]
    return [len(s) for s in view.stages]


@dataclass(frozen=True)
class Scheme:
    """Plain training (the base class does nothing)."""

    name: str = "plain"

    def surrogate_epochs(self) -> int:
        """Epochs trained on the shallow-ensemble surrogate before the ResNet itself."""
        return 0

    def due(self, epoch: int, epochs: int) -> bool:
        return False

    def reorder(self, view: View, rng: np.random.Generator, optimizer: Any = None) -> list[list[int]]:
        """Permute the blocks of every stage; the permutations applied (identity: none)."""
        return [list(range(n)) for n in _stage_sizes(view)]

    def after_epoch(self, view: View, epoch: int, epochs: int, rng: np.random.Generator,
                    optimizer: Any = None) -> list[list[int]] | None:
        """After epoch ``epoch`` (0-based) of ``epochs``: the permutations applied, or None."""
        if not self.due(epoch, epochs):
            return None
        return self.reorder(view, rng, optimizer)


@dataclass(frozen=True)
class _Periodic(Scheme):
    every: int = 1  #: reorder after every ``every`` epochs
    stop: float = 0.75  #: ... up to this fraction of training (then plain training settles the order)

    def due(self, epoch: int, epochs: int) -> bool:
        return (epoch + 1) % self.every == 0 and epoch + 1 <= self.stop * epochs

    def _apply(self, view: View, perms: list[list[int]], optimizer: Any) -> list[list[int]]:
        for s, perm in enumerate(perms):
            if perm != sorted(perm):
                view.permute(s, perm, optimizer)
        return perms


@dataclass(frozen=True)
class RandomReorder(_Periodic):
    """Shuffle each stage's blocks uniformly at random (periodically)."""

    name: str = "random-reorder"

    def reorder(self, view: View, rng: np.random.Generator, optimizer: Any = None) -> list[list[int]]:
        perms = [rng.permutation(n).tolist() for n in _stage_sizes(view)]
        return self._apply(view, perms, optimizer)


@dataclass(frozen=True)
class SortReorder(_Periodic):
    """Sort each stage's blocks by a statistic (ascending: the smallest branches first, as a
    smooth law over depth would place them; ``descending`` reverses)."""

    name: str = "sort-reorder"
    statistic: str = "norm"
    descending: bool = False

    def reorder(self, view: View, rng: np.random.Generator, optimizer: Any = None) -> list[list[int]]:
        perms = []
        for s in range(len(_stage_sizes(view))):
            stat = block_statistic(view, s, self.statistic)
            order = np.argsort(-stat if self.descending else stat, kind="stable")
            perms.append([int(i) for i in order])
        return self._apply(view, perms, optimizer)


@dataclass(frozen=True)
class SurrogatePretrain(Scheme):
    """Train the shallow-ensemble surrogate for a fraction of the epochs, then the ResNet."""

    name: str = "surrogate-pretrain"
    fraction: float = 0.25

    def surrogate_epochs_of(self, epochs: int) -> int:
        return int(round(self.fraction * epochs))


SCHEMES: dict[str, type[Scheme]] = {"plain": Scheme, "random-reorder": RandomReorder,
                                    "sort-reorder": SortReorder, "surrogate-pretrain": SurrogatePretrain}


def make_scheme(name: str, **options: Any) -> Scheme:
    """The scheme ``name`` (``plain``, ``random-reorder``, ``sort-reorder``,
    ``surrogate-pretrain``) with ``options``."""
    if name not in SCHEMES:
        raise ValueError(f"unknown training scheme {name!r}; choose from {', '.join(SCHEMES)}")
    return SCHEMES[name](name=name, **options)


def surrogate_epochs(scheme: Scheme, epochs: int) -> int:
    """Epochs of surrogate pretraining of ``scheme`` in a run of ``epochs``."""
    if isinstance(scheme, SurrogatePretrain):
        return scheme.surrogate_epochs_of(epochs)
    return scheme.surrogate_epochs()
