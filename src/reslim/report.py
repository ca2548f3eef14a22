"""reslim.report: HTML/Markdown reports and figures built from a results store.

Public API (internals in ``reslim._src.report``)::

    write_report(out, spec=None)   analyse the store in ``out``; write report.md, report.html, figures/
    Section, FigureRef             what experiment kinds contribute to a report
    markdown_table(df)
"""

from ._src.experiments.reporting import ReportResult, write_report
from ._src.report.report import FigureRef, Section, markdown_table

__all__ = ["FigureRef", "ReportResult", "Section", "markdown_table", "write_report"]
