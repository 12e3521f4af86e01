"""The `dbl-ps` command line. Each subcommand lives in its own module under
`dbl_ps.commands` exposing `add_arguments(parser)` and `run(args) -> int`; this
file only wires them together, so adding a command never touches another's code."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from dbl_ps._process import mark_command, write_whole_lines

# name -> (module, one-line help). Modules are imported only when their command runs,
# so `dbl-ps plan` never pays for importing torch-heavy training code.
COMMANDS: dict[str, tuple[str, str]] = {
    "cleanup": ("dbl_ps.commands.cleanup", "remove shared-memory segments left by dead parameter stores"),
    "plan": ("dbl_ps.commands.plan", "DBSL plan: small batch, data shares and predicted epoch time per resolution"),
    "calibrate": ("dbl_ps.commands.calibrate", "measure the time model t(b) = alpha + beta*b and the largest batch"),
    "train": ("dbl_ps.commands.train", "train a model: parameter store + worker processes (DBSL, CPL, hybrid)"),
    "lr-find": ("dbl_ps.commands.lr_find", "LR range test on the run's model, data and batch: a plot and the "
                                           "suggested schedule.lr, written into the run config with --write"),
    "compare": ("dbl_ps.commands.compare", "run baseline, DBSL, CPL and hybrid on one config and write one report"),
    "report": ("dbl_ps.commands.report", "plots and a table (ratios to a baseline) for existing run directories"),
    "shard": ("dbl_ps.commands.shard", "pre-encode a data source into webdataset shards, one set per resolution"),
    "configs": ("dbl_ps.commands.configs", "list the configs shipped in the package, print or copy one"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dbl-ps",
        description="Dual batch size learning and cyclic progressive learning on a parameter server.",
    )
    # The deepspeed launcher passes --local_rank=N before the command (`deepspeed --module dbl_ps train ...`);
    # the rank is read from LOCAL_RANK, which it sets too.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(_module=module_name)
        importlib.import_module(module_name).add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    mark_command()  # a run's start-up counts from this process's start (dbl_ps._process)
    write_whole_lines()  # ranks printing at once do not merge their lines
    try:
        parser = build_parser()  # imports the commands (torch, for train): seconds
    except KeyboardInterrupt:  # Ctrl-C before anything ran: no traceback (under a launcher: one line, rank 0's)
        if os.environ.get("RANK", "0") == "0":
            print("dbl-ps: interrupted while starting; nothing was done", file=sys.stderr, flush=True)
        return 130
    # KEY=VALUE overrides may stand on both sides of options (`train engine=fsdp --run-dir D x=1`);
    # argparse alone takes one block of positionals, so the later ones are collected here.
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if args.command is None:
        parser.print_help()
        return 2
    try:
        module = importlib.import_module(args._module)
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":
            print(f"dbl-ps {args.command}: interrupted while starting; nothing was done", file=sys.stderr, flush=True)
        return 130
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:  # a Ctrl-C the command had no more to say about than this
        if os.environ.get("RANK", "0") == "0":
            print(f"dbl-ps {args.command}: interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as exc:
        line = one_line_error(exc)
        if line is None:  # an unexpected error keeps its traceback: that is what helps there
            raise
        print(f"dbl-ps {args.command}: error: {line}", file=sys.stderr, flush=True)
        return 1


def one_line_error(exc: BaseException) -> str | None:
    """The message of an error that already names the file or value and what to do (bad
    data, a damaged or vanished run directory, a failed write, a bad config), as one line;
    None for any other error. The commands catch these where they can add to them; this
    catches the ones raised where they cannot (the launcher's evaluation, its set-up files)."""
    from dbl_ps.config import ConfigError
    from dbl_ps.metrics import MetricsFileError
    from dbl_ps.run_ownership import RunWriteError

    kinds: tuple[type[BaseException], ...] = (ConfigError, MetricsFileError, RunWriteError)
    if "dbl_ps.data" in sys.modules:  # imported only if the command used it (it imports torch)
        from dbl_ps.data import DataError
        from dbl_ps.training.rundir import CheckpointError

        kinds += (DataError, CheckpointError)
    if not isinstance(exc, kinds):
        return None
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    if len(lines) > 1 and "Original Traceback" in str(exc):  # re-raised from a DataLoader worker process
        last = lines[-1]
        return last.split(": ", 1)[1] if last.split(": ", 1)[0].endswith("Error") else last
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
