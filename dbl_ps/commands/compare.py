"""`dbl-ps compare --config FILE [--seeds 0,1] [--methods ...] [key=value ...]`: baseline,
DBSL, CPL and hybrid (and reference methods) on the same data and seeds, then one report.

The variants of a config (which itself describes the hybrid run); the first four are
the paper's methods and the default set:

* baseline:    every worker large (`dbl.small=0`), one resolution (the highest), no CPL
* dbsl:        the config's `dbl.small`, one resolution (the highest)
* cpl:         `dbl.small=0`, the config's resolution cycle
* hybrid:      the config as it is
* plain:       one worker with batch 128 at the highest resolution: plain single-process
               SGD (`dbl.workers=1`, `store.mode=bsp store.rule=average`, so each merge
               is a copy of the one worker's state)
* plain-large: the same with the baseline's batch per round, `dbl.workers` x its largest
               batch at that resolution (one process taking as many samples per step as
               the baseline's workers together: the large-batch reference)
* ddp-like:    the baseline's workers merged by a weighted average after every step
               (`store.mode=bsp store.rule=average store.sync_every=1`), where
               synchronous data-parallel training stands
* swa:         the baseline with stochastic weight averaging of the global model over the
               last part of the schedule (`swa.enabled=true`; the config's `swa.*`)
* local-sgd:   post-local SGD: ddp-like until the first LR milestone, then the workers
               merged every `store.post_local_every` steps (the config's, else 4)

SWA and post-local SGD are what those methods add: every other method runs without them,
whatever the config's `swa.enabled` and `store.post_local_every` say.

`dbsl:N` and `hybrid:N` set the number of small workers to N (labelled `dbsl-nN`,
`hybrid-nN`), so one comparison can hold several (`--methods baseline,dbsl:1,dbsl:3`).
`+swa` after dbsl or hybrid adds SWA to it (`dbsl:3+swa`, labelled `dbsl-n3-swa`).

Every variant keeps the config's LR, momentum, weight decay and epochs (nothing is tuned
per method).

All variants use the same time model: the config's, or one measured once at the
start and written into each variant's config, so their plans agree. The measured one is
kept in `--out`'s `time_model.json`: the same command started again (after a stop, or
with more methods or seeds) skips the finished runs, resumes the interrupted one and
plans the rest with that model, not a new measurement.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path
from typing import Any

from dbl_ps.commands._arguments import command_error
from dbl_ps.config import RunConfig

PAPER_METHODS = ("baseline", "dbsl", "cpl", "hybrid")
METHODS = (*PAPER_METHODS, "plain", "plain-large", "ddp-like", "swa", "local-sgd")
PLAIN_BATCH = 128  # the batch of the `plain` reference: a common single-process choice
LOCAL_SGD_EVERY = 4  # local-sgd's period after the switch where the config sets none (Lin et al.: a few steps)
PER_RESOLUTION = (("model", "dropout"), ("dbl", "batch_large"), ("dbl", "alpha"), ("dbl", "beta"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML run config of the hybrid run (default: the embedded digits job)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides applied to every variant")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1 (default: %(default)s)")
    parser.add_argument("--methods", default=",".join(PAPER_METHODS),
                        help=f"comma-separated subset of {','.join(METHODS)}; dbsl:N and hybrid:N with N small "
                             f"workers, +swa after dbsl or hybrid adds SWA (dbsl:3+swa) (default: %(default)s)")
    parser.add_argument("--out", metavar="DIR", help="folder for the runs and the report (default: OUT_DIR/compare-NAME-TIMESTAMP)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--wandb", action="store_true",
                        help="log every run to Weights & Biases, in one group so their curves overlay")


_error = partial(command_error, "compare")
WITH_SMALL = ("dbsl", "hybrid")  # the methods `:N` may follow


def parse_method(text: str) -> tuple[str, int | None, bool]:
    """`"dbsl:3"` -> `("dbsl", 3, False)`, `"dbsl:3+swa"` -> `("dbsl", 3, True)`, `"baseline"` ->
    `("baseline", None, False)`; ValueError for anything else, naming what is allowed."""
    method, plus, extra = text.partition("+")
    base, colon, small = method.partition(":")
    if (base not in METHODS or (colon and (base not in WITH_SMALL or not small.isdigit()))
            or (plus and (extra != "swa" or base not in WITH_SMALL))):
        raise ValueError(f"method {text!r}: expected one of {','.join(METHODS)}, or dbsl:N / hybrid:N with N small "
                         f"workers (e.g. dbsl:3), with +swa after dbsl or hybrid (e.g. dbsl:3+swa)")
    return base, int(small) if colon else None, bool(plus)


def method_label(text: str) -> str:
    """The run name and folder of a method: `dbsl:3` -> `dbsl-n3`, `dbsl:3+swa` -> `dbsl-n3-swa`."""
    base, small, swa = parse_method(text)
    return (base if small is None else f"{base}-n{small}") + ("-swa" if swa else "")


def variant(cfg: RunConfig, method: str, seed: int, group: str | None = None) -> Any:
    """The config of one method and seed (see the module doc); `group` is the W&B group
    shared by all runs of one comparison."""
    from dbl_ps.config import ConfigError, RunConfig, resolve_sync

    label = method_label(method)
    method, small, swa = parse_method(method)
    data = cfg.to_dict()
    res = list(cfg.schedule.resolutions)
    for section, key in PER_RESOLUTION:  # lists -> {px: value} so a single resolution still finds its value
        values = data[section][key]
        if isinstance(values, list):
            data[section][key] = {r: v for r, v in zip(res, values if len(values) > 1 else values * len(res))}
    if method != "cpl" and method != "hybrid":  # one resolution, the highest: no CPL
        data["schedule"]["resolutions"] = [max(res)]
    if method not in WITH_SMALL:
        data["dbl"]["small"] = 0
    elif small is not None:
        data["dbl"]["small"] = small
    if method in ("plain", "plain-large", "ddp-like", "local-sgd"):
        data["store"].update(mode="bsp", rule="average", staleness=0)
    if method in ("plain", "plain-large"):
        data["dbl"]["workers"] = 1
        if method == "plain":
            data["dbl"]["batch_large"] = {max(res): PLAIN_BATCH}
        else:
            large = cfg.batch_large()
            if large is None:
                raise ConfigError("compare --methods plain-large needs dbl.batch_large (the largest batch per "
                                  "resolution); the config takes it from a calibration file", key="dbl.batch_large")
            data["dbl"]["batch_large"] = {max(res): cfg.dbl.workers * large[res.index(max(res))]}
    if method in ("ddp-like", "local-sgd"):
        data["store"]["sync_every"] = 1
    # The remedies are what their methods add: the config's swa.* and store.post_local_* are
    # the settings of `swa`/`+swa` and `local-sgd`, and every other method runs without them.
    if method == "local-sgd":
        data["store"]["post_local_every"] = data["store"]["post_local_every"] or LOCAL_SGD_EVERY
    else:
        data["store"].update(post_local_every=None, post_local_start=None)
    data["swa"]["enabled"] = method == "swa" or swa
    data["name"] = label
    data["seed"] = seed
    wandb = data["tracking"]["wandb"]
    wandb["group"] = wandb["group"] or group
    wandb["tags"] = [*wandb["tags"], label, f"seed{seed}"]
    data["description"] = f"{label} variant (seed {seed}) of: {cfg.description}"
    # each sub-run is a one-machine run: its sync as it will run (and as its config.yaml says)
    return resolve_sync(RunConfig.from_dict(data), launched=False)


TIME_MODEL_FILE = "time_model.json"


def with_time_model(cfg: RunConfig, saved: Path | None = None, log=print) -> tuple[Any, dict | None]:
    """`cfg` with dbl.alpha/beta set, and the record of where they came from: the config's
    own (record None), the comparison's `saved` file (a resumed comparison keeps the time
    model its first runs were planned with), or measured once here (with its seconds)."""
    from dbl_ps.config import ConfigError, RunConfig
    from dbl_ps.data import load_dataset
    from dbl_ps.training.time_models import resolve_time_models

    if cfg.time_model() is not None or cfg.dbl.calibration:
        return cfg, None
    if saved is not None and saved.is_file():
        record = json.loads(saved.read_text())
        measured_at = sorted(int(r) for r in record["alpha"])
        if measured_at != sorted(cfg.schedule.resolutions):
            raise ConfigError(f"{saved} was measured at {measured_at} px, this comparison trains at "
                              f"{sorted(cfg.schedule.resolutions)} px; give another --out (or delete the file "
                              f"to measure again)", key="schedule.resolutions")
        log(f"time model: the comparison's own, measured when it started ({saved})")
    else:
        data = load_dataset(cfg.data, image_size=max(cfg.schedule.resolutions))
        import torch

        device = "cuda" if cfg.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
        models, _, source, seconds = resolve_time_models(cfg, num_classes=data.num_classes,
                                                         in_channels=data.in_channels, device=device, log=log)
        record = {"source": source, "seconds": seconds,
                  "alpha": {str(r): m.alpha for r, m in models.items()},
                  "beta": {str(r): m.beta for r, m in models.items()}}
        log(f"time model ({source}, {record['seconds']:.1f} s): " + ", ".join(
            f"{r}px alpha={m.alpha:.4g} beta={m.beta:.4g}" for r, m in models.items()))
    raw = cfg.to_dict()
    raw["dbl"]["alpha"] = {int(r): a for r, a in record["alpha"].items()}
    raw["dbl"]["beta"] = {int(r): b for r, b in record["beta"].items()}
    return RunConfig.from_dict(raw), record


def time_model_note(record: dict) -> str:
    """The report's line on a time model measured once for the whole comparison."""
    models = ", ".join(f"{r} px alpha {record['alpha'][r]:.4g} s, beta {record['beta'][r]:.4g} s/sample"
                       for r in record["alpha"])
    return (f"Time model measured once before the first run ({record['source']}, {record['seconds']:.1f} s) and "
            f"given to every run, so each run's own time-model column reads 0: {models}. Kept in "
            f"`{TIME_MODEL_FILE}` beside the runs, so a resumed comparison plans its remaining runs with it.")


def run(args: argparse.Namespace) -> int:
    from datetime import datetime

    from dbl_ps.commands.train import train_run
    from dbl_ps.config import ConfigError, load_config
    from dbl_ps.report import comparison_notes, format_table, load_run, summarize, write_report
    from dbl_ps.run_ownership import create_unique_dir, never_trained

    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        return _error(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 0,1")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        labels = [method_label(m) for m in methods]
    except ValueError as exc:
        return _error(f"--methods {args.methods!r}: {exc}")
    if not methods or not seeds or len(set(labels)) != len(labels):
        return _error(f"--methods {args.methods!r}: expected a comma-separated subset of {','.join(METHODS)} (each "
                      f"once), dbsl:N and hybrid:N with N small workers; --seeds at least one")
    try:
        notes: list[str] = []
        cfg = load_config(args.config, [*args.overrides, *(["tracking.wandb.enabled=true"] if args.wandb else [])],
                          notes=notes)
        for method in methods:  # every variant checked before any run
            for seed in seeds:
                variant(cfg, method, seed)
    except ConfigError as exc:
        return _error(str(exc))
    for note in notes:  # values that followed an override (e.g. milestones scaled to schedule.epochs)
        print(f"dbl-ps compare: {note}", flush=True)
    try:
        cfg, time_model = with_time_model(cfg, saved=Path(args.out) / TIME_MODEL_FILE if args.out else None)
    except (ConfigError, ValueError) as exc:
        return _error(str(exc))
    # A new folder is created at once (atomically, `-1`, `-2` ... when taken), so two
    # comparisons started in the same second never share one.
    out = Path(args.out) if args.out else create_unique_dir(Path(cfg.out_dir), f"compare-{cfg.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    if time_model is not None and not (out / TIME_MODEL_FILE).is_file():
        out.mkdir(parents=True, exist_ok=True)
        (out / TIME_MODEL_FILE).write_text(json.dumps(time_model, indent=2) + "\n")
    variants = {(method, seed): variant(cfg, method, seed, group=out.name) for seed in seeds for method in methods}
    for (method, seed), vcfg in variants.items():  # before any run: a sub-run made with another config is not ours
        problem = _reused_with_another_config(out / f"{method_label(method)}-s{seed}", vcfg)
        if problem is not None:
            return _error(problem)
    run_dirs, unfinished = [], []
    for (method, seed), vcfg in variants.items():
        run_dir = out / f"{method_label(method)}-s{seed}"
        print(f"=== {method}, seed {seed}: {run_dir}", flush=True)
        status = _status(run_dir)
        if status in ("finished", "diverged"):  # a diverged run would diverge again: it stays as it is
            print(f"    already done ({status}), skipped", flush=True)
            code = 0
        elif (run_dir / "checkpoint.json").is_file() or ((run_dir / "plan.json").is_file() and
                                                          not never_trained(run_dir)):
            code = train_run(None, resume=str(run_dir), progress=False if args.no_progress else None)
        else:  # new, or stopped while it started (only its set-up files: started anew)
            code = train_run(vcfg, run_dir=str(run_dir), progress=False if args.no_progress else None)
        status = _status(run_dir)
        if code != 0 and status != "diverged":
            return code
        if status == "finished":
            run_dirs.append(run_dir)
        else:  # shown with its status, never tabled as a result
            unfinished.append(f"{run_dir.name}: {status or 'no summary'}")
    if unfinished:
        print("not finished, left out of the table: " + "; ".join(unfinished), flush=True)
    if not run_dirs:
        print("dbl-ps compare: no run finished: nothing to compare", file=sys.stderr)
        return 1
    runs = [load_run(d) for d in run_dirs]
    baseline = "baseline" if "baseline" in methods else None
    more = [*seeds, *(s for s in range(max(seeds) + 1, max(seeds) + 3))]  # two seeds more; finished runs are kept
    hint = f"rerun with `--seeds {','.join(map(str, more))} --out {out}` (the finished runs are kept)"
    path = write_report(runs, out / "report", baseline=baseline, title=f"dbl-ps compare: {cfg.name}",
                        notes=[time_model_note(time_model)] if time_model is not None else [], seeds_hint=hint)
    rows = summarize(runs, baseline)
    print(format_table(rows, "plain"), end="")
    for note in comparison_notes(runs, rows, baseline, hint):
        print(f"note: {note}")
    print(f"report: {path}")
    return 1 if unfinished else 0


def _status(run_dir: Path) -> str | None:
    """summary.json's status of a sub-run (None: none yet)."""
    try:
        return json.loads((run_dir / "summary.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def _reused_with_another_config(run_dir: Path, vcfg: RunConfig) -> str | None:
    """One line when `run_dir` holds a run of another config than this comparison's (a
    second `compare` with other overrides into the same --out), else None."""
    from dbl_ps.config import ConfigError, config_differences, load_config

    if not (run_dir / "config.yaml").is_file():
        return None
    try:
        saved = load_config(run_dir / "config.yaml").to_dict()
    except ConfigError as exc:
        return f"{run_dir / 'config.yaml'} is not a readable run config ({exc}); choose another --out"
    differ = config_differences(saved, vcfg.to_dict())
    if not differ:
        return None
    shown = ", ".join(f"{key} ({there!r} there, {now!r} now)" for key, there, now in differ[:4])
    return (f"{run_dir} was trained with another config ({shown}); a comparison never reuses such a run: "
            f"give another --out, or the same config to continue it")

