"""Rendering reports: :class:`Section`\\ s (paragraphs, tables, figures) as Markdown and as a
self-contained HTML page (figures embedded as base64 PNG), fit-table verdicts, atomic writes.

A leaf: nothing here imports :mod:`reslim._src.experiments`. Writing a run's report (the store,
the kind's hooks, the analysis cache) is :mod:`reslim._src.experiments.reporting`; experiment
kinds contribute sections through :meth:`ExperimentKind.report`."""

from __future__ import annotations

import base64
import html
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
