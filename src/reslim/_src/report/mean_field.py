"""Analysis, figures and report sections of the ``mean-field`` experiment kind
(docs/mean-field.md): each training scheme against plain training (test accuracy, paired by
seed, with t-intervals and a verdict), the loss right after each reordering, and the landscape
measurement (fraction of initialisations reaching zero loss against depth and width)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import figures
from .report import Section

#: the published gain of the reordering scheme on CIFAR-10/100 (test accuracy, points)
PUBLISHED_GAIN = (0.25, 0.55)


@dataclass
class MeanFieldAnalysis:
    accuracy: pd.DataFrame = field(default_factory=pd.DataFrame)  # per (arch, scheme)
    paired: pd.DataFrame = field(default_factory=pd.DataFrame)  # per (arch, scheme != plain)
    events: pd.DataFrame = field(default_factory=pd.DataFrame)  # per (arch, scheme, kind)
    landscape: pd.DataFrame = field(default_factory=pd.DataFrame)  # per (L, M)
    curves: dict = field(default_factory=dict)  # (arch, scheme) -> (seeds, epochs) test accuracy
    jumps: dict = field(default_factory=dict)  # (arch, scheme) -> list of (epoch, before, after)
    seconds: dict = field(default_factory=dict)  # role -> total seconds
    data: str = ""
    device: str = ""


def t_interval(x: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided Student-t interval of the mean of ``x`` (NaN bounds for n < 2)."""
    from scipy.stats import t

    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan, math.nan
    m = float(x.mean())
    if x.size < 2:
        return m, math.nan, math.nan
    h = float(t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return m, m - h, m + h


def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``k / n``."""
    from scipy.stats import norm

    if n == 0:
        return math.nan, math.nan
    z = float(norm.ppf(0.5 + level / 2))
    p = k / n
    den = 1 + z * z / n
    c = (p + z * z / (2 * n)) / den
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, c - h), min(1.0, c + h)


def verdict3(lo: float, hi: float) -> str:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "n/a"
    return "better" if lo > 0 else "worse" if hi < 0 else "no difference"


def analyse(kind, spec, store) -> MeanFieldAnalysis:
    res = MeanFieldAnalysis()
    recs = kind.records(spec, store)
    level = spec.analysis.level
    tr = [r for r in recs if r.config["role"] == "train" and r.status == "done"]
    res.seconds = {role: float(sum(r.seconds or 0.0 for r in recs if r.config["role"] == role))
                   for role in ("train", "landscape")}
    if tr:
        res.data = f"{spec.data.kind} ({tr[0].metrics['n_train']} train / {tr[0].metrics['n_test']} test)"
        res.device = str(tr[0].metrics.get("device", ""))
        acc: dict[tuple[str, str], dict[int, float]] = {}
        for r in tr:
            c = r.config
            key = (c["arch"], c["scheme_name"])
            acc.setdefault(key, {})[c["seed"]] = 100.0 * r.metrics["test_accuracy"]
            res.curves.setdefault(key, []).append(r.metrics["epoch_test_accuracy"])
            for e in r.metrics["events"]:
                res.jumps.setdefault(key, []).append((e["epoch"], e["kind"], e["before"], e["after"]))
        rows, prows = [], []
        for arch in spec.archs:
            base = acc.get((arch, "plain"), {})
            for name in spec.schemes:
                a = acc.get((arch, name), {})
                if not a:
                    continue
                m, lo, hi = t_interval(np.array(list(a.values())), level)
                rows.append({"arch": arch, "scheme": name, "seeds": len(a), "test acc %": m,
                             "CI low": lo, "CI high": hi})
                if name == "plain":
                    continue
                common = sorted(set(a) & set(base))
                d = np.array([a[s] - base[s] for s in common])
                dm, dlo, dhi = t_interval(d, level)
                prows.append({"arch": arch, "scheme": name, "pairs": len(common), "diff (points)": dm,
                              "CI low": dlo, "CI high": dhi, "at 95%": verdict3(dlo, dhi),
                              "published": f"+{PUBLISHED_GAIN[0]}..+{PUBLISHED_GAIN[1]} (CIFAR)"
                              if name != "surrogate-pretrain" else ""})
        res.accuracy, res.paired = pd.DataFrame(rows), pd.DataFrame(prows)
        ev = []
        for (arch, name), js in sorted(res.jumps.items()):
            for k in sorted({j[1] for j in js}):
                sel = [j for j in js if j[1] == k]
                before = np.array([j[2] for j in sel])
                after = np.array([j[3] for j in sel])
                ratio = after / np.maximum(before, 1e-300)
                ev.append({"arch": arch, "scheme": name, "event": k, "count": len(sel),
                           "loss before": float(before.mean()), "loss right after": float(after.mean()),
                           "median ratio": float(np.median(ratio)), "max ratio": float(ratio.max())})
        res.events = pd.DataFrame(ev)
    ls = [r for r in recs if r.config["role"] == "landscape" and r.status == "done"]
    if ls:
        thr = spec.landscape.threshold
        rows = []
        for r in sorted(ls, key=lambda r: (r.config["L"], r.config["M"])):
            rel = np.array([np.nan if v is None else v for v in r.metrics["relative_loss"]], dtype=float)
            n = int(rel.size)
            k = int(np.sum(rel < thr))
            lo, hi = wilson(k, n, level)
            rows.append({"L": r.config["L"], "M": r.config["M"], "LM": r.config["L"] * r.config["M"],
                         "params": r.metrics["params"], "targets": r.metrics["targets"], "inits": n,
                         "reached": k, "fraction": k / n if n else math.nan, "CI low": lo, "CI high": hi,
                         "median rel loss": float(np.nanmedian(rel))})
        res.landscape = pd.DataFrame(rows)
    return res


def _gain_sentence(res: MeanFieldAnalysis) -> str:
    if not len(res.paired):
        return ""
    rr = res.paired[res.paired["scheme"].isin(["random-reorder", "sort-reorder"])]
    if not len(rr):
        return ""
    better = rr[rr["at 95%"] == "better"]
    parts = [f"{r['arch']} {r['scheme']} {r['diff (points)']:+.2f} [{r['CI low']:+.2f}, {r['CI high']:+.2f}]"
             for r in rr.to_dict("records")]
    if len(better):
        head = "The published gain of reordering (+0.25 to +0.55 points on CIFAR) is reproduced in sign"
    else:
        head = ("The published gain of reordering (+0.25 to +0.55 points on CIFAR) is NOT reproduced "
                "(no reordering scheme is better at 95%)")
    return f"{head} on {res.data}: paired differences to plain training {'; '.join(parts)}."


def sections(kind, spec, store, res: MeanFieldAnalysis, fig_dir) -> list[Section]:
    out = []
    if len(res.accuracy):
        a = Section("Training schemes against plain training", [
            f"Data: {res.data}; device {res.device}; {spec.train.epochs} epochs of SGD (momentum "
            f"{spec.train.momentum:g}, lr {spec.train.lr:g}, {spec.train.schedule} schedule, weight decay "
            f"{spec.train.weight_decay:g}, batch {spec.train.batch_size}, crop pad {spec.train.pad}, "
            f"{'horizontal flips' if spec.train.flip else 'no flips'}); model width {spec.model.width}, "
            f"{spec.model.blocks} blocks x "
            f"{spec.model.stages} stages. Reordering after every {spec.scheme.every} epoch(s) up to "
            f"{spec.scheme.stop:g} of training; surrogate pretraining for {spec.scheme.fraction:g} of the "
            "epochs. Intervals: 95% Student t over seeds; differences are paired by seed (same "
            "initialisation, data order and augmentation).",
            _gain_sentence(res),
            f"Run time: training runs {res.seconds.get('train', 0.0):.0f} s in all."])
        a.tables.append(("Verdicts (test accuracy difference to plain, points)", res.paired))
        a.tables.append(("Test accuracy per scheme", res.accuracy))
        a.figures.append(_accuracy_figure(spec, res, fig_dir))
        out.append(a)
    if len(res.events):
        b = Section("The loss right after each reordering", [
            "Cross-entropy on a fixed probe of training images (no augmentation, eval mode) right "
            "before and right after each reordering (for surrogate pretraining: the surrogate's loss "
            "and the ResNet's at the switch). The mean-field picture predicts small jumps when the "
            "law of the blocks varies little along depth."])
        b.tables.append(("Loss jumps", res.events))
        b.figures.append(_jump_figure(res, fig_dir))
        out.append(b)
    if len(res.landscape):
        ls = spec.landscape
        c = Section("The landscape: fraction of initialisations reaching zero loss", [
            f"{ls.seeds} random initialisations of the mean-field ResNet (mlu, tanh, D = {ls.D}) per "
            f"(L, M), full-batch GD ({ls.steps} steps, eta {ls.lr:g}) on N = {ls.N} Gaussian inputs "
            f"with Gaussian targets (d_out = {ls.d_out}, {ls.N * ls.d_out} numbers to fit). Reached "
            f"= final loss below {ls.threshold:g} x the initial loss (a fixed budget; slower runs count "
            "as not reached). Equal L M = equal parameter count. Intervals: Wilson 95%.",
            f"Run time: {res.seconds.get('landscape', 0.0):.0f} s in all."])
        c.tables.append(("Fraction reaching the global minimum", res.landscape))
        c.figures.append(_landscape_figure(res, fig_dir))
        out.append(c)
    return out


def _accuracy_figure(spec, res, fig_dir):
    fig, axes = figures.subplots(1, 2, figsize=(10, 4.2))
    ax = axes[0]
    p = res.paired
    labels = []
    for i, r in enumerate(p.to_dict("records")):
        err = [[r["diff (points)"] - r["CI low"]], [r["CI high"] - r["diff (points)"]]]
        ax.errorbar([i], [r["diff (points)"]], yerr=err if math.isfinite(r["CI low"]) else None, fmt="o",
                    capsize=4)
        labels.append(f"{r['arch']} {r['scheme']}")
    ax.axhline(0, color="k", lw=0.8)
    ax.axhspan(*PUBLISHED_GAIN, color="tab:green", alpha=0.2, label="published (CIFAR)")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("test accuracy - plain (points, paired)")
    ax.set_title("each scheme minus plain training (95% intervals)", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1]
    schemes = sorted({name for _, name in res.curves})
    for (arch, name), curves in sorted(res.curves.items()):
        c = 100 * np.array(curves, dtype=float).mean(axis=0)
        ax.plot(np.arange(1, c.size + 1), c, "-" if arch == "resnet" else "--",
                color=f"C{schemes.index(name)}", label=f"{arch} {name}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy % (mean over seeds)")
    ax.set_title("test accuracy per epoch (solid: ResNet, dashed: ResNeXt)", fontsize=9)
    ax.legend(fontsize=6)
    ax.grid(True, alpha=0.25)
    return figures.save(fig, fig_dir, "mean-field-accuracy", "left: paired accuracy differences to plain "
                        "training with 95% intervals; right: test accuracy per epoch")


def _jump_figure(res, fig_dir):
    fig, ax = figures.subplots(figsize=(6.2, 4.4))
    schemes = sorted({name for _, name in res.jumps})
    for (arch, name), js in sorted(res.jumps.items()):
        e = np.array([j[0] for j in js], dtype=float)
        ratio = np.array([j[3] / max(j[2], 1e-300) for j in js])
        ax.semilogy(e + 1, ratio, "." if arch == "resnet" else "x", ms=4, color=f"C{schemes.index(name)}",
                    label=f"{arch} {name}")
    ax.axhline(1, color="k", lw=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("probe loss right after / right before")
    ax.set_title("loss jump at each reordering or switch (dots: ResNet, crosses: ResNeXt)", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.25)
    return figures.save(fig, fig_dir, "mean-field-jumps", "loss ratio across each reordering (1: no change)")


def _landscape_figure(res, fig_dir):
    fig, ax = figures.subplots(figsize=(6.2, 4.4))
    d = res.landscape
    for L in sorted(d["L"].unique()):
        s = d[d["L"] == L].sort_values("M")
        ax.errorbar(s["M"], s["fraction"], yerr=[s["fraction"] - s["CI low"], s["CI high"] - s["fraction"]],
                    fmt="o-", capsize=3, label=f"L={L}")
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("width M (units per block)")
    ax.set_ylabel("fraction of inits reaching zero loss")
    ax.set_title("landscape: runs reaching the global minimum (Wilson 95%)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.25)
    return figures.save(fig, fig_dir, "mean-field-landscape", "fraction of random initialisations reaching "
                        "the global minimum against width, one line per depth")


def summary_lines(res: MeanFieldAnalysis) -> list[str]:
    lines = ["mean-field: training schemes vs plain training, and the landscape"]
    for r in res.accuracy.to_dict("records"):
        lines.append(f"  {r['arch']} {r['scheme']}: test acc {r['test acc %']:.2f}% "
                     f"[{r['CI low']:.2f}, {r['CI high']:.2f}] over {r['seeds']} seeds")
    for r in res.paired.to_dict("records"):
        lines.append(f"  {r['arch']} {r['scheme']} - plain: {r['diff (points)']:+.2f} points "
                     f"[{r['CI low']:+.2f}, {r['CI high']:+.2f}] ({r['at 95%']})")
    for r in res.events.to_dict("records"):
        lines.append(f"  {r['arch']} {r['scheme']} {r['event']}: loss {r['loss before']:.3f} -> "
                     f"{r['loss right after']:.3f} (median ratio {r['median ratio']:.2f}, n={r['count']})")
    for r in res.landscape.to_dict("records"):
        lines.append(f"  landscape L={r['L']} M={r['M']}: {r['reached']}/{r['inits']} reached zero loss "
                     f"[{r['CI low']:.2f}, {r['CI high']:.2f}]")
    s = _gain_sentence(res)
    if s:
        lines.append("  " + s)
    return lines
