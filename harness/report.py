"""Tables from run records: a pure step that only reads record files (STYLE.md #11).

``python -m harness.report RECORD_OR_DIR... [--out DIR]`` writes ``summary.csv`` and ``summary.md``: one row per
record with the median epoch time, the speedup over ``pyg`` on the same model and graph, accuracy and peak memory;
``planner.csv`` / ``planner.md`` when flexgnn ran a case with several planners (``harness/report_planner.py``);
``claims.md`` when records ran under ``hardware.memory_cap`` (FlexGNN's claims, reported vs measured:
``harness/claims.py``); and the plots the records support (``harness/plots.py``: ``speedup.png``, ``prediction.png``).
A sweep writes the same files into its sweep directory when its last job ends.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from harness.claims import write_claims
from harness.plots import write_plots
from harness.report_planner import summary_line, write_planner
from harness.summary import BASELINE, COLUMNS, markdown, row_of, summarize, write_summary

__all__ = ["BASELINE", "COLUMNS", "markdown", "row_of", "summarize", "write_reports", "write_summary"]


def write_reports(record_paths: list[Path], out_dir: Path) -> tuple[list[Path], dict[str, Any] | None]:
    """Every table and plot these records support, into ``out_dir``: (paths written, planner summary or None)."""
    records = [json.loads(Path(path).read_text()) for path in record_paths]  # read once for every table and plot
    paths = write_summary(records, out_dir)
    planner_paths, planner = write_planner(records, out_dir)
    claims_paths, _ = write_claims(records, out_dir)
    return [*paths, *planner_paths, *claims_paths, *write_plots(records, out_dir)], planner


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="record files or directories searched recursively")
    parser.add_argument("--out", type=Path, default=Path("."), help="directory for the tables and plots")
    args = parser.parse_args(argv)
    files = sorted({file for path in args.paths
                    for file in ([path] if path.is_file() else path.rglob("*.json"))})
    paths, planner = write_reports(files, args.out)
    for path in paths:
        print(path)
    if planner is not None:
        print(summary_line(planner))


if __name__ == "__main__":
    main()
