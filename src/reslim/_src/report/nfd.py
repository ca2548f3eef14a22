"""Analysis, figures and report sections of the ``nfd`` experiment kind (docs/experiments.md "nfd"):
(b) finite one-layer depth-muP networks against the Neural Feature Dynamics limit, with fitted
exponents in width and depth, (c) the same with GIA training, (d) muP without depth scaling.

A leaf renderer: it reads the store through the kind it is handed and imports nothing from
``reslim._src.experiments``. Figures use matplotlib's object API (``Figure``), no pyplot state.

Errors (RMS over the steps 1..K, the training points and the outputs): a finite run's outputs
against the limit's, ``E = RMS(f_net - f_NFD)``, where the limit is that of the run's training mode
(:data:`LIMIT_OF`: ordinary networks against the reused-weight NFD, GIA networks against the
decoupled one; ``E_mean vs other limit``: the repetition mean against the other coupling's on the
same grid); per cell the RMS over repetitions. The width sweep is compared with the limit on its own
depth grid (the width error alone); the depth sweeps with the reference grid ``nfd.L`` (width and
depth error together); the limit's own depth error is fitted on the grids ``L <= nfd.L / 4`` (where
the reference grid's error is small beside it); the solves share their seed (common random numbers),
so the difference is much less noisy than independent solves. ``E_mean``: the error of the mean over
repetitions (the systematic part); ``cauchy``: RMS between the repetition means at consecutive
depths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import figures
from .report import FigureRef, Section, verdict_note

#: the NFDLimit coupling each training mode is compared with (as the nfd kind's LIMIT_OF)
LIMIT_OF = {"ordinary": "reused", "gia": "gia"}


@dataclass
class NFDAnalysis:
    cells: pd.DataFrame = field(default_factory=pd.DataFrame)  # per (dataset, param, mode, L, D)
    grid: pd.DataFrame = field(default_factory=pd.DataFrame)  # per (dataset, L): the limit's depth error
    fits: pd.DataFrame = field(default_factory=pd.DataFrame)  # exponents with intervals
    curves: dict = field(default_factory=dict)  # dataset -> {label: (loss (K+1,), band or None)}
    counts: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    names: list = field(default_factory=list)  # dataset -> name (dataset_names)


def dataset_names(spec) -> list[str]:
    """A name per dataset of the spec: its kind (``synthetic``, ``digits``), with its position
    appended where two datasets share a kind."""
    kinds = [d.kind for d in spec.datasets]
    return [k if kinds.count(k) == 1 else f"{k} {i}" for i, k in enumerate(kinds)]


_ROLE = {"nfd": "limit", "finite": "finite"}


def counts_text(counts: dict) -> str:
    """``{role: {status: n}}`` as prose: "12 limit runs and 232 finite runs done; 3 finite runs diverged"."""
    roles = sorted(counts, key=lambda r: (list(_ROLE).index(r) if r in _ROLE else len(_ROLE), r))
    statuses = list(dict.fromkeys(st for r in roles for st in counts[r]))
    statuses = [st for st in ("done", "diverged", "failed") if st in statuses] + [
        st for st in statuses if st not in ("done", "diverged", "failed")]
    parts = []
    for st in statuses:
        items = [f"{counts[r][st]} {_ROLE.get(r, r)} run{'s' if counts[r][st] != 1 else ''}"
                 for r in roles if counts[r].get(st)]
        parts.append(" and ".join([", ".join(items[:-1]), items[-1]] if len(items) > 1 else items) + f" {st}")
    return "; ".join(parts) if parts else "no runs stored"


def _named(df: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """``df`` with its ``dataset`` column by name."""
    if not len(df) or "dataset" not in df.columns:
        return df
    return df.assign(dataset=[names[int(i)] for i in df["dataset"]])


def _arr(v) -> np.ndarray:
    return np.array([np.nan if x is None else x for x in v], dtype=float)


def _err(a: np.ndarray, b: np.ndarray) -> float:
    d = (a - b)[1:]
    return float(np.sqrt(np.mean(d * d)))


def analyse(kind, spec, store) -> NFDAnalysis:
    from ... import measure

    res = NFDAnalysis(names=dataset_names(spec))
    recs = kind.records(spec, store)
    for r in recs:
        role = r.config["role"]
        res.counts.setdefault(role, {}).setdefault(r.status, 0)
        res.counts[role][r.status] += 1
        res.seconds[role] = res.seconds.get(role, 0.0) + float(getattr(r, "seconds", 0.0) or 0.0)
    rows: list[dict] = []
    grid_rows: list[dict] = []
    fits: list[dict] = []
    for i, _ in enumerate(spec.datasets):
        lims: dict[str, dict] = {}
        for r in recs:
            if r.config["role"] == "nfd" and r.config["dataset"] == i and r.status == "done":
                lims.setdefault(r.config.get("coupling", "gia"), {})[r.config["L"]] = r
        lims = {c: d for c, d in lims.items() if spec.nfd.L in d}
        if not lims:
            continue
        arrays = {c: {L: store.arrays(r.key) for L, r in d.items()} for c, d in lims.items()}
        curves: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
        for c, lim in lims.items():
            best = lim[spec.nfd.L].metrics
            curves[f"NFD {c} (L-grid {spec.nfd.L})"] = (_arr(best["loss"]), _arr(best["loss_stderr"]))
            # the limit's own depth error: its output on grid L against the reference grid's. The solves
            # share the seed (common random numbers), so their difference is far less noisy than the
            # independent-draw bound sqrt(se_L^2 + se_ref^2) of the replica standard errors
            ref = arrays[c][spec.nfd.L]["outputs"]
            Ls = sorted(L for L in lim if L < spec.nfd.L and L in spec.depths)
            se_ref = arrays[c][spec.nfd.L]["output_stderr"][1:]
            xs, ds = [], []
            for L in Ls:
                raw = _err(arrays[c][L]["outputs"], ref)
                mc = float(np.sqrt(np.mean(arrays[c][L]["output_stderr"][1:] ** 2 + se_ref**2)))
                grid_rows.append({"dataset": i, "coupling": c, "L": L, "error": raw,
                                  "independent-draw bound": mc})
                if 4 * L <= spec.nfd.L:  # the reference grid's own error small beside it
                    xs.append(L)
                    ds.append(raw)
            if len(xs) >= 2:
                _fit(measure, fits, {"dataset": i, "sweep": "depth", "param": "NFD grid",
                                     "mode": f"N = oo ({c})", "theory": "-1"}, xs, np.array(ds), spec)
        fin = [r for r in recs if r.config["role"] == "finite" and r.config["dataset"] == i]
        groups: dict = {}
        for r in fin:
            key = (r.config["param"], "gia" if r.config["gia"] else "ordinary", r.config["L"], r.config["D"])
            groups.setdefault(key, []).append(r)
        for (param, mode, L, D), rs in sorted(groups.items()):
            c = LIMIT_OF[mode]
            if c not in arrays:
                continue
            other = [arrays[o][L]["outputs"] for o in arrays if o != c and L in arrays[o]]
            ref = arrays[c][spec.nfd.L]["outputs"]
            ok = [r for r in rs if r.status == "done"]
            outs = [store.arrays(r.key)["outputs"] for r in ok]
            target_w = arrays[c][L]["outputs"] if L in arrays[c] else None
            e_ref = [_err(o, ref) for o in outs]
            e_w = [_err(o, target_w) for o in outs] if target_w is not None else []
            mean = np.mean(outs, axis=0) if outs else None
            losses = np.array([_arr(r.metrics["loss"]) for r in ok]) if ok else np.zeros((0, 1))
            rows.append({"dataset": i, "param": param, "mode": mode, "limit": c, "L": L, "D": D, "n": len(ok),
                         "diverged": len(rs) - len(ok),
                         "E vs ref": float(np.sqrt(np.mean(np.square(e_ref)))) if ok else math.nan,
                         "E vs same-L NFD": float(np.sqrt(np.mean(np.square(e_w)))) if e_w else math.nan,
                         "E_mean vs ref": _err(mean, ref) if mean is not None else math.nan,
                         "E_mean vs same-L NFD": (_err(mean, target_w) if mean is not None
                                                  and target_w is not None else math.nan),
                         "E_mean vs other limit": (_err(mean, other[0]) if mean is not None and other
                                                   else math.nan),
                         "loss final": float(np.mean(losses[:, -1])) if ok else math.nan,
                         "limit loss final": (_arr(lims[c][L].metrics["loss"])[-1] if L in lims[c]
                                              else math.nan),
                         "other limit loss final": next((_arr(lims[o][L].metrics["loss"])[-1] for o in lims
                                                         if o != c and L in lims[o]), math.nan),
                         "_e_ref": e_ref, "_e_w": e_w})
        df = pd.DataFrame(rows)
        cur = df[df["dataset"] == i] if len(df) else df
        # fits
        if "width" in spec.sweeps:
            for mode in spec.modes:
                sel = cur[(cur["param"] == "depth-mup") & (cur["mode"] == mode)
                          & (cur["L"] == spec.width_depth)]
                sel = sel[sel["D"].isin(spec.widths)].sort_values("D")
                _fit_cells(measure, fits, {"dataset": i, "sweep": "width", "param": "depth-mup", "mode": mode,
                                           "theory": "-1/2"}, sel, "D", "_e_w", spec)
        for sweep, param, modes, theory in (("depth", "depth-mup", spec.modes, "-1"),
                                            ("joint", "depth-mup", spec.modes, "-1"),
                                            ("mup", "mup", ["ordinary"], "")):
            if sweep not in spec.sweeps:
                continue
            for mode in modes:
                sel = cur[(cur["param"] == param) & (cur["mode"] == mode)]
                sel = sel[_on_sweep(spec, sweep, sel)].sort_values("L")
                _fit_cells(measure, fits, {"dataset": i, "sweep": sweep, "param": param, "mode": mode,
                                           "theory": theory}, sel, "L", "_e_ref", spec)
        # loss curves: the largest depth-sweep networks of each (param, mode)
        deep = cur[cur["D"] == spec.depth_width] if len(cur) else cur
        for (param, mode), g in (deep.groupby(["param", "mode"]) if len(deep) else []):
            Lmax = int(g["L"].max())
            rs = [r for r in groups.get((param, mode, Lmax, spec.depth_width), []) if r.status == "done"]
            if rs:
                ls = np.array([_arr(r.metrics["loss"]) for r in rs])
                curves[f"{param} {mode} (L={Lmax}, D={spec.depth_width})"] = (ls.mean(axis=0), None)
        res.curves[i] = curves
    cells = pd.DataFrame(rows)
    if len(cells):
        cells = cells.drop(columns=["_e_ref", "_e_w"])
        cells["cauchy (next L)"] = _cauchy_column(cells, recs, store, spec)
    res.cells, res.grid, res.fits = cells, pd.DataFrame(grid_rows), pd.DataFrame(fits)
    return res


def _on_sweep(spec, sweep: str, c: pd.DataFrame) -> pd.Series:
    """Rows of ``c`` on a sweep's path: (width_depth, widths), (depths, depth_width) or
    (joint_depths, joint_width L^2)."""
    if sweep == "width":
        return (c["L"] == spec.width_depth) & c["D"].isin(spec.widths)
    if sweep == "joint":
        return c["L"].isin(spec.joint_depths) & (c["D"] == spec.joint_width * c["L"] ** 2)
    return c["L"].isin(spec.depths) & (c["D"] == spec.depth_width)


def _cauchy_column(cells: pd.DataFrame, recs, store, spec) -> list[float]:
    outs: dict[tuple, list] = {}
    for r in recs:
        if r.config["role"] != "finite" or r.status != "done":
            continue
        key = (r.config["dataset"], r.config["param"], "gia" if r.config["gia"] else "ordinary",
               r.config["L"], r.config["D"])
        outs.setdefault(key, []).append(store.arrays(r.key)["outputs"])
    means = {k: np.mean(v, axis=0) for k, v in outs.items()}
    out = []
    for row in cells.to_dict("records"):
        key = (row["dataset"], row["param"], row["mode"], row["L"], row["D"])
        deeper = sorted(L for (d, p, m, L, D) in means if (d, p, m, D) == (key[0], key[1], key[2], key[4])
                        and L > key[3] and L in spec.depths)
        if row["D"] != spec.depth_width or row["L"] not in spec.depths or not deeper:
            out.append(math.nan)
            continue
        out.append(_err(means[key], means[(key[0], key[1], key[2], deeper[0], key[4])]))
    return out


def _fit(measure, fits: list, head: dict, xs, err: np.ndarray, spec) -> None:
    try:
        f = measure.fit_power_law(np.asarray(xs, float), err, n_boot=spec.analysis.n_boot, seed=spec.seed)
    except ValueError:
        return
    fits.append({**head, "exponent": f.exponent, "CI low": f.exponent_ci[0], "CI high": f.exponent_ci[1],
                 "constant": f.constant, "points": f.n_points})


def _fit_cells(measure, fits, head, sel: pd.DataFrame, axis: str, col: str, spec) -> None:
    if len(sel) < 2:
        return
    R = min(len(v) for v in sel[col])
    if R < 1:
        return
    err = np.array([np.asarray(v[:R], float) for v in sel[col]])
    _fit(measure, fits, head, sel[axis].to_numpy(), err, spec)


def summary_lines(res: NFDAnalysis) -> list[str]:
    lines = ["nfd: finite one-layer ResNets vs the Neural Feature Dynamics limit"]
    for r in _named(res.fits, res.names).to_dict("records"):
        theory = -0.5 if r["theory"] == "-1/2" else -1.0
        note = verdict_note(theory, r["CI low"], r["CI high"]) if r["theory"] else ""
        lines.append(f"  dataset {r['dataset']} {r['sweep']} sweep, {r['param']} {r['mode']}: error ~ "
                     f"{'D' if r['sweep'] == 'width' else 'L'}^{r['exponent']:+.3f} "
                     f"[{r['CI low']:+.3f}, {r['CI high']:+.3f}]"
                     + (f" (theory {r['theory']}; {note})" if r["theory"] else " (no limit: expect >= 0)"))
    return lines


def sections(kind, spec, store, res: NFDAnalysis, fig_dir) -> list[Section]:
    tr = spec.train
    names = res.names or dataset_names(spec)
    data_txt = "; ".join(
        f"dataset {names[i]} (P = {d.P}, P_test = {d.P_test}"
        + (f", d_in = {d.d_in}" if d.kind == "synthetic" else "") + f", |x| = {d.x_norm:g})"
        for i, d in enumerate(spec.datasets))
    intro = Section("Neural Feature Dynamics: finite one-layer ResNets against their limit", [
        f"{data_txt}. Training: {tr.optimizer} (lr eta = {tr.lr:g}, network lr eta D on every W^l"
        + (f", minibatch {tr.batch_size}" if tr.optimizer == "sgd" else "")
        + f"), {tr.steps} steps, loss {tr.loss}, activation {spec.activation}; one-layer blocks "
        "h^{l+1} = h^l + L^-1/2 D^-1/2 W^l phi(h^l), frozen embedding, readout W_u^T h^L / D (reslim's "
        "depth-mup preset, gamma_0 = 1). The limit: reslim.limits.NFDLimit (docs/limits.md), "
        f"{spec.nfd.particles} particles in {spec.nfd.replicas} replicas, Euler-Maruyama on the depth grid.",
        "Errors: RMS over steps 1..K, training points and outputs of f_net - f_NFD; fits by log-log "
        "least squares with 95% bootstrap intervals over repetitions (reslim.measure.fit_power_law).",
        f"Runs: {counts_text(res.counts)}; seconds by role: "
        + ", ".join(f"{_ROLE.get(k, k)} {v:.1f}" for k, v in res.seconds.items()) + "."])
    out = [intro]
    fits = res.fits
    b = Section("(b, c) Width and depth: finite networks approach the NFD", [
        "Width sweep at fixed depth against the limit on the same depth grid (the width error alone; "
        "theory -1/2). Depth sweep at fixed width against the reference grid (width and depth error "
        "together: the width error is a floor). Joint sweep: width joint_width L^2, so that both errors "
        "shrink like 1/L (theory -1). `NFD grid`: the limit on grid L against the reference grid (the "
        "depth error of infinite-width networks; theory -1, the paper's O(1/L)). `gia`: the GIA "
        "training mode (independent backward weights) of reslim.train. `limit`: the NFD each mode is "
        "compared with, `reused` (the coupled system, with the reused-weight responses: the limit of "
        "ordinary networks) or `gia` (the decoupled system: the limit of GIA networks); `E_mean vs "
        "same-L NFD` / `E_mean vs other limit`: the repetition mean against the limit of its own "
        "coupling / of the other one on the network's depth grid (the other is a floor where the "
        "couplings differ); `limit loss final`, `other limit loss final`: the final training loss of "
        "the two limits on the network's depth grid (the networks' own, the mean over repetitions, "
        "sits above its limit's by their O(1/D) output variance)."])
    if len(fits):
        b.tables.append(("Fitted exponents", _named(fits[fits["sweep"] != "mup"], names)))
    if len(res.grid):
        b.tables.append(("The limit's depth error (NFD grid L vs the reference grid, common random "
                         "numbers; the bound is the noise independent solves would have)",
                         _named(res.grid, names)))
    if len(res.cells):
        b.tables.append(("Errors per cell", _named(res.cells[res.cells["param"] == "depth-mup"], names)))
    for i in range(len(spec.datasets)):
        if "width" in spec.sweeps and len(res.cells):
            b.figures.append(_sweep_figure(spec, res, i, "D", fig_dir))
        if {"depth", "joint", "mup"} & set(spec.sweeps) and len(res.cells):
            b.figures.append(_sweep_figure(spec, res, i, "L", fig_dir))
    out.append(b)
    if "mup" in spec.sweeps and len(res.cells):
        d = Section("(d) muP without depth scaling: no limit in depth", [
            "The same depth sweep under muP (branch multiplier 1 instead of L^-1/2; in the depth figure "
            "above): the error against the NFD and the distance between the repetition means at "
            "consecutive depths (cauchy) do not shrink with L."])
        if len(fits):
            d.tables.append(("Fitted exponents", _named(fits[fits["sweep"] == "mup"], names)))
        d.tables.append(("Errors per cell", _named(res.cells[res.cells["param"] == "mup"], names)))
        out.append(d)
    if res.curves:
        out.append(Section("Training loss", [
            "The limit's loss (band: 2 replica standard errors) against the deepest networks of each sweep."],
            figures=[_loss_figure(res, i, fig_dir) for i in res.curves]))
    return out


def _sweep_figure(spec, res: NFDAnalysis, i: int, axis: str, fig_dir) -> FigureRef:
    """Error against the NFD vs D (the width sweep) or vs L (the depth, joint and muP sweeps, and
    the limit's own depth error), with the fitted power laws dashed."""
    fig, ax = figures.subplots(figsize=(6.2, 4.4))
    c = res.cells[res.cells["dataset"] == i]
    col = "E vs same-L NFD" if axis == "D" else "E vs ref"
    lines = ([("width", "depth-mup", "ordinary", "C0", "o-"), ("width", "depth-mup", "gia", "C1", "s-")]
             if axis == "D" else
             [("depth", "depth-mup", "ordinary", "C0", "o-"), ("depth", "depth-mup", "gia", "C1", "s-"),
              ("joint", "depth-mup", "ordinary", "C2", "o:"), ("joint", "depth-mup", "gia", "C4", "s:"),
              ("mup", "mup", "ordinary", "C3", "^-")])
    for sweep, param, mode, color, fmt in lines:
        if sweep not in spec.sweeps or not len(c):
            continue
        sel = c[(c["param"] == param) & (c["mode"] == mode)]
        sel = sel[_on_sweep(spec, sweep, sel)].sort_values(axis)
        if not len(sel):
            continue
        where = {"width": f"L={spec.width_depth}", "depth": f"D={spec.depth_width}",
                 "joint": f"D={spec.joint_width}L^2", "mup": f"D={spec.depth_width}"}[sweep]
        ax.plot(sel[axis], sel[col], fmt, color=color, ms=4, label=f"{param} {mode} ({where})")
        f = _fit_row(res.fits, i, sweep, param, mode)
        if f is not None:
            x = sel[axis].to_numpy(float)
            ax.plot(x, f["constant"] * x ** f["exponent"], "--", color=color, lw=0.9,
                    label=f"fit {f['exponent']:+.2f} [{f['CI low']:+.2f}, {f['CI high']:+.2f}]")
    if axis == "L" and len(res.grid):
        for c, g in res.grid[res.grid["dataset"] == i].groupby("coupling"):
            col = "k" if c == "reused" else "0.45"
            ax.plot(g["L"], g["error"], ".-", color=col, label=f"NFD {c} on grid L (N = oo)")
            ax.plot(g["L"], g["independent-draw bound"], color=col, lw=0.6, alpha=0.6,
                    label=f"replica noise, independent draws ({c})")
            f = _fit_row(res.fits, i, "depth", "NFD grid", f"N = oo ({c})")
            if f is not None:
                x = g["L"].to_numpy(float)
                ax.plot(x, f["constant"] * x ** f["exponent"], "--", color=col, lw=0.8,
                        label=f"fit {f['exponent']:+.2f}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("width D" if axis == "D" else "depth L")
    ax.set_ylabel("RMS output error vs the NFD")
    name = res.names[i] if i < len(res.names) else str(i)
    ax.set_title(f"dataset {name}: " + (f"width sweep at L = {spec.width_depth} (vs the NFD on that grid)"
                                     if axis == "D" else "depth sweeps (vs the reference grid)"), fontsize=9)
    ax.legend(fontsize=6.5, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(True, which="both", alpha=0.25)
    what = "width" if axis == "D" else "depth"
    return figures.save(fig, fig_dir, f"nfd-{what}-{i}", f"dataset {name}: error against the NFD vs {what}; "
                 "dashed: fitted power laws")


def _fit_row(fits: pd.DataFrame, i, sweep, param, mode):
    if not len(fits):
        return None
    f = fits[(fits["dataset"] == i) & (fits["sweep"] == sweep) & (fits["param"] == param)
             & (fits["mode"] == mode)]
    return None if not len(f) else f.iloc[0]


def _loss_figure(res: NFDAnalysis, i: int, fig_dir) -> FigureRef:
    fig, ax = figures.subplots(figsize=(6.2, 4.4))
    for j, (label, (loss, se)) in enumerate(res.curves[i].items()):
        k = np.arange(loss.size)
        nfd = label.startswith("NFD")
        color = ("k" if "reused" in label else "0.45") if nfd else f"C{j}"
        ax.plot(k, loss, "-", color=color, lw=1.6 if nfd else 1.1, label=label)
        if se is not None:
            ax.fill_between(k, loss - 2 * se, loss + 2 * se, color=color, alpha=0.2, lw=0)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    name = res.names[i] if i < len(res.names) else str(i)
    ax.set_title(f"dataset {name}: training loss", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.25)
    return figures.save(fig, fig_dir, f"nfd-loss-{i}",
                 f"dataset {name}: the NFD's training loss and the deepest networks'")
