"""Residual sub-blocks of a Transformer with attention heads as the units (docs/transformers.md).

One network, tokens ``t = 1..T`` of a sequence as rows: hidden state ``h`` (N, T, D). An
attention sub-block has ``M`` heads ``theta_j = (Q_j, K_j, V_j, O_j)``, ``Q_j, K_j`` (D, r),
``V_j, O_j`` (D, r_v), with ``r``, ``r_v`` fixed as ``D`` grows::

    u = norm(h)  (identity without a norm)
    q_j = m_Q Q_j^T u_t,  k_j = m_K K_j^T u_t,  v_j = m_V V_j^T u_t
    a_j(t, t') = softmax_{t'}( m_logit q_j(t) . k_j(t') )   (t' <= t with a causal mask)
    h_t <- h_t + beta m_O sum_j O_j sum_{t'} a_j(t, t') v_j(t')

and an MLP sub-block the two-layer block of the ResNet, applied to every token::

    h_t <- h_t + beta m_V' V' sigma(m_U' U'^T u_t)       U', V' (D, M)

The multipliers are plain floats given at construction (from a :class:`RoleTable`); the
weights are ordinary parameters named ``Q, K, V, O`` (stacked over heads, (M, D, r)) or
``U, V`` (MLP), so ``torch.func.functional_call`` and ``vmap`` over seeds apply unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

NORMS = (None, "layer", "rms")


def make_norm(norm: str | None, D: int, dtype: torch.dtype) -> nn.Module | None:
    """``nn.LayerNorm`` (gain ones, bias zeros), ``nn.RMSNorm`` (gain ones) or None."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of None, 'layer', 'rms', got {norm!r}")
    if norm == "layer":
        return nn.LayerNorm(D, dtype=dtype)
    if norm == "rms":
        return nn.RMSNorm(D, dtype=dtype)
    return None


def attention_heads(u: torch.Tensor, Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor,
                    O: torch.Tensor, *, m_q: float = 1.0, m_k: float = 1.0, m_v: float = 1.0,
                    m_o: float = 1.0, logit: float = 1.0, causal: bool = False) -> torch.Tensor:
    """``m_o sum_j O_j sum_t' softmax_t'(logit q_j(t).k_j(t')) v_j(t')`` for ``u`` (..., T, D),
    ``Q, K`` (M, D, r), ``V, O`` (M, D, r_v): the sum over the ``M`` heads, (..., T, D)."""
    q = torch.einsum("...td,mdr->...mtr", u, Q) * m_q
    k = torch.einsum("...td,mdr->...mtr", u, K) * m_k
    v = torch.einsum("...td,mdr->...mtr", u, V) * m_v
    logits = torch.matmul(q, k.transpose(-1, -2)) * logit  # (..., M, T, T)
    if causal:
        T = u.shape[-2]
        mask = torch.ones(T, T, dtype=torch.bool, device=u.device).triu(1)
        logits = logits.masked_fill(mask, float("-inf"))
    ctx = torch.matmul(torch.softmax(logits, dim=-1), v)  # (..., M, T, r_v)
    return torch.einsum("...mtr,mdr->...td", ctx, O) * m_o


class AttentionBlock(nn.Module):
    """``h + beta m_O sum_j O_j attn_j(norm(h))``: ``M`` heads of dimensions ``r``, ``r_v``."""

    def __init__(self, Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, O: torch.Tensor, *,
                 mults: dict[str, float], beta: float, logit: float, causal: bool,
                 norm: nn.Module | None) -> None:
        super().__init__()
        self.Q, self.K, self.V, self.O = (nn.Parameter(t) for t in (Q, K, V, O))
        self.m = {k: float(mults[k]) for k in ("Q", "K", "V", "O")}
        self.beta, self.logit, self.causal = float(beta), float(logit), bool(causal)
        self.norm = norm

    #: the block's input-role weights (the coordinate check's ``p``, ``du``: :meth:`input_maps`)
    input_weights = ("Q", "K", "V")

    def input_maps(self, h: torch.Tensor, weights: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """``(q, k, v)`` of every head for the block input ``h`` (..., T, D), multipliers applied,
        flattened and concatenated; with ``weights`` (name -> tensor, e.g. the changes since init)
        the same linear maps of ``u = norm(h)`` with those weights instead."""
        u = h if self.norm is None else self.norm(h)
        w = weights if weights is not None else {n: getattr(self, n) for n in self.input_weights}
        return torch.cat([(self.m[n] * torch.einsum("...td,mdr->...mtr", u, w[n])).reshape(-1)
                          for n in self.input_weights])

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        u = h if self.norm is None else self.norm(h)
        out = attention_heads(u, self.Q, self.K, self.V, self.O, m_q=self.m["Q"], m_k=self.m["K"],
                              m_v=self.m["V"], m_o=self.m["O"], logit=self.logit, causal=self.causal)
        return h + self.beta * out


class MLPBlock(nn.Module):
    """``h + beta m_V V sigma(m_U U^T norm(h))`` per token, ``U, V`` (D, M)."""

    def __init__(self, U: torch.Tensor, V: torch.Tensor, *, mults: dict[str, float], beta: float,
                 activation, norm: nn.Module | None) -> None:
        super().__init__()
        self.U, self.V = nn.Parameter(U), nn.Parameter(V)
        self.m_U, self.m_V = float(mults["mlp_U"]), float(mults["mlp_V"])
        self.beta = float(beta)
        self.act = activation.fn
        self.norm = norm

    input_weights = ("U",)

    def input_maps(self, h: torch.Tensor, weights: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Pre-activations ``m_U U^T norm(h)`` flattened (with ``weights["U"]`` instead of ``U``)."""
        u = h if self.norm is None else self.norm(h)
        U = weights["U"] if weights is not None else self.U
        return (self.m_U * torch.matmul(u, U)).reshape(-1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        u = h if self.norm is None else self.norm(h)
        z = self.m_U * torch.matmul(u, self.U)
        return h + (self.beta * self.m_V) * torch.matmul(self.act(z), self.V.mT)
