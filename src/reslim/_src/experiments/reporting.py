"""Writing a run's report: :func:`write_report` analyses an output directory's store through its
experiment kind's hooks and writes ``report.md``, ``report.html`` and figures there, with the
analysis cache :data:`CACHE_FILE`. The generic sections (overview: spec, run counts, failures;
the spec itself) are built here; :mod:`reslim._src.report.report` only renders sections (it
knows nothing of specs, kinds or stores)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..report import report as render
from ..report.report import Section
from .registry import get_experiment
from .spec import validate_spec
from .store import Store, StoreError


@dataclass
class ReportResult:
    paths: dict[str, Path]
    analysis: Any
    summary: list[str]




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
    return get_experiment(spec.kind).expand(spec)


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
        fig_dir = out / render.FIGURE_DIR
        fig_dir.mkdir(parents=True, exist_ok=True)
        sections = [overview_section(spec, view), *kind.report(spec, view, analysis, fig_dir),
                    spec_section(spec)]
        summary = kind.summary(spec, analysis)
        title = f"reslim report: {spec.name}"
        render.atomic_write(md, render.render_markdown(title, sections, out))
        render.atomic_write(htm, render.render_html(title, sections))
        render.atomic_write(out / CACHE_FILE, json.dumps({"key": key, "summary": list(summary)}, indent=1))
    except OSError as err:  # disk full, read-only directory, ...
        raise StoreError(f"cannot write the report in {out}: {err.strerror or err}"
                         + (f" ({err.filename})" if err.filename else "")) from None
    return ReportResult({"markdown": md, "html": htm}, analysis, summary)
