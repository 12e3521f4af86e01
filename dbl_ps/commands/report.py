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
    parser.add_argument("--all", action="store_true",
                        help="table and plot runs that did not finish (diverged, interrupted) too, their status "
                             "beside their label (default: they are named and left out)")


def run(args: argparse.Namespace) -> int:
    from dbl_ps.report import ReportError, format_table, load_run, summarize, unfinished, write_report

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
        # A diverged or interrupted run is no result: named and left out (it was tabled as one)
        left = [(r, unfinished(r)) for r in runs if unfinished(r) is not None]
        if left and args.all:
            for run, status in left:
                run.label = f"{run.label} ({status})"
        elif left:
            print("not finished, left out (--all keeps them): " +
                  "; ".join(f"{r.run_dir} ({status})" for r, status in left), flush=True)
            runs = [r for r in runs if unfinished(r) is None]
            if not runs:
                print("dbl-ps report: error: no run finished: nothing to table", file=sys.stderr)
                return 1
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
