"""A batched trainer for any network written as a function of its parameters.

``B`` networks of one shape (one per seed) are trained as one computation: their parameters
are stacked along a leading axis ``B`` and one network's step (forward, risk, autograd
gradient) is mapped over that axis with :func:`torch.func.vmap`::

    y_b = f(theta_b, X)          R_b = 1/(2 N c) sum_n ||y_{b,n} - Y_n||^2
    theta_b <- theta_b - lr_b(name) * dR_b/dtheta_b          (GD, SGD; Adam per element)

``f`` is usually ``torch.func.functional_call(module, params, (X,))`` of an ordinary
``nn.Module`` (see :mod:`.modules` for role-mapped user modules and :func:`train_generic`
below for the built-in :class:`ResNet`). Learning rates come per parameter *name* (the role
map evaluates a parameterization's per-role rules into them); nothing is stored on tensors.

The result is the :class:`Trajectory` of :func:`reslim.train` (same risk, same divergence
criterion, same minibatch draws, same Adam), so on the built-in ResNet the generic path and
the fused manual backward give the same numbers (tested to 1e-10 in float64).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import grad_and_value, vmap

from ..models.resnet import ResNet
from ..scaling.parameterization import optimizer_family
from .data import Dataset
from .divergence import DIVERGENCE_FACTOR, blowup_bound, check_divergence_factor
from .trainer import check_options, threads
from .trajectory import Trajectory

#: ``forward(params, X) -> y``: one network's outputs ``(..., N, d_out)`` from its parameters
#: (a dict of unbatched tensors) and inputs ``X`` (N, ...).
Forward = Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]
#: ``states(params, X) -> {"h_last": (N, D), "hidden": (S+1, N, D), "pre": (L, N, M)}``
#: (any subset), for the per-layer records.
States = Callable[[dict[str, torch.Tensor], torch.Tensor], dict[str, torch.Tensor]]


@dataclass
class BatchedResult:
    """What :func:`train_batched` returns: the record and the trained stacked parameters."""

    trajectory: Trajectory
    params: dict[str, torch.Tensor]


def _risk(y: torch.Tensor, Y: torch.Tensor, loss: str) -> torch.Tensor:
    """``1/(2 N c) sum ||y - Y||^2`` of one network (the risk of :func:`reslim.train`)."""
    N, d_out = y.shape[-2], y.shape[-1]
    c = N * (d_out if loss == "mean" else 1)
    return 0.5 * (y - Y).square().sum() / c


def _per_network(lr: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    """A learning rate broadcast against stacked ``like`` (B, ...): a float or (B, 1, ..., 1)."""
    if isinstance(lr, torch.Tensor):
        return lr.to(like).view(-1, *([1] * (like.dim() - 1)))
    return float(lr)


class _Optimizer:
    """GD/SGD (``p -= lr g``) or Adam (the update of :func:`reslim.train`, bias-corrected) on
    stacked tensors, one learning rate (float or per network) per parameter name."""

    def __init__(self, params: dict[str, torch.Tensor], lrs: Mapping[str, float | torch.Tensor],
                 family: str, betas: tuple[float, float], eps: float) -> None:
        self.lrs = {n: _per_network(lrs[n], params[n]) for n in lrs}
        self.adam = family == "adam"
        self.b1, self.b2 = betas
        self.eps = eps
        self.t = 0
        if self.adam:
            self.state = {n: (torch.zeros_like(params[n]), torch.zeros_like(params[n])) for n in lrs}

    @torch.no_grad()
    def step(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor]) -> None:
        self.t += 1
        for name, lr in self.lrs.items():
            g, p = grads[name], params[name]
            if not self.adam:
                if isinstance(lr, torch.Tensor):
                    p.sub_(g * lr)
                else:
                    p.add_(g, alpha=-lr)
                continue
            m, v = self.state[name]
            m.mul_(self.b1).add_(g, alpha=1 - self.b1)
            v.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
            c1, c2 = 1 - self.b1**self.t, 1 - self.b2**self.t
            denom = (v / c2).sqrt_().add_(self.eps)
            p.add_((m / denom).mul_(-lr / c1))


def train_batched(
    forward: Forward,
    params: Mapping[str, torch.Tensor],
    data: Dataset,
    *,
    lrs: Mapping[str, float | torch.Tensor],
    steps: int,
    optimizer: str = "gd",
    loss: str = "sum",
    batch_size: int | None = None,
    record: Iterable[str] = ("loss", "outputs"),
    states: States | None = None,
    data_seed: int = 0,
    adam_betas: tuple[float, float] = (0.9, 0.999),
    adam_eps: float = 1e-8,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    param_callback: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
    divergence_factor: float | None = DIVERGENCE_FACTOR,
    depth: np.ndarray | None = None,
    meta: dict | None = None,
    threads_: int | None = None,
) -> BatchedResult:
    """Train the ``B`` networks ``forward(params_b, .)`` for ``steps`` updates as one computation.

    ``params``: every parameter by name, stacked (``B`` leading); trained are the names in
    ``lrs`` (name -> learning rate, a float or one per network ``(B,)``), the others are held
    fixed. ``optimizer``, ``loss``, ``batch_size``, ``data_seed``, ``adam_*``, ``callback`` and
    ``divergence_factor`` mean what they mean for :func:`reslim.train` (same minibatches, same
    Adam, same per-network divergence). ``record``: ``loss, outputs, test_loss`` and, given a
    ``states`` function, ``h_last, hidden, pre``. The stacked parameters are copied, trained and
    returned (``BatchedResult.params``); ``forward`` must not change them.
    ``param_callback(k, params)`` sees the stacked parameters at every recorded step ``k``
    (after ``k`` updates; read them, do not change them).
    """
    record = check_options(steps, optimizer, loss, batch_size, record, data)
    factor = check_divergence_factor(divergence_factor)
    needs_states = record & {"h_last", "hidden", "pre"}
    if needs_states and states is None:
        raise ValueError(f"recording {sorted(needs_states)} needs a states function")
    if "test_loss" in record and data.X_test is None:
        raise ValueError("test_loss was requested but the data has no test split")
    if optimizer == "sgd" and batch_size is None:
        batch_size = data.N
    unknown_lr = [n for n in lrs if n not in params]
    if unknown_lr:
        raise ValueError(f"lrs names {unknown_lr[0]!r}, which is not a parameter")
    params = {n: p.detach().clone() for n, p in params.items()}
    sizes = {p.shape[0] for p in params.values()}
    if len(sizes) != 1:
        raise ValueError(f"stacked parameters must share their leading (network) axis, got {sorted(sizes)}")
    (B,) = sizes
    like = next(iter(params.values()))
    dtype, device = like.dtype, like.device
    X = torch.as_tensor(data.X, dtype=dtype, device=device)
    Y = torch.as_tensor(data.Y, dtype=dtype, device=device)
    trained = [n for n in params if n in lrs]
    opt = _Optimizer(params, lrs, optimizer_family(optimizer), adam_betas, adam_eps)

    def split(p_train, p_fixed):
        return {**p_fixed, **p_train}

    def risk_and_y(p_train, p_fixed, x, y_target):
        y = forward(split(p_train, p_fixed), x)
        return _risk(y, y_target, loss), y

    v_grad = vmap(grad_and_value(risk_and_y, has_aux=True), in_dims=(0, 0, None, None))
    v_forward = vmap(lambda p, x: forward(p, x), in_dims=(0, None))
    v_risk = vmap(lambda y, t: _risk(y, t, loss), in_dims=(0, None))
    v_states = None if states is None else vmap(states, in_dims=(0, None))

    full_batch = batch_size is None or batch_size >= data.N
    rng = np.random.default_rng(data_seed)
    recs: dict[str, list[np.ndarray]] = {name: [] for name in record}
    diverged_at = np.full(B, -1, dtype=np.int64)
    bound = np.full(B, np.inf)

    def to_np(t: torch.Tensor) -> np.ndarray:
        return t.detach().to("cpu", torch.float64).numpy()

    last = steps
    with threads(threads_):
        for k in range(steps + 1):
            p_train = {n: params[n] for n in trained}
            p_fixed = {n: params[n] for n in params if n not in lrs}
            grads = None
            if full_batch and k < steps and trained:
                grads, (risk, y) = v_grad(p_train, p_fixed, X, Y)
            else:
                with torch.no_grad():
                    y = v_forward(params, X)
                    risk = v_risk(y, Y)
            r = to_np(risk)
            if k == 0:
                bound[:] = blowup_bound(r, factor)
            bad = (~np.isfinite(r) | (r > bound)) & (diverged_at < 0)
            diverged_at[bad] = k
            recs["loss"].append(r)
            if "outputs" in record:
                recs["outputs"].append(to_np(y))
            if needs_states and v_states is not None:
                with torch.no_grad():
                    st = v_states(params, X)
                for name in needs_states:
                    recs[name].append(to_np(st[name]))
            if "test_loss" in record:
                with torch.no_grad():
                    Xt = torch.as_tensor(data.X_test, dtype=dtype, device=device)
                    Yt = torch.as_tensor(data.Y_test, dtype=dtype, device=device)
                    recs["test_loss"].append(to_np(v_risk(v_forward(params, Xt), Yt)))
            if callback is not None:
                callback(k, torch.as_tensor(r))
            if param_callback is not None:
                param_callback(k, params)
            if k == steps or (diverged_at >= 0).all():
                last = k
                break
            if not trained:
                continue
            if grads is None:
                idx = torch.as_tensor(np.sort(rng.choice(data.N, size=batch_size, replace=False)),
                                      device=X.device)
                grads, _ = v_grad(p_train, p_fixed, X[idx], Y[idx])
            opt.step(params, grads)

    arrays = {name: np.stack(vals) for name, vals in recs.items()}
    if last < steps:  # every network diverged: pad the remaining steps with NaN
        for name, arr in arrays.items():
            arrays[name] = np.concatenate([arr, np.full((steps - last, *arr.shape[1:]), np.nan)])
    for b in np.flatnonzero(diverged_at >= 0):
        for arr in arrays.values():
            arr[diverged_at[b]:, b] = np.nan
    traj = Trajectory(
        loss=arrays["loss"], outputs=arrays.get("outputs"), h_last=arrays.get("h_last"),
        hidden=arrays.get("hidden"), pre=arrays.get("pre"), test_loss=arrays.get("test_loss"),
        depth=np.array([0.0, 1.0]) if depth is None else np.asarray(depth, dtype=np.float64),
        diverged_at=diverged_at,
        meta={"optimizer": optimizer, "loss": loss, "steps": steps, "trainer": "generic",
              **(meta or {})},
    )
    return BatchedResult(traj, params)


# --- the built-in ResNet through the generic path ------------------------------------------
_RESNET_NAMES = {"embed": "W_e", "readout": "W_u", "U": "U", "V": "V", "W": "W"}


def _layer_names(model: ResNet) -> list[tuple[str, str, int]]:
    return [(f"{role}.{l}", role, l) for role in model.block_roles for l in range(model.shape.L)]


def resnet_params(model: ResNet) -> dict[str, torch.Tensor]:
    """The ``B`` networks of ``model`` as stacked parameters, network axis first and one entry
    per layer: ``"U.l"`` (B, D, M) (``"V.l"``, ``"W.l"`` alike), ``"W_e"`` (B, D, d_in) and
    ``"W_u"`` (B, D, d_out). Per-layer entries keep autograd from stacking gradients."""
    out = {"W_e": model.W_e.detach().clone(), "W_u": model.W_u.detach().clone()}
    for name, role, l in _layer_names(model):
        out[name] = getattr(model, role)[l].detach().clone()
    return out


@torch.no_grad()
def load_resnet_params(model: ResNet, params: Mapping[str, torch.Tensor]) -> None:
    """Write stacked parameters (the layout of :func:`resnet_params`) back into ``model``."""
    model.W_e.copy_(params["W_e"])
    model.W_u.copy_(params["W_u"])
    for name, role, l in _layer_names(model):
        getattr(model, role)[l].copy_(params[name])


def resnet_pass(model: ResNet) -> Callable[[dict[str, torch.Tensor], torch.Tensor], dict[str, torch.Tensor]]:
    """One network of ``model`` as a function of its parameters (the :func:`resnet_params`
    layout, network axis removed): ``{"y": (N, d_out), "hidden": (L+1, N, D), "h_last": (N, D),
    "pre": (L, N, M)}``, the forward of :meth:`ResNet.forward` with the records of
    :func:`reslim.train`.

    Each layer is its own parameter: differentiating ``ResNet.forward``, which indexes stacked
    ``(L, ...)`` weights layer by layer, costs a full-size zero gradient per layer in autograd's
    select backward, ``O(L^2 M D)`` per step (measured 100x slower than the fused path at
    (50, 301, 301)); ``unbind`` avoids that but stacks the gradients (a copy per step).
    """
    act = model.activation.fn
    two_layer = model.block == "two-layer"
    cU = model.mult("U") if two_layer else 1.0
    cV = model.beta * model.mult("V" if two_layer else "W")
    L = model.shape.L

    def run(p: dict[str, torch.Tensor], X: torch.Tensor) -> dict[str, torch.Tensor]:
        h = model.mult("embed") * torch.matmul(X, p["W_e"].mT)  # (N, D)
        hidden, pre = [h], []
        if two_layer:
            for l in range(L):
                z = cU * torch.matmul(h, p[f"U.{l}"])
                h = h + cV * torch.matmul(act(z), p[f"V.{l}"].mT)
                pre.append(z)
                hidden.append(h)
        else:
            for l in range(L):
                pre.append(h)
                h = h + cV * torch.matmul(act(h), p[f"W.{l}"].mT)
                hidden.append(h)
        y = model.mult("readout") * torch.matmul(h, p["W_u"])
        return {"y": y, "hidden": torch.stack(hidden), "h_last": h, "pre": torch.stack(pre)}

    return run


def train_generic(
    model: ResNet,
    data: Dataset,
    *,
    steps: int,
    lr: float | Sequence[float] = 1.0,
    optimizer: str = "gd",
    loss: str = "sum",
    batch_size: int | None = None,
    record: Iterable[str] = ("loss", "outputs", "h_last"),
    data_seed: int = 0,
    adam_betas: tuple[float, float] = (0.9, 0.999),
    adam_eps: float = 1e-8,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    divergence_factor: float | None = DIVERGENCE_FACTOR,
    threads: int | None = None,
) -> Trajectory:
    """:func:`reslim.train` for the built-in ResNet by the generic path: one network's forward
    (:func:`resnet_pass`) differentiated by autograd and mapped over the ``B`` networks with
    ``vmap`` (no fused kernels, no manual backward). Same arguments (but no ``gia`` and no
    ``low_rank``), same record; ``model`` is updated in place at the end."""
    if data.d_in != model.d_in or data.d_out != model.d_out:
        raise ValueError(f"data has (d_in, d_out) = ({data.d_in}, {data.d_out}), the network "
                         f"({model.d_in}, {model.d_out})")
    if isinstance(lr, (int, float)):
        base: float | torch.Tensor = float(lr)
    else:
        base = torch.tensor([float(v) for v in lr], dtype=model.dtype)
        if base.numel() != model.batch_size:
            raise ValueError(f"lr has {base.numel()} values for {model.batch_size} networks")
    if not bool(torch.all(torch.isfinite(torch.as_tensor(base)) & (torch.as_tensor(base) > 0))):
        raise ValueError(f"lr must be positive and finite, got {lr!r}")
    family = optimizer_family(optimizer)
    rate = {r: base * model.scales[r].lr(family) for r in model.trainable_roles()}
    lrs = {n: rate[r] for n, r, _ in _layer_names(model) if r in rate}
    lrs.update({_RESNET_NAMES[r]: rate[r] for r in ("embed", "readout") if r in rate})

    run = resnet_pass(model)

    def forward(p: dict[str, torch.Tensor], X: torch.Tensor) -> torch.Tensor:
        return run(p, X)["y"]

    res = train_batched(
        forward, resnet_params(model), data, lrs=lrs, steps=steps, optimizer=optimizer, loss=loss,
        batch_size=batch_size, record=record, states=run, data_seed=data_seed,
        adam_betas=adam_betas, adam_eps=adam_eps, callback=callback,
        divergence_factor=divergence_factor, depth=np.arange(model.shape.L + 1) / model.shape.L,
        meta={"gia": False, "shape": model.shape.as_tuple(), "parameterization": model.param.name,
              "block": model.block, "activation": model.activation.name, "seeds": model.seeds},
        threads_=threads)
    load_resnet_params(model, res.params)
    return res.trajectory
