"""``ipcv-study report OUT``: the Pareto analysis of a finished (or partial) sweep.

Reads the results store, writes to ``OUT/report/``: ``report.md`` (the summary a person reads
first), ``frontier.csv`` / ``speedup.csv`` / ``stages.csv`` (the tables in full), PNG figures
(frontier per cost, time per stage, quality against reduction ratio), ``report.html`` (one
self-contained interactive page), and, unless W&B is disabled, a W&B summary run plus the W&B
Report (saved online; offline its validated definition goes to ``wandb_report.json``).

Modules: ``pareto`` (the analysis), ``numbers`` (3 significant figures, spreads, speed-up
intervals and noise), ``tables`` (the tables as shown: headers and formatted cells, the sweep
summary), ``provenance`` (the header: device, versions, commit, dtype, repeats), ``figures``
(PNGs), ``html`` (the page), ``markdown`` (the summary), ``wandb_report`` (W&B), ``builder``
(reading the store and writing everything).
"""

from pipeline.report.builder import ReportError, ReportResult, build_report, load_results
from pipeline.report.markdown import markdown_table

__all__ = ["ReportError", "ReportResult", "build_report", "load_results", "markdown_table"]
