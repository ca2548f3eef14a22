"""The mean-field view of a residual network (docs/mean-field.md; Lu, Ma, Lu, Lu, Ying, *A
Mean-field Analysis of Deep ResNet and Beyond*, arXiv 2003.05508).

A residual network ``h_{l+1} = h_l + g_l(h_l)``, ``l = 0..L-1``, is read as the Euler scheme of
``dX/dt = int f(X, theta) rho(theta, t) dtheta`` with step ``1/L`` and ``g_l = f(., theta_l) / L``:
its blocks are particles of a law ``rho`` of parameters over depth. This module gives, for
reslim's :class:`~reslim._src.models.resnet.ResNet` and for any ``nn.Module`` whose residual
blocks are listed (``stages``: lists of interchangeable, shape-preserving blocks):

- :meth:`depth_statistics`: per-depth statistics of the parameter law (one row per block);
- :meth:`adjoint`: ``p_l = dl/dh_l`` (per-sample loss ``l``) by the discrete adjoint equation
  ``p_l = p_{l+1} + (dg_l/dh)^T p_{l+1}``, ``p_L = dl/dh_L`` (the Euler scheme of
  ``dp/dt = -(int grad_X f rho)^T p``, ``p(1) = grad loss``);
- :meth:`first_variation`: ``E_x[p_{l+1}(x)^T g(h_l(x); theta)]`` for any parameters ``theta``
  of block ``l``'s architecture: to first order, the change of the risk ``E`` when block ``l``'s
  parameters become ``theta`` is ``first_variation(theta) - first_variation(theta_l)``. In the
  continuum normalisation (``f = L g``, depth slices of mass ``1/L``) this is ``dE/drho(theta,
  t_l) / L`` of the paper;
- :meth:`surrogate`: the shallow-ensemble model, every stage ``h -> h + sum_l g_l(h)`` (that is
  ``x + mean_l f(x, theta_l)``), sharing the network's parameters (trainable, evaluable); for a
  one-block stage it is the network itself;
- :meth:`permute`: reorder the blocks of a stage (with their optimizer state), the move of the
  training schemes (:mod:`reslim._src.training.schemes`).

Per-sample losses: ``loss(output, target)`` returns one loss per sample (``(N,)``, or
``(B, N)`` for a batch of ``B`` built-in networks); the risk is ``E`` = the sum over networks of
the mean over samples, so ``p`` is ``N`` times the gradient of ``E`` with respect to the states.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.func import functional_call

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def squared_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(1/2) ||y - Y||^2`` per sample (summed over the last axis)."""
    return 0.5 * ((output - target) ** 2).sum(-1)


def cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per sample; ``target``: class indices ``(N,)`` or one-hot ``(N, C)``."""
    if target.dim() == output.dim():
        target = target.argmax(-1)
    return nn.functional.cross_entropy(output, target, reduction="none")


def default_branch(block: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """The residual branch ``g(h) = block(h) - h`` of a block whose forward is ``h + g(h)``."""
    return block(h) - h


def _risk(per_sample: torch.Tensor) -> torch.Tensor:
    return per_sample.mean(-1).sum()


def permute_optimizer_state(optimizer: torch.optim.Optimizer | None, param: torch.Tensor,
                            perm: torch.Tensor, dim: int = 0) -> None:
    """Permute ``param``'s optimizer buffers (momentum, Adam moments) along ``dim`` like the
    parameter itself (for parameters that stack blocks, as the built-in ResNet's ``U``, ``V``)."""
    if optimizer is None or param not in optimizer.state:
        return
    for k, v in optimizer.state[param].items():
        if torch.is_tensor(v) and v.shape == param.shape:
            optimizer.state[param][k] = v.index_select(dim, perm.to(v.device))


class ModuleBlocks:
    """Mean-field view of a user ``nn.Module`` whose residual blocks are listed.

    ``stages``: the ``nn.ModuleList``\\ s that ``model.forward`` iterates over (``for blk in
    stage: h = blk(h)``), each holding interchangeable blocks that map a state to one of the same
    shape; blocks of a stage are consecutive in the forward pass (anything else, such as a
    downsampling transition, sits between stages). ``branch(block, h)`` is the block's residual
    branch ``g`` (default: ``block(h) - h``). A model with a ``residual_stages()`` method can be
    passed alone.
    """

    def __init__(self, model: nn.Module, stages: Sequence[nn.ModuleList] | None = None,
                 branch: Callable[[nn.Module, torch.Tensor], torch.Tensor] = default_branch) -> None:
        if stages is None:
            getter = getattr(model, "residual_stages", None)
            if getter is None:
                raise ValueError("stages: give the model's lists of residual blocks (or define "
                                 "model.residual_stages())")
            stages = getter()
        self.model = model
        self.stages: list[nn.ModuleList] = list(stages)
        if not self.stages or any(len(s) == 0 for s in self.stages):
            raise ValueError("stages must be non-empty lists of blocks")
        self.branch = branch

    # --- structure --------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return sum(len(s) for s in self.stages)

    def blocks(self) -> list[tuple[int, int, nn.Module]]:
        """``(stage, index in stage, block)`` in forward order."""
        return [(s, i, b) for s, st in enumerate(self.stages) for i, b in enumerate(st)]

    def block_parameters(self, stage: int, index: int) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.stages[stage][index].named_parameters()}

    def depth_statistics(self) -> pd.DataFrame:
        """One row per block: stage, index, depth ``t = (l + 1/2) / L``, number of parameters,
        parameter norm, mean, standard deviation and largest magnitude."""
        rows = []
        L = self.depth
        for l, (s, i, blk) in enumerate(self.blocks()):
            flat = torch.cat([p.detach().reshape(-1).double().cpu() for p in blk.parameters()]) \
                if any(True for _ in blk.parameters()) else torch.zeros(1, dtype=torch.float64)
            rows.append({"stage": s, "index": i, "t": (l + 0.5) / L, "params": int(flat.numel()),
                         "norm": float(flat.norm()), "mean": float(flat.mean()),
                         "std": float(flat.std()) if flat.numel() > 1 else 0.0,
                         "max_abs": float(flat.abs().max())})
        return pd.DataFrame(rows)

    # --- states and adjoint -----------------------------------------------------------------
    def _forward_capturing(self, X: torch.Tensor) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
        """Output, and per stage the states ``[h_in of each block..., h_out of the last]``."""
        states: list[list[torch.Tensor]] = [[] for _ in self.stages]
        handles = []
        for s, stage in enumerate(self.stages):
            last = len(stage) - 1
            for i, blk in enumerate(stage):
                def pre(_m, args, s=s):
                    states[s].append(args[0])

                handles.append(blk.register_forward_pre_hook(pre))
                if i == last:
                    def post(_m, _args, out, s=s):
                        states[s].append(out)

                    handles.append(blk.register_forward_hook(post))
        try:
            out = self.model(X)
        finally:
            for h in handles:
                h.remove()
        for s, st in enumerate(states):
            if len(st) != len(self.stages[s]) + 1:
                raise RuntimeError(f"stage {s}: the forward pass called its blocks {len(st) - 1} times, "
                                   f"expected {len(self.stages[s])} (once each)")
        return out, states

    def hidden_states(self, X: torch.Tensor) -> list[list[torch.Tensor]]:
        """Per stage, the states entering each block and leaving the last (detached)."""
        with torch.no_grad():
            _, states = self._forward_capturing(X)
        return [[h.detach() for h in st] for st in states]

    def adjoint(self, X: torch.Tensor, Y: torch.Tensor, loss: LossFn = cross_entropy
                ) -> list[list[torch.Tensor]]:
        """Per stage, ``p`` at every block input and at the stage output (same layout as
        :meth:`hidden_states`). The stage outputs' ``p`` comes from autograd through the rest of
        the network; inside a stage ``p`` follows the discrete adjoint equation, one
        vector-Jacobian product of each block."""
        with torch.enable_grad():
            out, states = self._forward_capturing(X)
            n = out.shape[0]
            ends = [st[-1] for st in states]
            p_end = torch.autograd.grad(_risk(loss(out, Y)), ends, allow_unused=True)
        result = []
        for s, stage in enumerate(self.stages):
            pe = p_end[s]
            p = (torch.zeros_like(ends[s]) if pe is None else pe) * n
            ps = [p.detach()]
            for i in range(len(stage) - 1, -1, -1):
                h = states[s][i].detach().requires_grad_(True)
                with torch.enable_grad():
                    (p,) = torch.autograd.grad(stage[i](h), h, grad_outputs=p)
                ps.append(p.detach())
            result.append(ps[::-1])
        return result

    def first_variation(self, X: torch.Tensor, Y: torch.Tensor, stage: int, index: int,
                        params: dict[str, torch.Tensor] | None = None, loss: LossFn = cross_entropy,
                        _cache: tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]] | None = None
                        ) -> float:
        """``E_x[p_{l+1}(x) . g(h_l(x); theta)]`` for block ``(stage, index)`` with parameters
        ``params`` (default: its own); module docstring."""
        hs, ps = _cache if _cache is not None else (self.hidden_states(X), self.adjoint(X, Y, loss))
        blk = self.stages[stage][index]
        h, p = hs[stage][index], ps[stage][index + 1]
        theta = dict(blk.named_parameters()) if params is None else params
        with torch.no_grad():
            g = functional_call(blk, {**dict(blk.named_buffers()), **theta}, (h,)) - h
        return float((p * g).reshape(p.shape[0], -1).sum(1).mean())

    # --- surrogate and reordering -----------------------------------------------------------
    def surrogate(self) -> nn.Module:
        """The shallow-ensemble model (shares the parameters; module docstring)."""
        return _ModuleSurrogate(self)

    @contextmanager
    def ensembled(self):
        """Within the context, each stage holds one block ``h -> h + sum_l g_l(h)``."""
        saved = [list(st) for st in self.stages]
        try:
            for st, blocks in zip(self.stages, saved, strict=True):
                ens = _Ensemble(blocks, self.branch)
                for _ in range(len(st)):
                    del st[0]
                st.append(ens)
            yield
        finally:
            for st, blocks in zip(self.stages, saved, strict=True):
                for _ in range(len(st)):
                    del st[0]
                st.extend(blocks)

    def permute(self, stage: int, perm: Sequence[int], optimizer: torch.optim.Optimizer | None = None
                ) -> None:
        """Reorder stage ``stage``: block ``i`` becomes the old block ``perm[i]``. Parameters move
        with their modules, so optimizer state (keyed by parameter) follows them."""
        st = self.stages[stage]
        perm = [int(i) for i in perm]
        if sorted(perm) != list(range(len(st))):
            raise ValueError(f"perm must be a permutation of 0..{len(st) - 1}, got {perm}")
        blocks = list(st)
        for i, j in enumerate(perm):
            st[i] = blocks[j]


class _Ensemble(nn.Module):
    def __init__(self, blocks: list[nn.Module], branch) -> None:
        super().__init__()
        self._blocks = blocks  # a plain list: not re-registered (the model owns them)
        self._branch = branch

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = h
        for b in self._blocks:
            out = out + self._branch(b, h)
        return out


class _ModuleSurrogate(nn.Module):
    def __init__(self, view: ModuleBlocks) -> None:
        super().__init__()
        self.net = view.model
        self._view = view

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        with self._view.ensembled():
            return self.net(X)


class ResNetBlocks:
    """Mean-field view of reslim's :class:`~reslim._src.models.resnet.ResNet` (two-layer blocks:
    ``g_l(h) = beta m_V V_l sigma(m_U U_l^T h)``; one-layer blocks likewise with ``W_l``), in
    closed form: all ``B`` networks at once, one stage of ``L`` blocks.

    For two-layer blocks the law over depth is also a law of *units*: ``g_l = (1/M) sum_j
    f(h; u_j, v_j)`` with ``f(h; u, v) = M beta m_V v sigma(m_U u . h)``, and
    :meth:`unit_first_variation` evaluates ``E_x[p_{l+1} . f(h_l; u, v)]`` at any units: its
    gradient at the network's unit ``j`` is ``M`` times the risk's gradient with respect to
    ``(u_j, v_j)`` (the Wasserstein gradient of the mean-field flow).
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.roles = tuple(model.block_roles)

    @property
    def depth(self) -> int:
        return int(self.model.shape.L)

    def _branch(self, l: int, h: torch.Tensor, weights: dict[str, torch.Tensor] | None = None
                ) -> torch.Tensor:
        m = self.model
        act = m.activation.fn
        w = weights if weights is not None else {r: getattr(m, r)[l] for r in self.roles}
        if m.block == "two-layer":
            return m.beta * m.mult("V") * torch.matmul(act(m.mult("U") * torch.matmul(h, w["U"])), w["V"].mT)
        return m.beta * m.mult("W") * torch.matmul(act(h), w["W"].mT)

    def depth_statistics(self) -> pd.DataFrame:
        """One row per (block, network): for two-layer blocks the mean and spread of the unit
        norms ``|u_j|, |v_j|`` (over the ``M`` units), the mean alignment ``u_j . v_j / (|u||v|)``
        and the sliced Wasserstein-2 distance of the unit cloud to the next block's (the
        smoothness of ``rho`` in depth); for one-layer blocks the norm of ``W_l``."""
        m = self.model
        rows = []
        L = self.depth
        B = m.batch_size
        gen = torch.Generator().manual_seed(0)
        for l in range(L):
            for b in range(B):
                row: dict[str, Any] = {"layer": l, "t": (l + 0.5) / L, "network": b}
                if m.block == "two-layer":
                    U, V = m.U[l, b].detach().double().cpu(), m.V[l, b].detach().double().cpu()  # (D, M)
                    nu, nv = U.norm(dim=0), V.norm(dim=0)
                    row.update({"u_norm_mean": float(nu.mean()), "u_norm_std": float(nu.std()),
                                "v_norm_mean": float(nv.mean()), "v_norm_std": float(nv.std()),
                                "alignment": float(((U * V).sum(0) / (nu * nv).clamp_min(1e-300)).mean())})
                    if l + 1 < L:
                        nxt = torch.cat([m.U[l + 1, b], m.V[l + 1, b]]).detach().double().cpu()
                        row["sliced_w2_next"] = _sliced_w2(torch.cat([U, V]).T, nxt.T, gen)
                    else:
                        row["sliced_w2_next"] = float("nan")
                else:
                    row["w_norm"] = float(m.W[l, b].detach().double().norm())
                rows.append(row)
        return pd.DataFrame(rows)

    def hidden_states(self, X: torch.Tensor) -> list[torch.Tensor]:
        """``h_0..h_L``, each ``(B, N, D)`` (detached)."""
        m = self.model
        with torch.no_grad():
            h = m.mult("embed") * torch.matmul(m.inputs(X), m.W_e.mT)
            hs = [h]
            for l in range(self.depth):
                h = h + self._branch(l, h)
                hs.append(h)
        return hs

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.mult("readout") * torch.matmul(h, self.model.W_u)

    def adjoint(self, X: torch.Tensor, Y: torch.Tensor, loss: LossFn = squared_loss) -> list[torch.Tensor]:
        """``p_0..p_L`` (each ``(B, N, D)``) by the closed-form adjoint recursion (two-layer
        blocks: ``p_l = p_{l+1} + m_U [sigma'(a_l) * (beta m_V p_{l+1} V_l)] U_l^T``)."""
        m = self.model
        hs = self.hidden_states(X)
        Yt = torch.as_tensor(Y, dtype=hs[-1].dtype, device=hs[-1].device)
        hL = hs[-1].clone().requires_grad_(True)
        with torch.enable_grad():
            (p,) = torch.autograd.grad(loss(self.readout(hL), Yt).sum(), hL)  # per-sample gradient
        ps = [p]
        act = m.activation
        with torch.no_grad():
            for l in range(self.depth - 1, -1, -1):
                h = hs[l]
                if m.block == "two-layer":
                    pre = m.mult("U") * torch.matmul(h, m.U[l])
                    q = (m.beta * m.mult("V")) * torch.matmul(p, m.V[l]) * act.grad(pre, act.fn(pre))
                    p = p + m.mult("U") * torch.matmul(q, m.U[l].mT)
                else:
                    q = (m.beta * m.mult("W")) * torch.matmul(p, m.W[l]) * act.grad(h, act.fn(h))
                    p = p + q
                ps.append(p)
        return ps[::-1]

    def risk(self, X: torch.Tensor, Y: torch.Tensor, loss: LossFn = squared_loss) -> float:
        with torch.no_grad():
            out = self.model(X)
        return float(_risk(loss(out, torch.as_tensor(Y, dtype=out.dtype, device=out.device))))

    def first_variation(self, X: torch.Tensor, Y: torch.Tensor, layer: int,
                        weights: dict[str, torch.Tensor] | None = None, loss: LossFn = squared_loss
                        ) -> torch.Tensor:
        """``E_x[p_{l+1} . g(h_l; theta)]`` per network ``(B,)``; ``weights``: block weights by
        role, each ``(B, D, cols)`` (default: the network's own)."""
        hs, ps = self.hidden_states(X), self.adjoint(X, Y, loss)
        with torch.no_grad():
            g = self._branch(layer, hs[layer], weights)
        return (ps[layer + 1] * g).sum(-1).mean(-1)

    def unit_first_variation(self, X: torch.Tensor, Y: torch.Tensor, layer: int, u: torch.Tensor,
                             v: torch.Tensor, loss: LossFn = squared_loss,
                             _cache: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None
                             ) -> torch.Tensor:
        """``E_x[p_{l+1} . f(h_l; u_k, v_k)]`` for candidate units ``u, v`` ``(B, D, K)``:
        ``(B, K)``; differentiable in ``u, v`` (class docstring)."""
        m = self.model
        if m.block != "two-layer":
            raise ValueError("unit_first_variation needs two-layer blocks")
        hs, ps = _cache if _cache is not None else (self.hidden_states(X), self.adjoint(X, Y, loss))
        h, p = hs[layer], ps[layer + 1]  # (B, N, D)
        a = m.activation.fn(m.mult("U") * torch.matmul(h, u))  # (B, N, K)
        pv = torch.matmul(p, v)  # (B, N, K)
        return m.shape.M * m.beta * m.mult("V") * (a * pv).mean(-2)

    def surrogate(self) -> nn.Module:
        """``y = readout(h_0 + sum_l g_l(h_0))`` (shares the network's parameters)."""
        return _ResNetSurrogate(self)

    def permute(self, stage: int, perm: Sequence[int], optimizer: torch.optim.Optimizer | None = None
                ) -> None:
        """Reorder the blocks (every network alike): layer ``i`` takes old layer ``perm[i]``;
        optimizer buffers of ``U, V`` (or ``W``) are permuted alike."""
        if stage != 0:
            raise ValueError("the built-in ResNet has one stage (0)")
        perm_t = torch.as_tensor([int(i) for i in perm], dtype=torch.long)
        if sorted(perm_t.tolist()) != list(range(self.depth)):
            raise ValueError(f"perm must be a permutation of 0..{self.depth - 1}")
        with torch.no_grad():
            for r in self.roles:
                w = getattr(self.model, r)
                w.copy_(w.index_select(0, perm_t.to(w.device)))
                permute_optimizer_state(optimizer, w, perm_t)

    @property
    def stages(self) -> list[list[int]]:
        return [list(range(self.depth))]


class _ResNetSurrogate(nn.Module):
    def __init__(self, view: ResNetBlocks) -> None:
        super().__init__()
        self.net = view.model
        self._view = view

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        m, v = self.net, self._view
        h0 = m.mult("embed") * torch.matmul(m.inputs(X), m.W_e.mT)
        h = h0
        for l in range(v.depth):
            h = h + v._branch(l, h0)
        return v.readout(h)


def _sliced_w2(a: torch.Tensor, b: torch.Tensor, gen: torch.Generator, n_proj: int = 64) -> float:
    """Sliced Wasserstein-2 distance between two equal-size point clouds ``(n, d)``."""
    dirs = torch.randn(a.shape[1], n_proj, generator=gen, dtype=a.dtype)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa, _ = torch.sort(a @ dirs, dim=0)
    pb, _ = torch.sort(b @ dirs, dim=0)
    return float(((pa - pb) ** 2).mean().sqrt())


def mean_field_view(model: nn.Module, stages: Sequence[nn.ModuleList] | None = None,
                    branch: Callable[[nn.Module, torch.Tensor], torch.Tensor] = default_branch
                    ) -> ResNetBlocks | ModuleBlocks:
    """The mean-field view of ``model``: :class:`ResNetBlocks` for reslim's ResNet, else
    :class:`ModuleBlocks` over ``stages`` (or ``model.residual_stages()``)."""
    from ..models.resnet import ResNet

    if isinstance(model, ResNet) and stages is None:
        return ResNetBlocks(model)
    return ModuleBlocks(model, stages, branch)


def block_statistic(view: ResNetBlocks | ModuleBlocks, stage: int, name: str = "norm") -> np.ndarray:
    """A per-block scalar of stage ``stage`` (in order): ``norm`` (parameter norm; for the built-in
    ResNet the mean over networks of ``|U_l|^2 + |V_l|^2`` square-rooted), used to sort blocks."""
    if name != "norm":
        raise ValueError(f"unknown block statistic {name!r} (known: norm)")
    if isinstance(view, ResNetBlocks):
        m = view.model
        tot = sum(getattr(m, r).detach().double().pow(2).sum(dim=(2, 3)) for r in view.roles)
        return np.sqrt(np.asarray(tot.mean(dim=1).cpu()))
    return np.array([math.sqrt(sum(float((p.detach().double() ** 2).sum()) for p in b.parameters()))
                     for b in view.stages[stage]])
