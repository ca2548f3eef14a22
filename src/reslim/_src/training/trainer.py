"""Training: full-batch GD (the papers' protocol), minibatch SGD and Adam, with each
parameterization's per-role learning rates, on a batch of networks at once.

Risk: ``R = 1/(2 N c) sum_n ||y_n - Y_n||^2`` with ``c = 1`` (``loss="sum"``, the paper's
linear runs) or ``c = d_out`` (``loss="mean"``, its nonlinear runs). Role ``r`` trains with
learning rate ``lr * lr_r(shape)``; ``lr`` may be one number or one per network.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from ..models.resnet import BlockUpdate, LowRankDelta, ResNet, derive_seed, standard_normal
from ..scaling.parameterization import optimizer_family
from .data import Dataset
from .divergence import DIVERGENCE_FACTOR, blowup_bound, check_divergence_factor
from .trajectory import RECORDABLE, Trajectory

OPTIMIZERS = ("gd", "sgd", "adam")
LOSSES = ("sum", "mean")

class _SGDUpdate(BlockUpdate):
    """``w <- w - lr_r * grad`` fused into one in-place ``baddbmm`` per layer."""

    def __init__(self, model: ResNet, lrs: dict[str, torch.Tensor | float],
                 mirrors: dict[str, torch.Tensor] | None = None) -> None:
        self.model, self.lrs, self.mirrors = model, lrs, mirrors or {}
        self.tensors = model.role_tensors()

    def fused_coef(self, role: str, scale: float) -> torch.Tensor | None:
        """``-lr_b * scale`` per network (B,), for kernels that fuse the update; None when the
        update has more to do than ``w += coef * grad`` (GIA mirrors)."""
        if self.mirrors:
            return None
        lr = self.lrs[role]
        B = self.model.batch_size
        if isinstance(lr, torch.Tensor):
            return (-scale * lr).to(torch.float64).contiguous()
        return torch.full((B,), -scale * lr, dtype=torch.float64)

    def apply(self, role, layer, left, right, scale):
        param = self.tensors[role] if layer is None else self.tensors[role][layer]
        lr = self.lrs[role]
        if isinstance(lr, torch.Tensor):
            left = left * (-scale * lr).view(-1, 1, 1)
            coef = 1.0
        else:
            coef = -scale * lr
        mirror = self.mirrors.get(role)
        if mirror is not None:
            delta = torch.matmul(left, right).mul_(coef)
            param.add_(delta)
            mirror[layer].add_(delta)
        elif right.dim() == 2:
            param.add_(torch.matmul(left, right), alpha=coef)
        else:
            param.baddbmm_(left, right, alpha=coef)


class _LowRankSGDUpdate(_SGDUpdate):
    """Gradient steps on block weights appended to a :class:`LowRankDelta` (exact GD)."""

    def fused_coef(self, role, scale):
        return None

    def __init__(self, model: ResNet, lrs: dict[str, torch.Tensor | float], delta: LowRankDelta):
        super().__init__(model, lrs)
        self.delta = delta

    def apply(self, role, layer, left, right, scale):
        if layer is None:  # embedding and readout: small, dense
            return super().apply(role, layer, left, right, scale)
        lr = self.lrs[role]
        coef = (-scale * lr).view(-1, 1, 1) if isinstance(lr, torch.Tensor) else -scale * lr
        self.delta.store(role, layer, left * coef, right)


LOW_RANK_MIN_LAYER_BYTES = 24 * 2**20  # one layer's weight beyond the last-level cache
LOW_RANK_MAX_OVERHEAD = 0.5  # factor flops at most this fraction of a dense GEMM's


def low_rank_capacity(model: ResNet, n: int, steps: int) -> int:
    """Columns of the factored update store, or 0 where dense in-place updates are cheaper.

    A rank-r correction costs ``r (rows + cols)`` against ``rows cols`` per dense product, so
    the rank is capped at ``LOW_RANK_MAX_OVERHEAD rows cols / (rows + cols)`` (then flushed);
    worthwhile when that holds at least two steps and one layer's weight does not fit in the
    last-level cache (while it does, the dense in-place update re-reads it from cache: measured
    on a 32 MiB-L3 CPU, dense is as fast at (50, 1000, 1000) and ~15% slower at (50, 2000, 2000)).
    """
    L, M, D = model.shape.as_tuple()
    cols = M if model.block == "two-layer" else D
    layer_bytes = model.batch_size * D * cols * model.W_e.element_size()
    cap = int(LOW_RANK_MAX_OVERHEAD * D * cols / (D + cols)) // n * n
    if (model.device.type != "cpu" or layer_bytes < LOW_RANK_MIN_LAYER_BYTES or cap < 2 * n
            or steps < 2 or model.kernels_apply(n)):  # the fused kernels already stream once
        return 0
    return min(cap, steps * n)


class _AdamUpdate(BlockUpdate):
    """Adam (Kingma & Ba) with bias correction, per role and per layer, in place."""

    def __init__(self, model: ResNet, lrs: dict[str, torch.Tensor | float], betas=(0.9, 0.999),
                 eps: float = 1e-8, mirrors: dict[str, torch.Tensor] | None = None) -> None:
        self.model, self.lrs, self.mirrors = model, lrs, mirrors or {}
        self.tensors = model.role_tensors()
        self.b1, self.b2 = betas
        self.eps = eps
        self.state = {r: (torch.zeros_like(self.tensors[r]), torch.zeros_like(self.tensors[r]))
                      for r in model.trainable_roles()}
        self.t = 0

    def step_begin(self) -> None:
        self.t += 1

    def apply(self, role, layer, left, right, scale):
        grad = torch.matmul(left, right).mul_(scale)
        m, v = self.state[role]
        param = self.tensors[role]
        if layer is not None:
            m, v, param = m[layer], v[layer], param[layer]
        m.mul_(self.b1).add_(grad, alpha=1 - self.b1)
        v.mul_(self.b2).addcmul_(grad, grad, value=1 - self.b2)
        c1, c2 = 1 - self.b1**self.t, 1 - self.b2**self.t
        denom = (v / c2).sqrt_().add_(self.eps)
        lr = self.lrs[role]
        if isinstance(lr, torch.Tensor):
            delta = (m / denom).mul_((-lr / c1).view(-1, 1, 1))
        else:
            delta = (m / denom).mul_(-lr / c1)
        param.add_(delta)
        mirror = self.mirrors.get(role)
        if mirror is not None:
            mirror[layer].add_(delta)


def loss_and_grad(y: torch.Tensor, Y: torch.Tensor, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Risk per network (B,) and ``dR/dy`` (B, N, d_out) for outputs ``y`` (B, N, d_out)."""
    N, d_out = y.shape[-2], y.shape[-1]
    c = N * (d_out if loss == "mean" else 1)
    r = y - Y
    return 0.5 * r.square().sum(dim=(-1, -2)) / c, r / c


def gia_backward_weights(model: ResNet) -> dict[str, torch.Tensor]:
    """Independently initialised copies of every block weight (same law, other seeds)."""
    L, M, D = model.shape.as_tuple()
    out = {}
    for i, role in enumerate(model.block_roles):
        cols = M if role in ("U", "V") else D
        draws = [standard_normal(derive_seed(s, 100 + i), L, D, cols) for s in model.seeds]
        t = torch.stack(draws, dim=1) * model.scales[role].init_std
        out[role] = t.to(device=model.device, dtype=model.dtype).contiguous()
    return out


def _lr_tensor(lr: float | Sequence[float], model: ResNet) -> float | torch.Tensor:
    if isinstance(lr, (int, float)):
        lrs = [float(lr)]
    else:
        lrs = [float(v) for v in lr]
        if len(lrs) != model.batch_size:
            raise ValueError(f"lr has {len(lrs)} values for {model.batch_size} networks")
    if not all(np.isfinite(v) and v > 0 for v in lrs):
        raise ValueError(f"lr must be positive and finite, got {lr!r}")
    if len(lrs) == 1 or len(set(lrs)) == 1:
        return lrs[0]
    return torch.tensor(lrs, dtype=model.dtype, device=model.device)


# Elements per block GEMM below which one intra-op thread beats several. Measured on 2 cores,
# L=50, B=5, N=10, 15 GD steps, 1 vs 2 threads: M=D=64 (2e5) 0.20 vs 0.18 s idle, 0.20 vs 0.31 s
# with OMP_WAIT_POLICY=passive, and 9-17 s with 2 threads in ~3 of 10 processes on a busy host;
# M=D=96 (4.6e5) 0.36 vs 0.24 s idle. One thread up to 4e5 gives up <= 10% idle, never spins.
SMALL_WORK = 4e5


def _set_threads(n: int) -> None:
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


@contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Run the enclosed torch work on ``n`` intra-op CPU threads, restoring the previous count
    afterwards (``None``: leave it as it is). A per-task budget: with ``k`` jobs on ``c`` cores,
    ``threads(c // k)`` keeps them from oversubscribing the machine, and ``threads(1)`` keeps
    small work from paying OpenMP fork/join (see docs/models.md, "Threads")."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"threads must be a positive integer or None, got {n!r}")
    before = torch.get_num_threads()
    if n is not None:
        _set_threads(n)
    try:
        yield
    finally:
        _set_threads(before)


def small_work(model: ResNet, n_samples: int) -> bool:
    """Whether one block GEMM of ``model`` on ``n_samples`` samples (~B*N*max(M, D)*D elements)
    is below ``SMALL_WORK``, where one thread is faster than several."""
    L, M, D = model.shape.as_tuple()
    return model.device.type == "cpu" and model.batch_size * n_samples * max(M, D) * D < SMALL_WORK


@contextmanager
def thread_budget(model: ResNet, n_samples: int, n: int | None = None) -> Iterator[None]:
    """Run ``model``'s training on ``n`` threads, or when ``n`` is None on one thread for small
    networks (``small_work``) and the current count otherwise.

    Below ``SMALL_WORK`` the OpenMP fork/join of every op costs more than it gives (and stalls
    badly on a loaded machine: 10x and worse was measured on 2 busy cores). The setting is
    restored afterwards.
    """
    if n is None and small_work(model, n_samples):
        n = 1
    with threads(n):
        yield


def train(
    model: ResNet,
    data: Dataset,
    *,
    steps: int,
    lr: float | Sequence[float] = 1.0,
    optimizer: str = "gd",
    loss: str = "sum",
    batch_size: int | None = None,
    record: Iterable[str] = ("loss", "outputs", "h_last"),
    gia: bool = False,
    data_seed: int = 0,
    adam_betas: tuple[float, float] = (0.9, 0.999),
    adam_eps: float = 1e-8,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    low_rank: bool | None = None,
    divergence_factor: float | None = DIVERGENCE_FACTOR,
    threads: int | None = None,
) -> Trajectory:
    """Train ``model`` in place for ``steps`` updates; return the record of steps 0..steps.

    ``optimizer``: ``"gd"`` (full batch), ``"sgd"`` (minibatches of ``batch_size`` drawn
    without replacement from a generator seeded by ``data_seed``) or ``"adam"`` (full batch,
    or minibatches when ``batch_size`` is set). ``gia=True`` trains in the
    gradient-independence mode: the backward pass carries the gradient down through
    independently initialised copies of the block weights that receive the same updates.
    Records: any of ``loss, outputs, h_last, hidden, pre, test_loss``.

    GD and SGD keep the block updates of recent steps in factored form
    (:class:`LowRankDelta`) where that moves less memory; ``low_rank`` forces it on or off.
    Either way the trajectory is exact GD; the weights are up to date when ``train`` returns.

    Divergence: network ``b`` has diverged at step ``k`` (``Trajectory.diverged_at[b] = k``, its
    records NaN from step ``k`` on) at the first step whose full-batch training loss is
    non-finite or exceeds ``divergence_factor * max(loss_b(0), DIVERGENCE_FLOOR)`` (default
    ``1e6`` and ``1.0``); ``divergence_factor=None`` flags non-finite losses only. The other
    networks go on; training stops early once every network has diverged.

    ``threads``: intra-op CPU threads for this call (restored afterwards); ``None`` (default)
    uses one thread for small networks (``small_work``) and the current count otherwise.
    """
    factor = check_divergence_factor(divergence_factor)
    with thread_budget(model, data.N, threads):
        return _train(model, data, steps=steps, lr=lr, optimizer=optimizer, loss=loss,
                      batch_size=batch_size, record=record, gia=gia, data_seed=data_seed,
                      adam_betas=adam_betas, adam_eps=adam_eps, callback=callback,
                      low_rank=low_rank, factor=factor)


def check_options(steps, optimizer: str, loss: str, batch_size: int | None, record: Iterable[str],
                  data: Dataset) -> set[str]:
    """The checks every trainer makes of its options (one-line ValueErrors naming the option);
    returns what to record (always with ``loss``)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    wanted = set(record) | {"loss"}
    unknown = wanted - set(RECORDABLE) - {"test_loss"}
    if unknown:
        raise ValueError(f"cannot record {sorted(unknown)}; choose from {RECORDABLE + ('test_loss',)}")
    if batch_size is not None and (batch_size <= 0 or batch_size > data.N):
        raise ValueError(f"batch_size must be in 1..{data.N}, got {batch_size}")
    return wanted


def _train(model, data, *, steps, lr, optimizer, loss, batch_size, record, gia, data_seed,
           adam_betas, adam_eps, callback, low_rank, factor) -> Trajectory:
    record = check_options(steps, optimizer, loss, batch_size, record, data)
    if data.d_in != model.d_in or data.d_out != model.d_out:
        raise ValueError(f"data has (d_in, d_out) = ({data.d_in}, {data.d_out}), the network "
                         f"({model.d_in}, {model.d_out})")
    if optimizer == "sgd" and batch_size is None:
        batch_size = data.N

    family = optimizer_family(optimizer)
    base_lr = _lr_tensor(lr, model)
    lrs = {r: base_lr * model.scales[r].lr(family) for r in model.trainable_roles()}
    mirrors = gia_backward_weights(model) if gia else None
    n_step = data.N if batch_size is None else min(batch_size, data.N)
    delta = None
    if family == "adam":
        if low_rank:
            raise ValueError("low_rank applies to gd and sgd only (Adam updates are not low-rank)")
        update: BlockUpdate = _AdamUpdate(model, lrs, adam_betas, adam_eps, mirrors)
    else:
        capacity = low_rank_capacity(model, n_step, steps)
        if low_rank and capacity == 0:
            capacity = min(steps, 2) * n_step
        if low_rank is not False and capacity:
            targets = [{r: getattr(model, r) for r in model.block_roles}]
            if mirrors is not None:
                targets.append(mirrors)
            delta = LowRankDelta(model, capacity, targets)
            update = _LowRankSGDUpdate(model, lrs, delta)
        else:
            update = _SGDUpdate(model, lrs, mirrors)

    X = torch.as_tensor(data.X, dtype=model.dtype, device=model.device)
    Y = torch.as_tensor(data.Y, dtype=model.dtype, device=model.device)
    full_batch = batch_size is None or batch_size >= data.N
    rng = np.random.default_rng(data_seed)
    B = model.batch_size
    L = model.shape.L

    recs: dict[str, list[np.ndarray]] = {name: [] for name in record}
    diverged_at = np.full(B, -1, dtype=np.int64)
    bound = np.full(B, np.inf)  # loss above which a network has blown up (set at step 0)

    def to_np(t: torch.Tensor) -> np.ndarray:
        return t.detach().to("cpu", torch.float64).numpy()

    def record_step(k: int, cache) -> torch.Tensor:
        risk, dy = loss_and_grad(cache.y, Y, loss)
        r = to_np(risk)
        if k == 0:
            bound[:] = blowup_bound(r, factor)
        bad = (~np.isfinite(r) | (r > bound)) & (diverged_at < 0)
        diverged_at[bad] = k
        recs["loss"].append(r)
        if "outputs" in record:
            recs["outputs"].append(to_np(cache.y))
        if "h_last" in record:
            recs["h_last"].append(to_np(cache.hidden[-1]))
        if "hidden" in record:
            recs["hidden"].append(to_np(torch.stack(cache.hidden, 1)))
        if "pre" in record:
            recs["pre"].append(to_np(torch.stack(cache.pre, 1)))
        if "test_loss" in record:
            if data.X_test is None:
                raise ValueError("test_loss was requested but the data has no test split")
            test_cache = model.forward_cached(
                torch.as_tensor(data.X_test, dtype=model.dtype, device=model.device), delta)
            Ytest = torch.as_tensor(data.Y_test, dtype=model.dtype, device=model.device)
            recs["test_loss"].append(to_np(loss_and_grad(test_cache.y, Ytest, loss)[0]))
        return dy

    last = steps
    for k in range(steps + 1):
        cache = model.forward_cached(X, delta)
        dy = record_step(k, cache)
        if callback is not None:
            callback(k, torch.as_tensor(recs["loss"][-1]))
        if k == steps or (diverged_at >= 0).all():
            last = k
            break
        if isinstance(update, _AdamUpdate):
            update.step_begin()
        if full_batch:
            model.backward_update(X, cache, dy, update, mirrors, delta)
        else:
            idx = torch.as_tensor(np.sort(rng.choice(data.N, size=batch_size, replace=False)),
                                  device=model.device)
            mb_cache = model.forward_cached(X[idx], delta)
            _, mb_dy = loss_and_grad(mb_cache.y, Y[idx], loss)
            model.backward_update(X[idx], mb_cache, mb_dy, update, mirrors, delta)
        if delta is not None:
            delta.advance(n_step, n_step)
    if delta is not None:
        delta.flush()

    arrays = {name: np.stack(vals) for name, vals in recs.items()}
    if last < steps:  # every network diverged: pad the remaining steps with NaN
        for name, arr in arrays.items():
            pad = np.full((steps - last, *arr.shape[1:]), np.nan)
            arrays[name] = np.concatenate([arr, pad])
    for b in np.flatnonzero(diverged_at >= 0):
        for arr in arrays.values():
            arr[diverged_at[b]:, b] = np.nan
    return Trajectory(
        loss=arrays["loss"],
        outputs=arrays.get("outputs"),
        h_last=arrays.get("h_last"),
        hidden=arrays.get("hidden"),
        pre=arrays.get("pre"),
        test_loss=arrays.get("test_loss"),
        depth=np.arange(L + 1) / L,
        diverged_at=diverged_at,
        meta={"optimizer": optimizer, "loss": loss, "gia": gia, "steps": steps,
              "shape": model.shape.as_tuple(), "parameterization": model.param.name,
              "block": model.block, "activation": model.activation.name, "seeds": model.seeds},
    )
