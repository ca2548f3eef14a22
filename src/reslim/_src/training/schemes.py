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


def train_with_scheme(model: Any, X: Any, Y: Any, scheme: Scheme, *, epochs: int, steps_per_epoch: int = 1,
                      lr: float = 0.1, momentum: float = 0.0, loss: Any = None, seed: int = 0,
                      view: View | None = None) -> dict[str, Any]:
    """Full-batch training of any model (reslim's ``ResNet`` included) under ``scheme`` with
    ``torch.optim.SGD`` and autograd: ``epochs`` rounds of ``steps_per_epoch`` steps, the scheme's
    hooks between rounds. ``loss``: per-sample loss (default: the view's squared loss for the
    built-in ResNet, cross-entropy otherwise); the risk is its mean over samples (summed over a
    batch of networks). Returns ``loss`` (risk after each round) and ``events`` (``epoch``,
    ``kind``, risk ``before`` and ``after``)."""
    import torch

    from ..diagnostics.mean_field import cross_entropy, mean_field_view, squared_loss

    view = mean_field_view(model) if view is None else view
    if loss is None:
        loss = squared_loss if isinstance(view, ResNetBlocks) else cross_entropy
    rng = np.random.default_rng(seed)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=momentum)
    k_sur = surrogate_epochs(scheme, epochs)
    surrogate = view.surrogate() if k_sur > 0 else None

    def risk(net) -> torch.Tensor:
        out = net(X)
        return loss(out, torch.as_tensor(Y, dtype=out.dtype) if out.dtype.is_floating_point
                    and torch.as_tensor(Y).dtype.is_floating_point else Y).mean(-1).sum()

    history: list[float] = []
    events: list[dict[str, Any]] = []
    for epoch in range(epochs):
        net = surrogate if surrogate is not None and epoch < k_sur else model
        for _ in range(steps_per_epoch):
            opt.zero_grad(set_to_none=True)
            r = risk(net)
            r.backward()
            opt.step()
        with torch.no_grad():
            now = float(risk(model))
            if surrogate is not None and epoch == k_sur - 1:
                before = float(risk(surrogate))
                events.append({"epoch": epoch, "kind": "switch", "before": before, "after": now})
            if epoch >= k_sur and scheme.after_epoch(view, epoch, epochs, rng, opt) is not None:
                after = float(risk(model))
                events.append({"epoch": epoch, "kind": "reorder", "before": now, "after": after})
                now = after
        history.append(now)
    return {"loss": history, "events": events}
