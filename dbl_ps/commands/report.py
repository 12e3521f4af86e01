"""`dbl-ps report RUN_DIR... [--out DIR] [--baseline LABEL]`: plots and table for existing runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (config + metrics.jsonl)")
    parser.add_argument("--out", metavar="DIR", default="report", help="where the report goes (default: %(default)s)")
    parser.add_argument("--baseline", metavar="LABEL",
                        help="label (config name) the ratios are against (default: 'baseline' if present, else none)")
    parser.add_argument("--title", default="dbl-ps report")


def run(args: argparse.Namespace) -> int:
    from dbl_ps.report import ReportError, format_table, load_run, summarize, write_report

    out = Path(args.out)
    # Checked before any run is read: the report is a folder of files (a table and plots).
    blocker = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        where = "is a file" if blocker == out else f"lies under the file {blocker}"
        print(f"dbl-ps report: error: --out {out} {where}; give a directory (new or existing) for the report",
              file=sys.stderr)
        return 2
    try:
        runs = [load_run(d) for d in args.run_dirs]
        baseline = args.baseline
        if baseline is None and any(r.label == "baseline" for r in runs):
            baseline = "baseline"
        path = write_report(runs, args.out, baseline=baseline, title=args.title)
    except (ReportError, FileNotFoundError, ValueError) as exc:
        print(f"dbl-ps report: error: {exc}", file=sys.stderr)
        return 2
    print(format_table(summarize(runs, baseline), "plain"), end="")
    print(f"report: {path}")
    return 0
