"""Reports: ``report.md`` and a self-contained ``report.html`` (figures embedded as base64 PNG)
built from an output directory's store. The generic part (spec, run counts, failures) is here;
experiment kinds contribute :class:`Section`\\ s through :meth:`ExperimentKind.report`."""

from __future__ import annotations

import base64
import html
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

FIGURE_DIR = "figures"


@dataclass
class FigureRef:
    """A figure written to disk as PNG (and SVG)."""

    png: Path
    caption: str = ""
    svg: Path | None = None


@dataclass
class Section:
    """A report section: paragraphs (Markdown-light text), tables and figures, in that order."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    figures: list[FigureRef] = field(default_factory=list)
    #: ``(summary, text)``: shown collapsed (``<details>``) in HTML, as a code block in Markdown
    details: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class ReportResult:
    paths: dict[str, Path]
    analysis: Any
    summary: list[str]


#: where the docs explain what an exponent inconsistent with the theory can mean
VERDICT_DOC = "docs/experiments.md#reading-the-fitted-exponents"


def verdict(theory: Any, lo: Any, hi: Any) -> str:
    """``consistent`` if the theory's exponent lies in the 95% interval ``[lo, hi]``, else
    ``inconsistent``; empty when either is unknown (no theory value, no interval)."""
    try:
        t, a, b = _number(theory), float(lo), float(hi)
    except (TypeError, ValueError, ZeroDivisionError):
        return ""
    if not all(map(math.isfinite, (t, a, b))):
        return ""
    return "consistent" if min(a, b) <= t <= max(a, b) else "inconsistent"


def _number(x: Any) -> float:
    """A float from a number or a fraction written as text (``-1/2``)."""
    if isinstance(x, str):
        from fractions import Fraction

        return float(Fraction(x.strip().replace(" ", "")))
    return float(x)


def verdict_note(theory: Any, lo: Any, hi: Any) -> str:
    """The verdict for a printed fit line: ``consistent at 95%`` or ``INCONSISTENT at 95% (see ...)``."""
    v = verdict(theory, lo, hi)
    if v == "consistent":
        return "consistent at 95%"
    if v == "inconsistent":
        return f"INCONSISTENT at 95%, see {VERDICT_DOC}"
    return ""


def with_verdicts(df: pd.DataFrame) -> pd.DataFrame:
    """A fit table with a ``verdict`` column (theory inside the 95% interval or not) when it has
    ``exponent``, ``CI low``, ``CI high`` and ``theory`` columns and no verdict yet."""
    need = {"CI low", "CI high", "theory"}
    if not need <= set(df.columns) or "verdict" in df.columns:
        return df
    out = df.copy()
    out["verdict"] = [verdict(t, lo, hi) for t, lo, hi in zip(df["theory"], df["CI low"], df["CI high"],
                                                              strict=True)]
    return out


def markdown_table(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "" if pd.isna(v) else f"{v:.4g}"
    return str(v).replace("|", "\\|")


def render_markdown(title: str, sections: list[Section], base: Path) -> str:
    out = [f"# {title}", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for p in s.paragraphs:
            out += [p, ""]
        for caption, df in s.tables:
            if caption:
                out += [f"**{caption}**", ""]
            out += [markdown_table(with_verdicts(df)), ""]
            if "verdict" in with_verdicts(df).columns:
                out += [f"*verdict: the theory's exponent inside the 95% interval or not; see {VERDICT_DOC}*",
                        ""]
        for f in s.figures:
            out += [f"![{f.caption}]({f.png.relative_to(base).as_posix()})", ""]
            if f.caption:
                out += [f"*{f.caption}*", ""]
        for summary, text in s.details:
            out += [f"**{summary}**", "", "```", text.strip(), "```", ""]
    return "\n".join(out)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
.table-wrap{overflow-x:auto;max-width:100%;margin:.5em 0 1.5em}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#f2f2f2;text-align:left}td.text{text-align:left}img{max-width:100%}
td.inconsistent{background:#fde2e1;color:#8a1c13;font-weight:600}td.consistent{color:#1b6e20}
figure{margin:1em 0}figcaption{font-size:.9em;color:#555}code{background:#f4f4f4;padding:0 .2em}
pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#f8f8f8;padding:.5em}
details{margin:2em 0;border-top:1px solid #ccc;padding-top:.5em}summary{cursor:pointer;font-weight:600}"""


def html_table(df: pd.DataFrame) -> str:
    """A table in a horizontally scrolling wrapper; text cells left-aligned, numbers right-aligned,
    verdicts coloured (an inconsistent one links to the docs' explanation)."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for row in df.itertuples(index=False):
        cells = []
        for col, v in zip(df.columns, row, strict=True):
            if col == "verdict" and v in ("consistent", "inconsistent"):
                text = (f'<a href="{VERDICT_DOC}">inconsistent</a>' if v == "inconsistent" else v)
                cells.append(f'<td class="text {v}">{text}</td>')
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                cells.append(f"<td>{html.escape(_cell(v))}</td>")
            else:
                cells.append(f'<td class="text">{html.escape(str(v))}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _inline(text: str) -> str:
    """Escape, then render ``code`` spans."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def render_html(title: str, sections: list[Section]) -> str:
    body = [f"<h1>{html.escape(title)}</h1>"]
    for s in sections:
        body.append(f"<h2>{html.escape(s.title)}</h2>")
        for p in s.paragraphs:
            if p.startswith("```"):
                body.append(f"<pre>{html.escape(p.strip('`').strip())}</pre>")
            elif p.startswith("- "):
                items = "".join(f"<li>{_inline(x[2:])}</li>" for x in p.splitlines())
                body.append(f"<ul>{items}</ul>")
            else:
                body.append(f"<p>{_inline(p)}</p>")
        for caption, df in s.tables:
            if caption:
                body.append(f"<p><b>{html.escape(caption)}</b></p>")
            body.append(html_table(with_verdicts(df)))
        for f in s.figures:
            data = base64.b64encode(f.png.read_bytes()).decode()
            body.append(f'<figure><img alt="{html.escape(f.caption)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(f.caption)}</figcaption></figure>")
        for summary, text in s.details:
            body.append(f"<details><summary>{html.escape(summary)}</summary>"
                        f"<pre>{html.escape(text.strip())}</pre></details>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>")


def _inline_arrays(toml: str) -> str:
    """Arrays of scalars on one line, ``M = [2, 4, 8]``, as a person writes them."""
    import re

    def one_line(m: re.Match) -> str:
        return "[" + ", ".join(x.strip().rstrip(",") for x in m.group(1).splitlines()) + "]"

    return re.sub(r"\[\n((?:[ \t]+[^\[\]{}\n]+,\n)+)\]", one_line, toml)


def _without_none(value):
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_without_none(v) for v in value]
    return value


def overview_section(spec, store) -> Section:
    """Spec, run counts by status (diverged and failed are counted, never hidden), failures."""
    df = store.dataframe()
    keys = {r.key for r in _expand(spec)}
    mine = df[df["key"].isin(keys)] if len(df) else df
    counts = mine["status"].value_counts().to_dict() if len(mine) else {}
    total = len(keys)
    skipped = {k: v for k, v in (store.get_meta("skipped", {}) or {}).items() if k in keys}
    missing = total - len(mine) - len(skipped)
    paras = [
        f"Experiment `{spec.name}` (kind `{spec.kind}`): {total} runs — "
        f"{counts.get('done', 0)} done, {counts.get('diverged', 0)} diverged (excluded from fits), "
        f"{counts.get('failed', 0)} failed, {len(skipped)} skipped, {missing} not run.",
    ]
    if skipped:
        reasons = sorted({str(v.get("reason", "?")) for v in skipped.values()})
        more = f" (and {len(reasons) - 1} other reasons)" if len(reasons) > 1 else ""
        paras.append(f"Skipped (not computed, their reference is not usable): {reasons[0]}{more}.")
    if spec.description:
        paras.insert(0, spec.description)
    section = Section("Overview", paras)
    failed = mine[mine["status"] == "failed"] if len(mine) else mine
    if len(failed):
        section.tables.append(("Failed runs", failed[["label", "error"]].head(20)))
    return section


def spec_text(spec) -> str:
    """The spec as TOML, as the user writes it (TOML has no null: unset fields are left out)."""
    try:
        import tomli_w

        return _inline_arrays(tomli_w.dumps(_without_none(spec.config())))
    except (ImportError, TypeError, ValueError):
        return json.dumps(spec.config(), indent=1)


def spec_section(spec) -> Section:
    """The full spec, last in the report and collapsed in HTML."""
    return Section("Spec", [f"The spec of `{spec.name}`, as stored with the results (TOML)."],
                   details=[(f"spec {spec.name} (click to show)", spec_text(spec))])


def _expand(spec):
    from ..experiments.registry import get_experiment

    return get_experiment(spec.kind).expand(spec)


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write ``path`` through a temporary file in the same directory renamed over it: readers see
    the old file or the new one, never a partial one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_report(out: str | Path, spec=None, store=None, cache: bool = True) -> ReportResult:
    """Analyse the store in ``out`` and write ``report.md``, ``report.html`` and figures there.

    ``spec``: the spec to report on (default: the one stored with the results). ``store``: the
    open store of ``out``, its lock held by the caller (default: open it and hold its lock while
    the report is written). When the report in ``out`` was written from the same spec and store
    content (:data:`CACHE_FILE`), nothing is analysed or rewritten (the stored checksums are
    still verified): the result's ``analysis`` is then None and its summary the cached one;
    ``cache=False`` always analyses and rewrites (``reslim report`` does). Every analysis, table
    and figure sees only ``spec``'s runs (the kind's hooks get a view of the store restricted to
    them); files are written atomically.
    """
    from ..experiments.store import Store

    if store is not None:
        return _write_report(Path(store.directory), spec, store, cache)
    with Store(out, create=False, lock=True) as own:
        return _write_report(Path(own.directory), spec, own, cache)


#: the analysis cache in an output directory: the key of the store's content the report was
#: written from, and the summary lines (JSON; nothing executable)
CACHE_FILE = "report-cache.json"


def _cache_key(spec, view) -> str:
    import hashlib

    from ... import __version__

    text = json.dumps({"spec": spec.config(), "store": view.content_digest(), "reslim": __version__},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _cached(out: Path, key: str) -> list[str] | None:
    """The cached summary when the report in ``out`` was written from the same content, else None."""
    try:
        data = json.loads((out / CACHE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key:
        return None
    if not all((out / name).is_file() for name in ("report.md", "report.html")):
        return None
    summary = data.get("summary")
    return [str(x) for x in summary] if isinstance(summary, list) else None


def _write_report(out: Path, spec, store, cache: bool = True) -> ReportResult:
    from ..experiments.registry import get_experiment
    from ..experiments.spec import validate_spec
    from ..experiments.store import StoreError

    if spec is None:
        data = store.get_meta("spec")
        if data is None:
            raise ValueError(f"{out}: the store holds no spec")
        spec = validate_spec(data)
    kind = get_experiment(spec.kind)
    view = store.only(r.key for r in kind.expand(spec))  # this spec's runs, nothing else
    md, htm = out / "report.md", out / "report.html"
    key = _cache_key(spec, view)
    summary = _cached(out, key) if cache else None
    if summary is not None:  # nothing new in the store: the report on disk is this one
        view.verify()  # the key holds the stored checksums: check the data still matches them
        return ReportResult({"markdown": md, "html": htm}, None, summary)
    try:
        analysis = kind.analyse(spec, view)
        fig_dir = out / FIGURE_DIR
        fig_dir.mkdir(parents=True, exist_ok=True)
        sections = [overview_section(spec, view), *kind.report(spec, view, analysis, fig_dir),
                    spec_section(spec)]
        summary = kind.summary(spec, analysis)
        title = f"reslim report: {spec.name}"
        atomic_write(md, render_markdown(title, sections, out))
        atomic_write(htm, render_html(title, sections))
        atomic_write(out / CACHE_FILE, json.dumps({"key": key, "summary": list(summary)}, indent=1))
    except OSError as err:  # disk full, read-only directory, ...
        raise StoreError(f"cannot write the report in {out}: {err.strerror or err}"
                         + (f" ({err.filename})" if err.filename else "")) from None
    return ReportResult({"markdown": md, "html": htm}, analysis, summary)
