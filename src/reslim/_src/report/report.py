"""Reports: ``report.md`` and a self-contained ``report.html`` (figures embedded as base64 PNG)
built from an output directory's store. The generic part (spec, run counts, failures) is here;
experiment kinds contribute :class:`Section`\\ s through :meth:`ExperimentKind.report`."""

from __future__ import annotations

import base64
import html
import json
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


@dataclass
class ReportResult:
    paths: dict[str, Path]
    analysis: Any
    summary: list[str]


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
            out += [markdown_table(df), ""]
        for f in s.figures:
            out += [f"![{f.caption}]({f.png.relative_to(base).as_posix()})", ""]
            if f.caption:
                out += [f"*{f.caption}*", ""]
    return "\n".join(out)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#f2f2f2}img{max-width:100%}figure{margin:1em 0}
figcaption{font-size:.9em;color:#555}code{background:#f4f4f4;padding:0 .2em}
pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#f8f8f8;padding:.5em}"""


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
            body.append(df.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}", border=0))
        for f in s.figures:
            data = base64.b64encode(f.png.read_bytes()).decode()
            body.append(f'<figure><img alt="{html.escape(f.caption)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(f.caption)}</figcaption></figure>")
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
    try:  # the spec as TOML, as the user writes it (TOML has no null: unset fields are left out)
        import tomli_w

        text = _inline_arrays(tomli_w.dumps(_without_none(spec.config())))
    except (ImportError, TypeError, ValueError):
        text = json.dumps(spec.config(), indent=1)
    paras.append("```\n" + text.strip() + "\n```")
    section = Section("Overview", paras)
    failed = mine[mine["status"] == "failed"] if len(mine) else mine
    if len(failed):
        section.tables.append(("Failed runs", failed[["label", "error"]].head(20)))
    return section


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


def write_report(out: str | Path, spec=None, store=None) -> ReportResult:
    """Analyse the store in ``out`` and write ``report.md``, ``report.html`` and figures there.

    ``spec``: the spec to report on (default: the one stored with the results). ``store``: the
    open store of ``out``, its lock held by the caller (default: open it and hold its lock while
    the report is written). Every analysis, table and figure sees only ``spec``'s runs (the kind's
    hooks get a view of the store restricted to them); files are written atomically.
    """
    from ..experiments.store import Store

    if store is not None:
        return _write_report(Path(store.directory), spec, store)
    with Store(out, create=False, lock=True) as own:
        return _write_report(Path(own.directory), spec, own)


def _write_report(out: Path, spec, store) -> ReportResult:
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
    try:
        analysis = kind.analyse(spec, view)
        fig_dir = out / FIGURE_DIR
        fig_dir.mkdir(parents=True, exist_ok=True)
        sections = [overview_section(spec, view), *kind.report(spec, view, analysis, fig_dir)]
        summary = kind.summary(spec, analysis)
        title = f"reslim report: {spec.name}"
        md, htm = out / "report.md", out / "report.html"
        atomic_write(md, render_markdown(title, sections, out))
        atomic_write(htm, render_html(title, sections))
    except OSError as err:  # disk full, read-only directory, ...
        raise StoreError(f"cannot write the report in {out}: {err.strerror or err}"
                         + (f" ({err.filename})" if err.filename else "")) from None
    return ReportResult({"markdown": md, "html": htm}, analysis, summary)
