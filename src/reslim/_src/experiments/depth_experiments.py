"""Depth experiments (docs/theory.md §3.3-3.4; Yao et al. 2025): kinds ``gia-gap``, ``collapse`` and
``transfer``. The science lives in :mod:`reslim._src.diagnostics.depth` and
:mod:`reslim._src.diagnostics.transfer`; this module maps specs to runs and runs to the store.

- ``gia-gap``: per (param, L, seed) the gap between ordinary and GIA training (one-layer
  blocks by default); runs of one (param, L) train as one batch. Fits ``gap ~ L^p``.
- ``collapse``: per (optimizer, correction, L, seed) the feature updates of two-layer
  depth-muP blocks (first internal layer, block output); fits ``~ L^p``.
- ``transfer``: per (dataset, param, width, L, lr, seed) the final training risk; runs of one
  (dataset, param, width, L) train as one batch with one lr per network. Optima, drift of
  ``log2 lr*`` per doubling of ``L``, verdicts, figures.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, PositiveInt, field_validator, model_validator

from ..diagnostics import depth as dd
from ..diagnostics import transfer as tr
from ..models.resnet import ResNet
from ..training.data import Dataset, digits, gaussian_data
from ..training.trainer import train
from .registry import ExperimentKind, Run, RunResult, register_experiment, run_key
from .spec import ParamSpec, SpecBase, StrictModel


# ------------------------------------------------------------------------------ data
class DataSpec(StrictModel):
    """``digits`` (sklearn, train/test split), ``teacher`` (Gaussian inputs, targets of a random
    tanh network, train/test), ``gaussian`` (i.i.d. targets) or ``cifar10`` (from ``dir``)."""

    kind: Literal["digits", "teacher", "gaussian", "cifar10"] = "digits"
    n_train: PositiveInt = 256
    n_test: PositiveInt = 256
    seed: int = 0
    d_in: PositiveInt = 16
    d_out: PositiveInt = 4
    dir: str | None = None
    pool: PositiveInt = 4
    grayscale: bool = False


def teacher_data(n_train: int = 256, n_test: int = 256, d_in: int = 16, d_out: int = 4,
                 hidden: int = 64, seed: int = 0) -> Dataset:
    """Synthetic regression: ``x ~ N(0, I_{d_in})``, ``y = A tanh(B x / sqrt(d_in)) / sqrt(hidden)``
    with ``A (d_out, hidden)``, ``B (hidden, d_in)`` standard Gaussian; train and test splits."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((d_out, hidden))
    Bm = rng.standard_normal((hidden, d_in))
    X = rng.standard_normal((n_train + n_test, d_in))
    Y = np.tanh(X @ Bm.T / math.sqrt(d_in)) @ A.T / math.sqrt(hidden)
    return Dataset(X[:n_train], Y[:n_train], name=f"teacher(seed={seed})", X_test=X[n_train:],
                   Y_test=Y[n_train:], info={"hidden": hidden})


def load_data(d: dict[str, Any]) -> Dataset:
    """The :class:`Dataset` of a :class:`DataSpec` (as a dict)."""
    kind = d["kind"]
    if kind == "digits":
        return digits(n_train=d["n_train"], seed=d["seed"])
    if kind == "teacher":
        return teacher_data(d["n_train"], d["n_test"], d["d_in"], d["d_out"], seed=d["seed"])
    if kind == "gaussian":
        return gaussian_data(d["n_train"], d["d_in"], d["d_out"], d["seed"])
    if kind == "cifar10":
        from ..training.cifar import cifar10

        return cifar10(d.get("dir"), n_train=d["n_train"], n_test=d["n_test"], seed=d["seed"],
                       grayscale=d["grayscale"], pool=d["pool"])
    raise ValueError(f"data.kind: unknown data kind {kind!r}")


def _check_data(data: DataSpec) -> None:
    """Fail at spec time (one line) when CIFAR-10 is requested but not on disk."""
    if data.kind == "cifar10":
        from ..training.cifar import _locate

        _locate(data.dir)


class TrainSpec(StrictModel):
    steps: PositiveInt = 100
    lr: float = Field(0.05, gt=0)
    optimizer: Literal["gd", "sgd", "adam"] = "sgd"
    batch_size: PositiveInt | None = 64
    loss: Literal["sum", "mean"] = "sum"


class AnalysisSpec(StrictModel):
    n_boot: int = Field(1000, ge=0)


def _depths(v: list[int]) -> list[int]:
    if not v:
        raise ValueError("must list at least one depth")
    if any(x < 1 for x in v):
        raise ValueError("depths must be positive")
    return sorted(set(v))


@contextlib.contextmanager
def few_threads(width: int, limit: int = 64):
    """One torch thread for small widths (tiny GEMMs: threads only contend on a busy machine)."""
    import torch

    n = torch.get_num_threads()
    if width <= limit and n > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _batch(batch_size: int | None, data: Dataset) -> int | None:
    """Minibatch size capped at the number of samples (``None``: full batch)."""
    return None if batch_size is None else min(int(batch_size), data.N)


def _fin(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _fits_paragraph(fits: pd.DataFrame, by: list[str]) -> list[str]:
    lines = []
    for r in fits.itertuples(index=False):
        key = ", ".join(f"{b}={getattr(r, b)}" for b in by)
        lines.append(f"- {key}, {r.metric}: exponent {r.exponent:+.3f} "
                     f"[{r.ci_low:+.3f}, {r.ci_high:+.3f}]")
    return ["\n".join(lines)] if lines else []


# ------------------------------------------------------------------------------ gia-gap
class GiaGapSpec(SpecBase):
    kind: Literal["gia-gap"] = "gia-gap"
    params: list[str] = Field(default_factory=lambda: ["depth-mup", "mup"], min_length=1)
    depths: list[PositiveInt] = Field(default_factory=lambda: [2, 4, 8, 16, 32, 64])
    width: PositiveInt = 64
    seeds: PositiveInt = 3
    seed: int = 0
    block: Literal["one-layer", "two-layer"] = "one-layer"
    activation: str = "tanh"
    data: DataSpec = DataSpec()
    train: TrainSpec = TrainSpec()
    analysis: AnalysisSpec = AnalysisSpec()

    @field_validator("depths")
    @classmethod
    def _v_depths(cls, v: list[int]) -> list[int]:
        return _depths(v)

    @field_validator("params")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        for p in v:
            ParamSpec(name=p)
        return v

    @model_validator(mode="after")
    def _data_ok(self):
        _check_data(self.data)
        return self


GAP_METRICS = ("loss_gap", "output_gap", "rel_loss_gap", "rel_output_gap")


class _DepthKind(ExperimentKind):
    """The depth kinds: a task (runs of one width) executes on as few threads as suit its size."""

    def execute(self, runs: list[Run]) -> list[RunResult]:
        with few_threads(runs[0].config["width"]):
            return self._execute(runs)

    def _execute(self, runs: list[Run]) -> list[RunResult]:
        raise NotImplementedError


class GiaGap(_DepthKind):
    spec_model = GiaGapSpec

    def expand(self, spec: GiaGapSpec) -> list[Run]:
        runs = []
        for param in spec.params:
            for L in spec.depths:
                base = {"kind": "gia-gap", "param": param, "L": L, "width": spec.width,
                        "block": spec.block, "activation": spec.activation, "dtype": spec.dtype,
                        "data": spec.data.model_dump(mode="json"),
                        "train": spec.train.model_dump(mode="json")}
                group = run_key(base)
                W, N, K = spec.width, spec.data.n_train, spec.train.steps
                for rep in range(spec.seeds):
                    cfg = {**base, "seed": spec.seed + rep}
                    runs.append(Run("gia-gap", cfg, group=group, cost=2 * 6.0 * L * W * W * N * K,
                                    mem=4.0 * L * W * W * 8, label=f"{param} L={L} seed={rep}"))
        return runs

    def _execute(self, runs: list[Run]) -> list[RunResult]:
        c = runs[0].config
        t0 = time.perf_counter()
        data = load_data(c["data"])
        seeds = [r.config["seed"] for r in runs]
        trajs = {}
        for mode in (False, True):
            model = ResNet((c["L"], c["width"], c["width"]), param=c["param"], d_in=data.d_in,
                           d_out=data.d_out, block=c["block"], activation=c["activation"],
                           seeds=seeds, dtype=c["dtype"])
            t = c["train"]
            trajs[mode] = train(model, data, steps=t["steps"], lr=t["lr"], optimizer=t["optimizer"],
                                loss=t["loss"], batch_size=_batch(t["batch_size"], data),
                                record=("loss", "outputs"),
                                gia=mode)
        m = dd.gap_metrics(trajs[False], trajs[True])
        bad = trajs[False].diverged | trajs[True].diverged
        sec = (time.perf_counter() - t0) / len(runs)
        out = []
        for b, run in enumerate(runs):
            metrics = {k: (None if bad[b] else _fin(v[b])) for k, v in m.items()}
            arrays = {"loss": trajs[False].loss[:, b], "loss_gia": trajs[True].loss[:, b]}
            out.append(RunResult(run.key, "diverged" if bad[b] else "done", metrics, arrays, seconds=sec))
        return out

    def table(self, spec, store) -> pd.DataFrame:
        rows = []
        for rec in self.records(spec, store):
            c = rec.config
            row = {"param": c["param"], "L": c["L"], "seed": c["seed"], "diverged": rec.status != "done"}
            for k in (*GAP_METRICS, "loss_final", "loss_final_gia", "loss0"):
                v = rec.metrics.get(k)
                row[k] = np.nan if v is None else float(v)
            rows.append(row)
        return pd.DataFrame(rows)

    def analyse(self, spec, store):
        df = self.table(spec, store)
        if df.empty:
            return {"table": df, "summary": df, "fits": pd.DataFrame()}
        summ = dd.summarize_by_depth(df, [*GAP_METRICS, "loss_final", "loss_final_gia"])
        fits = dd.fit_depth_exponents(df, GAP_METRICS, n_boot=spec.analysis.n_boot)
        return {"table": df, "summary": summ, "fits": fits}

    def report(self, spec, store, analysis, figure_dir):
        from ..report.figures import save
        from ..report.report import Section

        s = Section("GIA gap vs depth",
                    [f"Ordinary vs gradient-independent (GIA) training of {spec.block} blocks at width "
                     f"{spec.width}, {spec.seeds} seeds; gaps are RMS over steps 1..K (definitions in "
                     "docs/depth.md). Fitted exponent p of gap ~ L^p with a bootstrap 95% CI over seeds."])
        if analysis["table"].empty:
            return [s]
        s.paragraphs += _fits_paragraph(analysis["fits"], ["param"])
        s.tables.append(("Gap per depth (mean, std over seeds)", analysis["summary"]))
        s.tables.append(("Fitted exponents", analysis["fits"]))
        guide = [(-0.5, "slope L^-1/2"), (0.0, "slope L^0")]
        fig = plot_vs_depth(analysis["table"], ["loss_gap", "output_gap"], "param",
                            title="GIA gap vs depth (ordinary vs GIA training); dotted: reference slopes",
                            guides={"loss_gap": guide, "output_gap": guide})
        s.figures.append(save(fig,
                              figure_dir, "gia-gap", "GIA gap vs depth (seed mean, min-max band)"))
        return [s]

    def summary(self, spec, analysis) -> list[str]:
        f = analysis["fits"]
        return [f"{r.param}: {r.metric} ~ L^{r.exponent:+.3f}" for r in f.itertuples()
                if r.metric in ("loss_gap", "output_gap")]


def plot_vs_depth(df: pd.DataFrame, metrics: list[str], line: str | list[str], title: str = "",
                  guides: dict[str, list[tuple[float, str]]] | None = None):
    """Log-log metric vs L, one line per group of ``line`` (seed mean, min-max band over the seeds
    with a finite value: a diverged seed is left out, never drawn to infinity); ``guides``:
    ``metric -> [(exponent, label)]`` dotted slopes through the lines' first point."""
    import matplotlib.pyplot as plt

    by = [line] if isinstance(line, str) else list(line)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.9 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        vals = df[np.isfinite(df[metric].astype(float))] if len(df) else df
        firsts = []
        for key, g in vals.groupby(by, sort=False):
            key = key if isinstance(key, tuple) else (key,)
            a = g.groupby("L")[metric].agg(["mean", "min", "max"]).reset_index()
            lab = ", ".join(f"{name} {k:g}" if isinstance(k, float) else f"{name} {k}"
                            for name, k in zip(by, key, strict=True))
            ax.plot(a["L"], a["mean"], "-o", ms=3, label=lab)
            ax.fill_between(a["L"], a["min"], a["max"], alpha=0.2)
            if len(a):
                firsts.append((float(a["L"].iloc[0]), float(a["mean"].iloc[0]), float(a["L"].iloc[-1])))
        for (expo, label), style in zip((guides or {}).get(metric, []), (":", "-.", "--"), strict=False):
            if not firsts:
                break
            L0, y0, L1 = max(firsts, key=lambda f: f[1])
            Ls = np.geomspace(L0, max(L1, L0 * 2), 20)
            ax.plot(Ls, y0 * (Ls / L0) ** expo, style, color="0.3", lw=1, label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("depth L")
        ax.set_ylabel(metric)
        ax.set_title(metric, fontsize=9)
        ax.legend(fontsize=6)
    fig.suptitle(title or f"{', '.join(metrics)} vs depth (seed mean, min-max band)", fontsize=9)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------ collapse
class CollapseSpec(SpecBase):
    kind: Literal["collapse"] = "collapse"
    depths: list[PositiveInt] = Field(default_factory=lambda: [2, 4, 8, 16, 32, 64])
    width: PositiveInt = 32
    seeds: PositiveInt = 2
    seed: int = 0
    optimizers: list[Literal["sgd", "gd", "adam"]] = Field(default_factory=lambda: ["sgd", "adam"],
                                                          min_length=1)
    corrections: list[float] = Field(default_factory=lambda: [0.0, 0.5], min_length=1)
    lr: dict[str, float] = Field(default_factory=lambda: {"sgd": 0.1, "gd": 0.1, "adam": 0.02})
    activation: str = "tanh"
    data: DataSpec = DataSpec()
    train: TrainSpec = TrainSpec(steps=30)
    analysis: AnalysisSpec = AnalysisSpec()

    @field_validator("depths")
    @classmethod
    def _v_depths(cls, v: list[int]) -> list[int]:
        return _depths(v)

    @model_validator(mode="after")
    def _check(self):
        for o in self.optimizers:
            if o not in self.lr or not self.lr[o] > 0:
                raise ValueError(f"lr.{o}: a positive learning rate is needed for optimizer {o}")
        if any(c < 0 for c in self.corrections):
            raise ValueError("corrections must be >= 0")
        _check_data(self.data)
        return self


class Collapse(_DepthKind):
    spec_model = CollapseSpec

    def expand(self, spec: CollapseSpec) -> list[Run]:
        runs = []
        for opt in spec.optimizers:
            for corr in spec.corrections:
                for L in spec.depths:
                    base = {"kind": "collapse", "optimizer": opt, "correction": float(corr), "L": L,
                            "width": spec.width, "lr": spec.lr[opt], "activation": spec.activation,
                            "dtype": spec.dtype, "data": spec.data.model_dump(mode="json"),
                            "train": spec.train.model_dump(mode="json")}
                    group = run_key(base)
                    W = spec.width
                    for rep in range(spec.seeds):
                        runs.append(Run("collapse", {**base, "seed": spec.seed + rep}, group=group,
                                        cost=6.0 * L * W * W * spec.data.n_train * spec.train.steps,
                                        mem=6.0 * L * W * W * 8,
                                        label=f"{opt} c={corr} L={L} seed={rep}"))
        return runs

    def _execute(self, runs: list[Run]) -> list[RunResult]:
        c = runs[0].config
        t0 = time.perf_counter()
        data = load_data(c["data"])
        t = c["train"]
        df = dd.first_layer_collapse(
            data, depths=[c["L"]], width=c["width"], seeds=[r.config["seed"] for r in runs],
            optimizers=[c["optimizer"]], corrections=[c["correction"]], lr=c["lr"], steps=t["steps"],
            batch_size=_batch(t["batch_size"], data) if c["optimizer"] != "gd" else None, loss=t["loss"],
            activation=c["activation"], dtype=c["dtype"])
        sec = (time.perf_counter() - t0) / len(runs)
        out = []
        for run, row in zip(runs, df.to_dict("records"), strict=True):
            metrics = {k: _fin(row[k]) for k in row if k.startswith("d") and k != "diverged"}
            metrics.update(loss0=_fin(row["loss0"]), loss_final=_fin(row["loss_final"]))
            out.append(RunResult(run.key, "diverged" if row["diverged"] else "done", metrics,
                                 seconds=sec))
        return out

    def table(self, spec, store) -> pd.DataFrame:
        rows = []
        for rec in self.records(spec, store):
            c = rec.config
            row = {"optimizer": c["optimizer"], "correction": c["correction"], "L": c["L"],
                   "seed": c["seed"], "diverged": rec.status != "done"}
            for k, v in rec.metrics.items():
                row[k] = np.nan if v is None else float(v)
            rows.append(row)
        return pd.DataFrame(rows)

    def analyse(self, spec, store):
        df = self.table(spec, store)
        if df.empty:
            return {"table": df, "summary": df, "fits": pd.DataFrame()}
        mets = [*dd.COLLAPSE_METRICS, "dp_own_first", "dh_first"]
        by = ["optimizer", "correction"]
        return {"table": df, "summary": dd.summarize_by_depth(df, [*mets, "loss_final"], by=by),
                "fits": dd.fit_depth_exponents(df, mets, by=by, n_boot=spec.analysis.n_boot)}

    def report(self, spec, store, analysis, figure_dir):
        from ..report.figures import save
        from ..report.report import Section

        s = Section("First-layer collapse of depth-muP and the depth-aware correction",
                    ["Two-layer blocks under depth-muP (correction 0) and depth-muP-corrected (U lr "
                     "times L^c): RMS feature changes after K steps, averaged over blocks. dp_own = "
                     "m_U dU^T h (the first internal layer's own update), dp = total pre-activation "
                     "change, dh = block output change, dbranch = branch output change."])
        if analysis["table"].empty:
            return [s]
        s.paragraphs += _fits_paragraph(analysis["fits"], ["optimizer", "correction"])
        s.tables.append(("Per depth (mean, std over seeds)", analysis["summary"]))
        s.tables.append(("Fitted exponents", analysis["fits"]))
        fig = plot_vs_depth(analysis["table"], ["dp_own", "dh"], ["optimizer", "correction"],
                            title="Feature updates vs depth; legend: optimizer, correction c (U lr x L^c)",
                            guides={"dp_own": [(-0.5, "L^-1/2 (depth-muP prediction)"),
                                               (0.0, "L^0 (corrected)")]})
        s.figures.append(save(fig,
                              figure_dir, "collapse", "Feature updates vs depth"))
        return [s]

    def summary(self, spec, analysis) -> list[str]:
        f = analysis["fits"]
        return [f"{r.optimizer} correction={r.correction:g}: {r.metric} ~ L^{r.exponent:+.3f}"
                for r in f.itertuples() if r.metric in ("dp_own", "dh")]


# ------------------------------------------------------------------------------ transfer
class SweepParam(StrictModel):
    """A parameterization and its lr grid ``2^log2_lr[0] .. 2^log2_lr[1]`` (step ``lr_step``)."""

    name: str
    options: dict[str, float | int | str] = Field(default_factory=dict)
    log2_lr: tuple[float, float] = (-4.0, 4.0)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        ParamSpec(name=v)
        return v

    @field_validator("log2_lr")
    @classmethod
    def _order(cls, v):
        if not v[0] < v[1]:
            raise ValueError("log2_lr must be [low, high] with low < high")
        return v


class TransferSpec(SpecBase):
    kind: Literal["transfer"] = "transfer"
    dtype: Literal["float64", "float32"] = "float32"
    params: list[SweepParam] = Field(min_length=1)
    depths: list[PositiveInt] = Field(default_factory=lambda: [2, 4, 8, 16, 32, 64])
    widths: list[PositiveInt] = Field(default_factory=lambda: [16])
    lr_step: float = Field(1.0, gt=0)
    seeds: PositiveInt = 2
    seed: int = 0
    block: Literal["two-layer", "one-layer"] = "two-layer"
    activation: str = "tanh"
    datasets: list[DataSpec] = Field(default_factory=lambda: [DataSpec(kind="digits")], min_length=1)
    train: TrainSpec = TrainSpec(steps=100, lr=1.0, optimizer="gd", batch_size=None)
    threshold: float = Field(0.25, gt=0, description="max |drift| (octaves per doubling of L)")
    tol: float = Field(0.02, ge=0, description="relative tolerance of 'deeper never worse'")

    @field_validator("depths")
    @classmethod
    def _v_depths(cls, v: list[int]) -> list[int]:
        return _depths(v)

    @model_validator(mode="after")
    def _check(self):
        for d in self.datasets:
            _check_data(d)
        names = [d.kind for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError("datasets: each data kind may appear once")
        return self

    def grid(self, p: SweepParam) -> list[float]:
        lo, hi = p.log2_lr
        return [float(2.0**k) for k in np.arange(lo, hi + 1e-9, self.lr_step)]


class Transfer(_DepthKind):
    spec_model = TransferSpec

    def expand(self, spec: TransferSpec) -> list[Run]:
        runs = []
        for d in spec.datasets:
            for p in spec.params:
                for W in spec.widths:
                    for L in spec.depths:
                        base = {"kind": "transfer", "dataset": d.kind, "data": d.model_dump(mode="json"),
                                "param": p.name, "options": dict(p.options), "L": L, "width": W,
                                "block": spec.block, "activation": spec.activation, "dtype": spec.dtype,
                                "train": spec.train.model_dump(mode="json")}
                        group = run_key(base)
                        cost = 6.0 * L * W * W * d.n_train * spec.train.steps
                        for lr in spec.grid(p):
                            for rep in range(spec.seeds):
                                runs.append(Run("transfer", {**base, "lr": lr, "seed": spec.seed + rep},
                                                group=group, cost=cost, mem=4.0 * L * W * W * 4,
                                                label=f"{d.kind} {p.name} W={W} L={L} lr={lr:g}"))
        return runs

    def _execute(self, runs: list[Run]) -> list[RunResult]:
        c = runs[0].config
        t0 = time.perf_counter()
        data = load_data(c["data"])
        t = c["train"]
        df = tr.lr_sweep(data, param=c["param"], param_options=c["options"], depths=[c["L"]],
                         widths=[c["width"]], lrs=[], steps=t["steps"],
                         networks=[(r.config["lr"], r.config["seed"]) for r in runs],
                         optimizer=t["optimizer"], batch_size=_batch(t["batch_size"], data), loss=t["loss"],
                         block=c["block"], activation=c["activation"], dtype=c["dtype"],
                         dataset=c["dataset"])
        sec = (time.perf_counter() - t0) / len(runs)
        out = []
        for run, row in zip(runs, df.to_dict("records"), strict=True):
            metrics = {"final_loss": _fin(row["final_loss"]), "test_loss": _fin(row["test_loss"]),
                       "loss0": _fin(row["loss0"])}
            out.append(RunResult(run.key, "diverged" if row["diverged"] else "done", metrics, seconds=sec))
        return out

    def table(self, spec, store) -> pd.DataFrame:
        rows = []
        for rec in self.records(spec, store):
            c = rec.config
            if rec.status == "failed":
                continue
            bad = rec.status != "done"
            fl, tl = rec.metrics.get("final_loss"), rec.metrics.get("test_loss")
            rows.append({"dataset": c["dataset"], "param": c["param"], "L": c["L"], "width": c["width"],
                         "lr": c["lr"], "seed": c["seed"], "diverged": bad,
                         "final_loss": math.inf if bad or fl is None else fl,
                         "test_loss": math.inf if bad else (math.nan if tl is None else tl)})
        return pd.DataFrame(rows)

    def analyse(self, spec, store):
        df = self.table(spec, store)
        if df.empty:
            return {"table": df, "optima": df, "verdicts": df}
        opt = tr.optima(df)
        return {"table": df, "optima": opt, "verdicts": tr.verdicts(opt, spec.threshold, spec.tol)}

    def report(self, spec, store, analysis, figure_dir):
        from ..report.figures import save
        from ..report.report import Section

        s = Section("Learning-rate transfer across depth",
                    [f"Final training risk after {spec.train.steps} {spec.train.optimizer} steps vs base "
                     f"learning rate, {spec.seeds} seeds (mean, min-max band; a diverged seed makes the "
                     "mean +inf). Optimum: parabola through the best grid point and its neighbours in "
                     "(log2 lr, log risk). Drift: slope of log2 lr* vs log2 L. Transfers when |drift| <= "
                     f"{spec.threshold} octave per doubling and no optimum on a grid edge."])
        if analysis["table"].empty:
            return [s]
        s.tables.append(("Verdicts", analysis["verdicts"]))
        s.tables.append(("Optima per depth", analysis["optima"]))
        df, opt = analysis["table"], analysis["optima"]
        for d in spec.datasets:
            for W in spec.widths:
                fig = tr.plot_transfer(df, opt, dataset=d.kind, width=W)
                s.figures.append(save(fig, figure_dir, f"transfer-{d.kind}-W{W}",
                                      f"{d.kind}, width {W}: final risk vs lr, one curve per depth"))
        return [s]

    def summary(self, spec, analysis) -> list[str]:
        v = analysis["verdicts"]
        return [f"{r.dataset} W={r.width} {r.param}: drift {r.drift:+.2f} octave/doubling, "
                f"transfers={r.transfers}, deeper helps={r.deeper_helps}, diverged={r.n_diverged}"
                for r in v.itertuples()]


register_experiment("gia-gap", GiaGap())
register_experiment("collapse", Collapse())
register_experiment("transfer", Transfer())
