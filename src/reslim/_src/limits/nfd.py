"""Neural Feature Dynamics (NFD): the joint infinite-width, infinite-depth limit of SGD/GD training
of one-layer-block ResNets under depth-muP (docs/limits.md "NFD"; docs/theory.md; Yao, Wu & Gao,
*Feature Learning Dynamics in Infinite-Depth Neural Networks*, arXiv 2512.21075, earlier titled
*Understanding Scaling Laws in Deep Neural Networks via Feature Learning Dynamics*).

Finite model (width ``N``, depth ``L``, ``P`` training samples, frozen embedding and readout)::

    h^0 = s_e W_e x,   h^{l+1} = h^l + alpha L^{-1/2} N^{-1/2} W^l phi(h^l),   f = w^T psi(h^L) / (gamma_0 N)

``W^l``, ``W_e``, ``w`` i.i.d. N(0, 1); ``psi = id`` (``readout="linear"``: reslim's ``ResNet`` with
``block="one-layer"``, ``param="depth-mup"``, gamma_0 = 1) or ``psi = phi`` (``readout="phi"``, the
paper's form). SGD on ``R_B = 1/(2 b c) sum_{mu in B} |f_mu - Y_mu|^2`` with lr ``eta gamma_0^2 N``
on every ``W^l``. With ``g = gamma_0 N df/dh`` and the loss-weighted backward field
``e_mu = sum_o (Y - f)_{mu o} g_{mu o}`` the update is ``dW^l(s) = alpha eta gamma_0 /(b c sqrt(L N))
sum_{mu in B_s} e^{l+1}_mu(s) phi(h^l_mu(s))^T``.

The limit N -> oo, in depth time ``tau = l / L``, for one coordinate ("particle")::

    dh(x,t) = alpha dchi(x,t) + alpha^2 kappa sum_{s<t} sum_{mu in B_s} e_mu(tau, s) Phi(tau; mu s, x t) dtau
    -de(x,t) = phi'(h(x,t)) [alpha dxi(x,t)
                + alpha^2 kappa sum_{s<t} sum_{mu in B_s} phi(h_mu(tau, s)) G(tau; mu s, x t) dtau]
    e(1,x,t) = psi'(h(1,x,t)) w.(Y - f)(x,t),   f(x,t) = E[w psi(h(1,x,t))] / gamma_0,
    kappa = eta gamma_0 / (b c)

(``de`` is read backward: ``e(tau) = e(tau + dtau) + phi'(h(tau)) [...]``), with the McKean-Vlasov
kernels ``Phi(tau; x t, x' t') = E[phi(h(tau,x,t)) phi(h(tau,x',t'))]``, ``G(tau; .) = E[e(tau, x, t)
e(tau, x', t')]`` and the fields (option ``coupling``)::

    dchi(x,t) = du(x,t) + alpha dtau sum_{s<t} sum_{mu in B_s} Ahat(tau; x t, mu s) e_mu(tau, s)
    dxi(x,t)  = dv(x,t) + alpha dtau [sum_{s<t} sum_{mu in B_s} Bhat(tau; x t, mu s) phi(h_mu(tau, s))
                                      + Bhat(tau; x t, x t) phi(h(tau, x, t))]

``u``, ``v`` independent centred Gaussian processes, ``E[du du'] = Phi dtau``, ``E[dv dv'] = G dtau``.
``coupling="reused"`` (default): the network's backward pass reuses the forward weights ``W^l`` and
``Ahat``, ``Bhat`` are its response functions (dynamical mean-field theory, Bordelon & Pehlevan,
arXiv 2205.09653: ``Ahat = E[d phi(h(tau,x,t)) / d(alpha dv(tau; mu s))]``, ``Bhat =
E[d e(tau,x,t) / d(alpha du(tau; x' s))]``, the responses of a coordinate to a kick of its own
Gaussian field at the same depth); they vanish at step 0 and only past steps' batch points enter,
plus, for ``Bhat``, the same point at the same step (the backward at step t follows that step's
forward). The responses are O(1) in this normalisation, i.e. O(L^{-1/2}) per layer in the network
(``A^l = alpha L^{-1/2} Ahat``), so their terms are O(1/L) per layer and O(1) over the depth: they do
not vanish as L -> oo. ``coupling="gia"``: ``Ahat = Bhat = 0``, the decoupled system (the limit of
networks trained with independent backward weights, ``reslim.train(..., gia=True)``).

Responses by Stein's lemma on the particles: the Gaussian fields of layer ``l`` at the stored points
are ``z C^T`` (whitened draws ``z``, Cholesky factor ``C`` of the kernel), so ``A^l = E[phi(h^l) z^T]
C_v^{-1}`` and the term ``A^l e_D = e_D C_v^{-T} E[z phi(h^l)]``: ``e_D C_v^{-T}`` (the stored backward
values whitened, kept as the factor grows) times an S-sample mean; ``B`` likewise from the forward
draws, its same-step diagonal from the step's fresh draws and conditional factor. Control variate:
the same function at step 0 (``phi(h^l(x, 0))``, ``e^{l+1}(x, 0)``), uncorrelated with every draw it
is paired with. Cost about 1.6-1.9x the decoupled solve.

Discretisation: Euler-Maruyama on the uniform grid ``tau_l = l / L`` (option ``L``). The scheme is the
infinite-width network of depth ``L`` itself (ordinary with ``coupling="reused"``, GIA-trained with
``"gia"``), so its depth error is the finite-depth error of such networks (weak order 1, O(1/L); the
paper's bound for finite networks is O(1/L)). Causal in the step ``t``: at step ``t`` the forward fields
``chi`` of all evaluated points are drawn *conditioned* on the fields the particle drew at the batch
points of earlier steps (exact Gaussian conditioning on the kernel estimated so far, kept as a growing
Cholesky factor per layer), then the backward fields likewise. Kernels are estimated from the ``S``
particles of a replica; ``replicas`` independent particle systems give the error estimate (standard
error of the mean over replicas). Outputs use the control variate ``f = E[w (psi(h^L(t)) - psi(h^L(0)))]
/ gamma_0`` (exact: ``E[w psi(h^L(0))] = 0``).

API::

    problem = NFDProblem(X, Y, steps=10, lr=0.5, batch_size=8)      # see NFDProblem
    traj = NFDLimit(L=64, particles=4096, replicas=4).solve(problem)  # reslim.Trajectory; coupling="gia"
                                                                       # for GIA-trained networks
    traj.outputs (K+1, 1, P, d_out), traj.loss (K+1, 1), traj.test_loss, traj.depth (L+1,)
    traj.meta: output_stderr, loss_stderr, test_outputs, Phi, G (+ _stderr) at kernel_steps, ...
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..models.activations import ACTIVATIONS, get_activation
from ..models.resnet import derive_seed
from ..training.divergence import DIVERGENCE_FACTOR, blowup_bound
from ..training.trainer import threads
from ..training.trajectory import Trajectory
from .base import LOSSES, Limit
from .base import _positive as _pos
from .deep_linear import _int

OPTIMIZERS = ("gd", "sgd")
COUPLINGS = ("reused", "gia")
READOUTS = ("linear", "phi")
#: particles x points x max(points, stored points) below which one CPU thread is used (measured on
#: 2 busy cores: the bench problem, 1024 x 16 x 40, takes 5.0 s on one thread and 21 s on two)
SMALL_WORK = 2e7


def _matrix(name: str, v, cols: int | None = None) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[0] == 0 or (cols is not None and a.shape[1] != cols):
        want = "(n, d)" if cols is None else f"(n, {cols})"
        raise ValueError(f"{name} must have shape {want}, got {np.shape(v)}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains non-finite values")
    return a


def sgd_batches(N: int, batch_size: int | None, steps: int, data_seed: int = 0) -> np.ndarray:
    """The minibatch indices ``reslim.train`` draws (``(steps, b)``, sorted rows): without
    replacement from ``np.random.default_rng(data_seed)``, one batch per update; all ``N`` samples
    every step when ``batch_size`` is None or >= N (full batch)."""
    if batch_size is None or batch_size >= N:
        return np.tile(np.arange(N), (steps, 1))
    rng = np.random.default_rng(data_seed)
    return np.stack([np.sort(rng.choice(N, size=batch_size, replace=False)) for _ in range(steps)]
                    ) if steps else np.zeros((0, batch_size), dtype=np.int64)


@dataclass(frozen=True)
class NFDProblem:
    """A one-layer-block depth-muP training problem for :class:`NFDLimit`.

    - ``X`` (P, d_in), ``Y`` (P, d_out): training set; ``X_test``, ``Y_test``: optional test set
    - ``steps``: number of updates K (records 0..K); ``lr``: eta (network lr ``eta gamma_0^2 N``)
    - ``gamma0``: readout scale ``f = w^T psi(h^L)/(gamma_0 N)``; ``alpha``: branch constant
    - ``optimizer``: ``"gd"`` (full batch) or ``"sgd"`` (minibatches ``batches`` (K, b) of sample
      indices, or drawn as :func:`reslim.train` draws them from ``batch_size`` and ``data_seed``)
    - ``activation``: phi; ``readout``: ``"linear"`` (psi = id, reslim's ResNet) or ``"phi"``
    - ``loss``: ``"sum"`` (c = 1) or ``"mean"`` (c = d_out), as :func:`reslim.train`
    - ``embed_std``: ``h^0 = embed_std W_e x`` (reslim's depth-mup: 1), kernel ``embed_std^2 x.x'``
    """

    X: np.ndarray
    Y: np.ndarray
    steps: int
    lr: float = 0.5
    gamma0: float = 1.0
    alpha: float = 1.0
    optimizer: str = "gd"
    batch_size: int | None = None
    data_seed: int = 0
    batches: np.ndarray | None = None
    activation: str = "tanh"
    readout: str = "linear"
    loss: str = "sum"
    embed_std: float = 1.0
    X_test: np.ndarray | None = None
    Y_test: np.ndarray | None = None

    def __post_init__(self) -> None:
        X = _matrix("X", self.X)
        Y = _matrix("Y", self.Y)
        if X.shape[0] != Y.shape[0]:
            raise ValueError(f"X and Y must have as many rows, got {X.shape[0]} and {Y.shape[0]}")
        object.__setattr__(self, "X", X)
        object.__setattr__(self, "Y", Y)
        object.__setattr__(self, "steps", _int("steps", self.steps, 0))
        for name in ("lr", "gamma0", "alpha", "embed_std"):
            object.__setattr__(self, name, _pos(name, getattr(self, name)))
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {', '.join(READOUTS)}, got {self.readout!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        get_activation(self.activation)
        if (self.X_test is None) != (self.Y_test is None):
            raise ValueError("X_test and Y_test must be given together")
        if self.X_test is not None:
            Xt, Yt = _matrix("X_test", self.X_test, X.shape[1]), _matrix("Y_test", self.Y_test, Y.shape[1])
            if Xt.shape[0] != Yt.shape[0]:
                raise ValueError("X_test and Y_test must have as many rows")
            object.__setattr__(self, "X_test", Xt)
            object.__setattr__(self, "Y_test", Yt)
        P = X.shape[0]
        if self.batches is not None:
            b = np.asarray(self.batches)
            if (b.ndim != 2 or b.shape[0] != self.steps or b.shape[1] == 0
                    or not np.issubdtype(b.dtype, np.integer) or b.min(initial=0) < 0 or b.max(initial=0) >= P
                    or any(len(set(r.tolist())) != len(r) for r in b)):
                raise ValueError(f"batches must be ({self.steps}, b) distinct sample indices in 0..{P - 1}")
            object.__setattr__(self, "batches", b.astype(np.int64))
        else:
            if self.batch_size is not None:
                _int("batch_size", self.batch_size, 1)
                if self.batch_size > P:
                    raise ValueError(f"batch_size must be in 1..{P}, got {self.batch_size}")
            bs = None if self.optimizer == "gd" else self.batch_size
            object.__setattr__(self, "batches", sgd_batches(P, bs, self.steps, int(self.data_seed)))

    @property
    def P(self) -> int:
        return self.X.shape[0]

    @property
    def d_out(self) -> int:
        return self.Y.shape[1]

    @property
    def batch(self) -> int:
        """Samples per update ``b``."""
        return self.batch_indices.shape[1] if self.steps else self.P

    @property
    def batch_indices(self) -> np.ndarray:
        """``batches`` (K, b), always set after validation."""
        assert self.batches is not None
        return self.batches

    @property
    def loss_scale(self) -> float:
        return float(self.d_out) if self.loss == "mean" else 1.0

    @classmethod
    def from_dataset(cls, data, steps: int, **kw) -> NFDProblem:
        """From a :class:`reslim.Dataset` (its test split included when it has one)."""
        return cls(data.X, data.Y, steps=steps, X_test=data.X_test, Y_test=data.Y_test, **kw)


def nfd_network_options(problem: NFDProblem) -> dict:
    """Keyword arguments of :class:`reslim.ResNet` and :func:`reslim.train` for the finite network
    whose limit ``problem`` describes (``{"model": {...}, "train": {...}}``); the width ``N`` is
    reslim's ``D`` (= ``M``). gamma_0 = 1 and embed_std = 1 is the ``depth-mup`` preset exactly;
    otherwise the preset with readout multiplier ``1/(gamma_0 D)``, W lr ``gamma_0^2 D`` and
    embedding init ``embed_std`` (no existing preset changes)."""
    if problem.readout != "linear":
        raise ValueError("readout: reslim's ResNet reads h^L linearly (readout='linear')")
    from ..scaling.parameterization import get_parameterization

    param = get_parameterization("depth-mup", alpha=problem.alpha)
    if problem.gamma0 != 1.0:
        g = problem.gamma0
        param = param.with_role("readout", mult=f"{1.0 / g!r}/D").with_role("W", lr_sgd=f"{g * g!r}*D")
    if problem.embed_std != 1.0:
        param = param.with_role("embed", init=repr(problem.embed_std))
    bs = None if problem.optimizer == "gd" else problem.batch
    train = {"steps": problem.steps, "lr": problem.lr, "optimizer": problem.optimizer, "loss": problem.loss,
             "batch_size": bs, "data_seed": problem.data_seed}
    return {"model": {"param": param, "block": "one-layer", "activation": problem.activation,
                      "d_in": problem.X.shape[1], "d_out": problem.d_out}, "train": train}


def _chol(M: torch.Tensor, scale: float, rel: float = 1e-10) -> torch.Tensor:
    """Lower Cholesky factor of the PSD matrix ``M`` (symmetrised) with a jitter ``rel * scale``
    (``scale``: the size of the unconditioned kernel), raised tenfold until it succeeds."""
    M = 0.5 * (M + M.mT)
    n = M.shape[-1]
    scale = scale if scale > 0 and math.isfinite(scale) else 1.0
    eye = torch.eye(n, dtype=M.dtype, device=M.device)
    jit = rel * scale
    for _ in range(12):
        L, info = torch.linalg.cholesky_ex(M + jit * eye)
        if int(info) == 0:
            return L
        jit *= 10.0
    raise RuntimeError("kernel matrix is not positive semi-definite")


def _control(F: torch.Tensor, F0: torch.Tensor) -> torch.Tensor:
    """``F - beta F0`` per column with the least-squares ``beta``: a control variate for the Stein
    estimates, exact because ``F0`` (the same function at step 0) is uncorrelated with the draws."""
    num, den = (F * F0).sum(0), (F0 * F0).sum(0)
    beta = torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)
    return F - beta * F0


def _randn(gen: torch.Generator, rows: int, cols: int, dtype, device) -> torch.Tensor:
    """Standard normals drawn in float32 (torch's CPU generator is several times faster there than in
    float64; measured: the float64 draws took 3/4 of a solve) and held in ``dtype``."""
    return torch.randn(rows, cols, generator=gen, dtype=torch.float32, device=device).to(dtype)


class _GaussianField:
    """One layer's Gaussian field over the points (x, s) it was drawn at: the whitened draws
    ``z`` (S, n) of the batch points of past steps and the Cholesky factor ``C`` (n, n) of the
    kernel there, so new points are drawn conditioned on the old (``u_D = z C^T``)."""

    def __init__(self, S: int, cap: int, dtype, device) -> None:
        self.z = torch.empty(S, cap, dtype=dtype, device=device)
        self.C = torch.zeros(cap, cap, dtype=dtype, device=device)
        self.n = 0
        self.pending: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor] | None = None
        #: the last draw in full: fresh whitened draws (S, m), conditioning map A (m, n) or None and
        #: conditional Cholesky factor (m, m), for the reused-weight responses
        self.last: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor] | None = None

    def draw(self, K_Dn: torch.Tensor | None, K_nn: torch.Tensor, keep: int, gen) -> torch.Tensor:
        """Values (S, m) at ``m`` new points with kernel ``K_nn`` (m, m) and cross-kernel to the
        stored points ``K_Dn`` (n, m); the first ``keep`` new points join the stored ones at
        :meth:`commit`."""
        S = self.z.shape[0]
        m = K_nn.shape[0]
        if self.n:
            C = self.C[: self.n, : self.n]
            A = torch.linalg.solve_triangular(C, K_Dn, upper=False).mT  # (m, n)
            mean = self.z[:, : self.n] @ A.mT
            cond = K_nn - A @ A.mT
        else:
            A, mean, cond = None, None, K_nn
        Lc = _chol(cond, float(K_nn.diagonal().mean()))
        znew = _randn(gen, S, m, K_nn.dtype, K_nn.device)
        u = znew @ Lc.mT
        if mean is not None:
            u = u + mean
        self.pending = (znew[:, :keep], None if A is None else A[:keep], Lc[:keep, :keep])
        self.last = (znew, A, Lc)
        return u

    def residual(self, F: torch.Tensor, W: torch.Tensor | None) -> torch.Tensor:
        """``F`` (S, k): a function's values at the first ``k`` points of the last draw, less their
        regression on the stored points, ``F - W A^T`` (``W`` (S, n): the function's whitened values
        ``F_D C^{-T}`` at the stored points; ``F`` itself when there are none)."""
        assert self.last is not None, "draw() first"
        A = self.last[1]
        return F if A is None or W is None else F - W @ A[: F.shape[1]].mT

    def whitened(self, R: torch.Tensor) -> torch.Tensor:
        """A :meth:`residual` ``R`` (S, k) whitened, ``R L_c^{-T}``: ``[W, result]`` is ``F C'^{-T}``
        for the factor ``C'`` the first ``k`` points extend ``C`` to at :meth:`commit`."""
        assert self.last is not None, "draw() first"
        k = R.shape[1]
        return torch.linalg.solve_triangular(self.last[2][:k, :k], R.mT, upper=False).mT

    def commit(self) -> None:
        assert self.pending is not None, "draw() first"
        z, A, Lc = self.pending
        k, n = z.shape[1], self.n
        self.z[:, n : n + k] = z
        if A is not None:
            self.C[n : n + k, :n] = A
        self.C[n : n + k, n : n + k] = Lc
        self.n += k
        self.pending = None


@dataclass
class _Replica:
    outputs: np.ndarray  # (K+1, P_all, d_out)
    Phi: np.ndarray  # (n_k, L+1, P, P)
    G: np.ndarray
    particles: dict | None
    diverged_at: int


class NFDLimit(Limit[NFDProblem]):
    """Monte Carlo solver of the Neural Feature Dynamics (module docstring) for an
    :class:`NFDProblem`; returns a :class:`reslim.Trajectory` (batch axis of size 1).

    Options:

    - ``L``: depth grid (Euler-Maruyama steps in tau; ``Trajectory.depth = l / L``), default 64
    - ``particles``: S in all, split into ``replicas`` independent particle systems (default 4096
      in 4); each replica estimates its own kernels, the spread over replicas is the error estimate
    - ``seed``; ``device`` (torch device, ``"cpu"`` or ``"cuda"``); ``dtype`` (``"float64"``)
    - ``kernel_steps``: steps at which Phi and G are recorded for every depth (default (0, K))
    - ``record_particles``: record ``h`` and ``e`` of this many particles of replica 0 (0: none)
    - ``threads``: torch CPU threads for the solve (restored after); None: one thread for small
      problems (``SMALL_WORK``), the current count otherwise
    - ``coupling``: ``"reused"`` (default: with the reused-weight response terms, the limit of ordinary
      networks) or ``"gia"`` (the decoupled system, the limit of GIA-trained networks); module docstring

    ``traj.meta``: ``output_stderr`` (K+1, 1, P, d_out), ``loss_stderr`` (K+1, 1),
    ``test_outputs``/``test_output_stderr`` (K+1, 1, P_test, d_out), ``Phi``/``G``
    (n_k, L+1, P, P) at ``kernel_steps`` (``Phi[k, l]`` = E[phi(h(tau_l, x, t)) phi(h(tau_l, x', t))]
    on the training points, ``G[k, l]`` = E[e e'] of the loss-weighted backward field, equal-time),
    ``Phi_stderr``, ``G_stderr``, ``replica_outputs`` (R, K+1, P, d_out), ``batches``,
    ``particles`` (``{"h", "e"}``: (K+1, L+1, n, P)) when recorded, ``seconds``.
    """

    name = "nfd"
    problem_type = NFDProblem
    activations = tuple(ACTIVATIONS)

    def __init__(self, L: int = 64, particles: int = 4096, replicas: int = 4, seed: int = 0,
                 device: str = "cpu", dtype: str = "float64", kernel_steps=None,
                 record_particles: int = 0, threads: int | None = None, coupling: str = "reused") -> None:
        self.L = _int("L", L, 1)
        self.particles = _int("particles", particles, 2)
        self.replicas = _int("replicas", replicas, 1)
        if self.particles % self.replicas or self.particles // self.replicas < 2:
            raise ValueError(f"particles ({particles}) must be a multiple of replicas ({replicas}), "
                             "at least 2 per replica")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if not isinstance(device, str) or not device:
            raise ValueError(f"device must be a torch device name, got {device!r}")
        if dtype not in ("float64", "float32"):
            raise ValueError(f"dtype must be float64 or float32, got {dtype!r}")
        self.seed, self.device, self.dtype = int(seed), device, dtype
        self.kernel_steps = None if kernel_steps is None else [int(k) for k in kernel_steps]
        self.record_particles = _int("record_particles", record_particles, 0)
        self.threads = None if threads is None else _int("threads", threads, 1)
        if coupling not in COUPLINGS:
            raise ValueError(f"coupling must be one of {', '.join(COUPLINGS)}, got {coupling!r}")
        self.coupling = coupling

    def _solve(self, problem: NFDProblem) -> Trajectory:
        t0 = time.perf_counter()
        K = problem.steps
        ks = sorted({0, K} if self.kernel_steps is None else set(self.kernel_steps))
        if any(k < 0 or k > K for k in ks):
            raise ValueError(f"kernel_steps must lie in 0..{K}, got {self.kernel_steps}")
        S = self.particles // self.replicas
        m = problem.P + (0 if problem.X_test is None else problem.X_test.shape[0])
        n = self.threads
        small = S * m * max(m, K * problem.batch) < SMALL_WORK
        if n is None and torch.device(self.device).type == "cpu" and small:
            n = 1  # small products: OpenMP fork/join costs more than it gives (4x slower measured, busy host)
        with threads(n):
            reps = [self._replica(problem, r, S, ks) for r in range(self.replicas)]
        R = len(reps)
        outs = np.stack([r.outputs for r in reps])  # (R, K+1, P_all, d_out)
        P, c = problem.P, problem.loss_scale
        first_bad = [r.diverged_at for r in reps if r.diverged_at >= 0]
        diverged = min(first_bad) if first_bad else -1

        def risk(o, Yt):
            return 0.5 * ((o - Yt) ** 2).sum(axis=(-1, -2)) / (Yt.shape[0] * c)

        mean = outs.mean(axis=0)
        se = outs.std(axis=0, ddof=1) / math.sqrt(R) if R > 1 else np.full_like(mean, np.nan)
        rep_loss = risk(outs[:, :, :P], problem.Y)  # (R, K+1)
        loss = risk(mean[:, :P], problem.Y)
        loss_se = rep_loss.std(axis=0, ddof=1) / math.sqrt(R) if R > 1 else np.full_like(loss, np.nan)
        meta = {"steps": K, "loss": problem.loss, "activation": problem.activation,
                "optimizer": problem.optimizer,
                "parameterization": "depth-mup", "block": "one-layer", "readout": problem.readout,
                "eta": problem.lr, "gamma0": problem.gamma0, "alpha": problem.alpha, "L": self.L,
                "particles": self.particles, "replicas": R, "seed": self.seed, "scheme": "euler-maruyama",
                "coupling": self.coupling,
                "output_stderr": se[:, None, :P], "loss_stderr": loss_se[:, None],
                "replica_outputs": outs[:, :, :P], "batches": problem.batches, "kernel_steps": ks}
        for name in ("Phi", "G"):
            arr = np.stack([getattr(r, name) for r in reps])
            meta[name] = arr.mean(axis=0)
            meta[f"{name}_stderr"] = arr.std(axis=0, ddof=1) / math.sqrt(R) if R > 1 else None
        test_loss = None
        if problem.X_test is not None:
            meta["test_outputs"] = mean[:, None, P:]
            meta["test_output_stderr"] = se[:, None, P:]
            test_loss = risk(mean[:, P:], problem.Y_test)[:, None]
        if reps[0].particles is not None:
            meta["particles"] = reps[0].particles
        outputs = mean[:, None, :P].copy()
        lossr = loss[:, None].copy()
        if diverged >= 0:
            outputs[diverged:] = np.nan
            lossr[diverged:] = np.nan
            if test_loss is not None:
                test_loss[diverged:] = np.nan
        meta["seconds"] = time.perf_counter() - t0
        return Trajectory(loss=lossr, outputs=outputs, h_last=None, depth=np.arange(self.L + 1) / self.L,
                          diverged_at=np.array([diverged]), test_loss=test_loss, meta=meta)

    # ------------------------------------------------------------------------------------
    def _replica(self, pb: NFDProblem, r: int, S: int, ks: list[int]) -> _Replica:
        dt = getattr(torch, self.dtype)
        dev = torch.device(self.device)
        gen = torch.Generator(device=dev).manual_seed(derive_seed(self.seed, 1000 + r))
        act = get_activation(pb.activation)
        phi, dphi = act.fn, act.grad
        if pb.readout == "phi":
            psi, dpsi = phi, dphi
        else:
            psi, dpsi = (lambda h: h), (lambda h, a: torch.ones_like(h))
        L, K, P, dout = self.L, pb.steps, pb.P, pb.d_out
        X_all = pb.X if pb.X_test is None else np.concatenate([pb.X, pb.X_test])
        m = X_all.shape[0]
        b = pb.batch
        dtau = 1.0 / L
        a1, a2 = pb.alpha * math.sqrt(dtau), pb.alpha**2 * dtau
        kappa = pb.lr * pb.gamma0 / (b * pb.loss_scale)
        Y = torch.as_tensor(pb.Y, dtype=dt, device=dev)

        Xt = torch.as_tensor(X_all, dtype=dt, device=dev)
        Z = _randn(gen, S, Xt.shape[1], dt, dev)
        h0 = pb.embed_std * Z @ Xt.mT  # (S, m): the law of the frozen embedding W_e x
        w = _randn(gen, S, dout, dt, dev)
        cap = K * b
        fwd = [_GaussianField(S, cap, dt, dev) for _ in range(L)]
        bwd = [_GaussianField(S, cap, dt, dev) for _ in range(L)]
        phiD = torch.empty(L, S, cap, dtype=dt, device=dev)  # phi(h^l_mu(s)), (mu, s) batch points
        eD = torch.empty(L, S, cap, dtype=dt, device=dev)  # e^{l+1}_mu(s)
        reused = self.coupling == "reused"
        if reused:  # the reused-weight responses (module docstring): whitened stored values, t = 0 values
            phiW = torch.empty(L, S, cap, dtype=dt, device=dev)  # phi_D C_u^{-T} per layer
            eW = torch.empty(L, S, cap, dtype=dt, device=dev)  # e_D C_v^{-T}
            F0 = torch.empty(L, S, m, dtype=dt, device=dev)  # phi(h^l(x, 0)), original point order
            E0 = torch.empty(L, S, P, dtype=dt, device=dev)  # e^{l+1}(x, 0), training points
            Rf = torch.empty(L, S, P, dtype=dt, device=dev)  # phi(h^l(x, t)) less its regression on phi_D
        n = 0
        outputs = np.full((K + 1, m, dout), np.nan)
        Phi = np.full((len(ks), L + 1, P, P), np.nan)
        G = np.full((len(ks), L + 1, P, P), np.nan)
        nrec = min(self.record_particles, S) if r == 0 else 0
        parts = ({k: np.full((K + 1, L + 1, nrec, P), np.nan) for k in ("h", "e")} if nrec else None)
        psi0 = None
        diverged_at, bound = -1, math.inf
        for t in range(K + 1):
            batch = pb.batch_indices[t] if t < K else np.arange(P)
            rest = np.setdiff1d(np.arange(m), batch)
            order = np.concatenate([batch, rest])
            inv = np.argsort(order)
            keep = len(batch) if t < K else 0
            o_t = torch.as_tensor(order, device=dev)
            h = h0[:, o_t]
            H = [h]
            kpos = ks.index(t) if t in ks else None
            for l in range(L):
                a = phi(h)
                K_nn = a.mT @ a / S
                if kpos is not None:
                    Phi[kpos, l] = K_nn[inv[:P]][:, inv[:P]].cpu().numpy()
                K_Dn = phiD[l, :, :n].mT @ a / S if n else None
                u = fwd[l].draw(K_Dn, K_nn, keep, gen)
                if reused:
                    if t == 0:
                        F0[l] = a[:, inv]
                    elif n:  # u + E[d phi(h^l(t)) / d v^l_D] e_D, by Stein's lemma on the whitened draws
                        Fc = _control(a, F0[l][:, o_t])
                        u = u + eW[l, :, :n] @ (bwd[l].z[:, :n].mT @ Fc / S)
                    Rl = fwd[l].residual(a[:, :P], phiW[l, :, :n] if n else None)
                    Rf[l] = Rl
                    if keep:
                        phiW[l, :, n : n + keep] = fwd[l].whitened(Rl[:, :keep])
                h = h + a1 * u
                if K_Dn is not None:
                    h = h + (a2 * kappa) * (eD[l, :, :n] @ K_Dn)
                H.append(h)
                if keep:
                    phiD[l, :, n : n + keep] = a[:, :keep]
            if kpos is not None:
                aL = phi(h)
                Phi[kpos, L] = (aL.mT @ aL / S)[inv[:P]][:, inv[:P]].cpu().numpy()
            pL = psi(h)
            if psi0 is None:
                psi0 = pL[:, inv]  # original point order
            f = (w.mT @ (pL[:, inv] - psi0)) / (S * pb.gamma0)  # (d_out, m)
            outputs[t] = f.mT.cpu().numpy()
            risk = 0.5 * float(((f.mT[:P] - Y) ** 2).sum()) / (P * pb.loss_scale)
            if t == 0:
                bound = float(blowup_bound(np.array([risk]), DIVERGENCE_FACTOR)[0])  # as reslim.train
            if not np.isfinite(risk) or risk > bound or not bool(torch.isfinite(h).all()):
                diverged_at = t
                outputs[t:] = np.nan
                break
            if t == K and kpos is None and not nrec:
                break
            # backward over the training points, batch first (order[:P] are training points)
            tr = o_t[:P]
            resid = Y[tr] - f.mT[tr]  # (P, d_out), residual Y - f
            e = dpsi(H[L][:, :P], pL[:, :P]) * (w @ resid.mT)  # (S, P)
            if kpos is not None:
                G[kpos, L] = (e.mT @ e / S)[inv[:P]][:, inv[:P]].cpu().numpy()
            if parts is not None:
                parts["h"][t, L] = H[L][:nrec, :P][:, inv[:P]].cpu().numpy()
                parts["e"][t, L] = e[:nrec][:, inv[:P]].cpu().numpy()
            for l in range(L - 1, -1, -1):
                hl = H[l][:, :P]
                al = phi(hl)
                if keep:
                    eD[l, :, n : n + keep] = e[:, :keep]
                K_nn = e.mT @ e / S
                K_Dn = eD[l, :, :n].mT @ e / S if n else None
                v = bwd[l].draw(K_Dn, K_nn, keep, gen)
                if reused:
                    if t == 0:
                        E0[l, :, tr] = e
                    else:  # v + E[d e^{l+1}(t) / d u^l] phi: stored points and (diagonal) this step's
                        Ec = _control(e, E0[l][:, tr])
                        zc, _, Lc = fwd[l].last  # type: ignore[misc]
                        Lp = Lc[:P]
                        Bd = ((zc.mT @ Ec / S).mT * Lp).sum(1) / (Lp * Lp).sum(1)
                        v = v + Rf[l] * Bd
                        if n:
                            v = v + phiW[l, :, :n] @ (fwd[l].z[:, :n].mT @ Ec / S)
                    if keep:
                        eW[l, :, n : n + keep] = bwd[l].whitened(
                            bwd[l].residual(e[:, :keep], eW[l, :, :n] if n else None))
                inc = a1 * v
                if K_Dn is not None:
                    inc = inc + (a2 * kappa) * (phiD[l, :, :n] @ K_Dn)
                e = e + dphi(hl, al) * inc
                if kpos is not None:
                    G[kpos, l] = (e.mT @ e / S)[inv[:P]][:, inv[:P]].cpu().numpy()
                if parts is not None:
                    parts["h"][t, l] = hl[:nrec][:, inv[:P]].cpu().numpy()
                    parts["e"][t, l] = e[:nrec][:, inv[:P]].cpu().numpy()
            if keep:
                for fld in (*fwd, *bwd):
                    fld.commit()
                n += keep
            else:
                for fld in (*fwd, *bwd):
                    fld.pending = None
        return _Replica(outputs=outputs, Phi=Phi, G=G, particles=parts, diverged_at=diverged_at)

    def __repr__(self) -> str:
        return (f"NFDLimit(L={self.L}, particles={self.particles}, replicas={self.replicas}, "
                f"seed={self.seed}, device={self.device!r}, coupling={self.coupling!r})")
