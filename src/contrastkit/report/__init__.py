"""The run report: one self-contained HTML page with the curves, metrics, similarity and examples."""

from contrastkit.report.html import render_html, write_report

__all__ = ["render_html", "write_report"]
