"""`dbl-ps plan`: the DBSL plan (small batch, data shares, predicted epoch times) per resolution.

Time models come from exactly one source: a run config (`--config`, its `dbl` section),
calibration files (`--calibration`, one for all workers or one per worker for mixed
hardware), the authors' fits (`--preset cifar|imagenet`), or flags (`--alpha`,
`--beta`, `--batch-large`, `--resolutions`). Flags given next to a config or preset
override it. Prints every n_S in 0..W with the chosen one marked, or JSON with `--json`.
No torch import: planning is arithmetic.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, fields
from typing import Any

from dbl_ps.commands._arguments import float_list, int_list
from dbl_ps.config import DBSLConfig, RunConfig

# Training-set sizes of the built-in sources (digits: scikit-learn's 1797 minus the
# data module's default 360 test images). Others need --dataset-size.
TRAIN_SIZES = {"digits": 1437, "fashion_mnist": 60000, "mnist": 60000, "cifar10": 50000, "cifar100": 50000}
PRESETS: dict[str, dict[str, Any]] = {
    "cifar": {"dataset_size": 50000, "epochs": 140, "milestones": (80, 120), "dropouts": (0.1, 0.2)},
    "imagenet": {"dataset_size": 1281167, "epochs": 105, "milestones": (60, 90), "dropouts": (0.1, 0.2, 0.3)},
}




def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("time model source (one of)")
    src.add_argument("--config", metavar="FILE", help="run config (YAML); its dbl and schedule sections")
    src.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. dbl.tau=1.1")
    src.add_argument(
        "--calibration",
        metavar="FILE",
        action="append",
        help="file from `dbl-ps calibrate`; repeat once per worker for mixed hardware",
    )
    src.add_argument("--preset", choices=sorted(PRESETS), help="the authors' own time models and largest batches")
    src.add_argument("--alpha", type=float_list, help="seconds per step, one per resolution (comma list)")
    src.add_argument("--beta", type=float_list, help="seconds per sample, one per resolution (comma list)")
    src.add_argument("--resolutions", type=int_list, help="pixels, one per --alpha value (comma list)")
    src.add_argument("--batch-large", type=int_list, help="largest batch B_L, one per resolution (comma list)")
    p = parser.add_argument_group("plan")
    p.add_argument("--workers", type=int, help="W (default: config, else 4)")
    p.add_argument("--small", type=int, help="n_S, the chosen number of small workers (default: config, else 1)")
    p.add_argument("--tau", type=float, help="time budget, >= 1 (default: config, else 1.05)")
    p.add_argument("--batch-small", type=float_list, metavar="B", help="choose the small batch instead of the formula: "
                   "a size or a fraction of B_L below 1, one value or one per resolution (comma list; default: "
                   "config's dbl.batch_small, else planned from the time model)")
    p.add_argument("--dataset-size", type=int, help="N, training samples per epoch (default: from preset or config source)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of tables")
    m = parser.add_argument_group("mixed-batch data parallelism (sync mixed_batch; a config with it plans it too)")
    m.add_argument("--global-batch", type=int_list, metavar="B", help="split this global batch over the workers "
                   "(ranks) so their steps take the same time, one value or one per resolution (comma list)")
    m.add_argument("--memory-caps", type=int_list, metavar="M", help="each rank's largest batch per forward/backward "
                   "(comma list, one per rank, 0 = none; default: config's mixed.memory_caps, else none)")
    s = parser.add_argument_group("schedule")
    s.add_argument("--show-schedule", action="store_true", help="print the schedule table and draw it to a PNG")
    s.add_argument("--schedule-png", default="schedule.png", metavar="FILE", help="where --show-schedule draws (default %(default)s)")
    s.add_argument("--epochs", type=float, help="global epochs (default: config or preset, else 140)")
    s.add_argument("--lr", type=float, help="base learning rate (default: config, else 0.2)")
    s.add_argument("--milestones", type=float_list, help="LR milestones in epochs (default: config or preset, else 80,120)")
    s.add_argument("--gamma", type=float, help="LR factor at each milestone (default 0.1)")
    s.add_argument("--warmup-epochs", type=float, help="linear LR warm-up (default: config, else 0)")
    s.add_argument("--dropouts", type=float_list, help="dropout per resolution (default: config or preset, else 0)")


@dataclass
class PlanInputs:
    """Everything `make_plan` and the schedule need, gathered from config, files and flags."""

    time_models: dict[int, Any]
    batch_large: dict[int, Any]
    workers: int
    small: int
    tau: float
    dataset_size: int
    min_small_batch: int = 1
    batch_small: dict[int, float] | None = None  # chosen small batch per resolution (None: the formula)
    epochs: float = 140
    lr: float = 0.2
    milestones: tuple[float, ...] = (80, 120)
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    warmup_start_factor: float = 0.1
    dropouts: tuple[float, ...] | None = None
    cyclic: bool = True
    global_batch: dict[int, int] | None = None  # sync mixed_batch: B per resolution (None: a DBSL plan)
    memory_caps: list[int | None] | None = None  # sync mixed_batch: each rank's cap (None: none)


def _global_batches(cfg: RunConfig) -> dict[int, int]:
    """B per resolution of a mixed-batch config (the config requires mixed.global_batch there)."""
    given = cfg.global_batch()
    if given is None:
        raise ValueError("sync mixed_batch takes the batch of every step (all ranks together) from mixed.global_batch, "
                         "or dbl.workers x dbl.batch_large: give one of them")
    return dict(zip(cfg.schedule.resolutions, given))


def inputs_from_config(cfg: RunConfig, dataset_size: int | None = None) -> PlanInputs:
    """Plan inputs from a `dbl_ps.config.RunConfig` (time model from `dbl.alpha/beta` or
    `dbl.calibration`; `dataset_size` defaults to the source's training-set size)."""
    from dbl_ps.calibrate import configured_time_models

    # The same reading of dbl.alpha/beta, dbl.calibration and dbl.batch_large as `dbl-ps train`'s.
    models, batches, _, _ = configured_time_models(cfg)
    if not models:
        raise ValueError(
            "the config has no time model: set dbl.alpha and dbl.beta, or dbl.calibration to a file "
            "from `dbl-ps calibrate` (`dbl-ps train` measures one on the spot instead)"
        )
    if not batches:
        raise ValueError("the config has no largest batch: set dbl.batch_large or dbl.calibration")
    if dataset_size is None:
        source = cfg.data.source
        if source == "synthetic":
            dataset_size = cfg.data.synthetic.num_train
        elif source in TRAIN_SIZES:
            dataset_size = TRAIN_SIZES[source]
        else:
            raise ValueError(f"data.source={source!r} has no known training-set size; pass --dataset-size")
        if cfg.data.train_limit is not None:
            dataset_size = min(dataset_size, cfg.data.train_limit)
    return PlanInputs(
        time_models=models,
        batch_large=batches,
        workers=cfg.dbl.workers,
        small=cfg.dbl.small,
        tau=cfg.dbl.tau,
        dataset_size=dataset_size,
        min_small_batch=cfg.dbl.min_small_batch,
        batch_small=cfg.batch_small(),
        epochs=cfg.schedule.epochs,
        lr=cfg.schedule.lr,
        milestones=tuple(cfg.schedule.milestones),
        gamma=cfg.schedule.gamma,
        warmup_epochs=cfg.schedule.warmup_epochs,
        warmup_start_factor=getattr(cfg.schedule, "warmup_start_factor", 0.1),
        dropouts=tuple(cfg.dropouts()),
        cyclic=cfg.schedule.cyclic,
        global_batch=_global_batches(cfg) if cfg.sync == "mixed_batch" else None,
        memory_caps=cfg.memory_caps() if cfg.sync == "mixed_batch" else None,
    )


def gather_inputs(args: argparse.Namespace) -> PlanInputs:
    """Resolve the command line into `PlanInputs` (ValueError on conflicts or gaps)."""
    from dbl_ps.planner import PAPER_BATCH_LARGE, PAPER_TIME_MODELS, TimeModel

    sources = [
        name
        for name, given in (
            ("--config", args.config),
            ("--calibration", args.calibration),
            ("--preset", args.preset),
            ("--alpha/--beta", args.alpha is not None or args.beta is not None),
        )
        if given
    ]
    if len(sources) > 1:
        raise ValueError(f"give one time model source, not {' and '.join(sources)}")
    if args.overrides and not args.config:
        raise ValueError(f"overrides {args.overrides} need --config")

    if args.config:
        from dbl_ps.config import load_config

        inputs = inputs_from_config(load_config(args.config, args.overrides), args.dataset_size)
    elif args.calibration:
        from dbl_ps.calibrate import calibration_time_models

        cals = [calibration_time_models(path) for path in args.calibration]  # every resolution of each file
        common = sorted(set.intersection(*(set(c.models) for c in cals)))
        if not common:
            raise ValueError(f"the calibration files {args.calibration} share no resolution")
        models: dict[int, Any]  # one time model per resolution, or one per worker (a file each)
        batches: dict[int, Any]
        if len(cals) == 1:
            models = {r: cals[0].models[r] for r in common}
            batches = {r: cals[0].batches[r] for r in common}
        else:
            models = {r: [c.models[r] for c in cals] for r in common}
            batches = {r: [c.batches[r] for c in cals] for r in common}
        workers = args.workers if args.workers is not None else (len(cals) if len(cals) > 1 else 4)
        if len(cals) > 1 and workers != len(cals):
            raise ValueError(f"--workers={workers} but {len(cals)} calibration files (give one per worker, or one for all)")
        if args.dataset_size is None:
            raise ValueError("--calibration needs --dataset-size (training samples per epoch)")
        inputs = PlanInputs(models, batches, workers, 1, 1.05, args.dataset_size)
    elif args.preset:
        preset = PRESETS[args.preset]
        inputs = PlanInputs(
            dict(PAPER_TIME_MODELS[args.preset]),
            dict(PAPER_BATCH_LARGE[args.preset]),
            4,
            1,
            1.05,
            preset["dataset_size"],
            epochs=preset["epochs"],
            milestones=preset["milestones"],
            dropouts=preset["dropouts"],
        )
    elif args.alpha is not None:
        if args.beta is None or args.batch_large is None or args.resolutions is None:
            raise ValueError("--alpha needs --beta, --batch-large and --resolutions (one value per resolution each)")
        if args.dataset_size is None:
            raise ValueError("--alpha needs --dataset-size (training samples per epoch)")
        k = len(args.resolutions)
        for name, values in (("--alpha", args.alpha), ("--beta", args.beta), ("--batch-large", args.batch_large)):
            if len(values) != k:
                raise ValueError(f"{name} has {len(values)} values for {k} resolutions {args.resolutions}")
        if len(set(args.resolutions)) != k:
            raise ValueError(f"--resolutions={args.resolutions} lists a resolution twice")
        models = {r: TimeModel(alpha=a, beta=b) for r, a, b in zip(args.resolutions, args.alpha, args.beta)}
        inputs = PlanInputs(models, dict(zip(args.resolutions, args.batch_large)), 4, 1, 1.05, args.dataset_size)
    else:
        raise ValueError("no time model: give --config, --calibration, --preset, or --alpha/--beta/--batch-large/--resolutions")

    # flags override whatever the source said
    if args.batch_large is not None and args.alpha is None:
        res = sorted(inputs.time_models)
        if len(args.batch_large) != len(res):
            raise ValueError(f"--batch-large has {len(args.batch_large)} values for {len(res)} resolutions {res}")
        inputs.batch_large = dict(zip(res, args.batch_large))
    for name in ("workers", "small", "tau", "dataset_size", "epochs", "lr", "gamma", "warmup_epochs"):
        value = getattr(args, name)
        if value is not None:
            setattr(inputs, name, value)
    most = next(f for f in fields(DBSLConfig) if f.name == "workers").metadata["le"]  # the config's bound
    if not 1 <= inputs.workers <= most:
        raise ValueError(f"--workers={inputs.workers} must be in 1..{most} (as dbl.workers)")
    if args.milestones is not None:
        inputs.milestones = tuple(args.milestones)
    if args.dropouts is not None:
        inputs.dropouts = tuple(args.dropouts)
    if args.batch_small is not None:
        res = sorted(inputs.time_models)
        if len(args.batch_small) not in (1, len(res)):
            raise ValueError(f"--batch-small has {len(args.batch_small)} values; give 1 or one per resolution {res}")
        inputs.batch_small = dict(zip(res, args.batch_small * len(res) if len(args.batch_small) == 1 else args.batch_small))
    return inputs


def schedule_spec(inputs: PlanInputs, plan: Any) -> Any:
    """The `ScheduleSpec` of a plan: resolutions and batch sizes from the plan, the rest from inputs."""
    from dbl_ps.schedule import ScheduleSpec

    resolutions = tuple(plan.resolutions)
    rplans = [plan[r] for r in resolutions]
    return ScheduleSpec(
        epochs=inputs.epochs,
        base_lr=inputs.lr,
        milestones=tuple(m for m in inputs.milestones),
        gamma=inputs.gamma,
        warmup_epochs=inputs.warmup_epochs,
        warmup_start_factor=inputs.warmup_start_factor,
        resolutions=resolutions,
        dropouts=inputs.dropouts,
        # uniform hardware: every large worker's B_L; mixed hardware: the largest, and
        # each worker reads its own batch from plan[r].batches
        batch_large=tuple(max(p.batch_large) for p in rplans),
        batch_small=tuple(p.batch_small for p in rplans) if plan.small else None,
        cyclic=inputs.cyclic,
    )


def predicted_run_seconds(plan: Any, spec: Any) -> float:
    """Sum over schedule phases of (phase epochs) x (predicted epoch seconds at its resolution)."""
    from dbl_ps.schedule import phases

    return sum((ph.end - ph.start) * plan[ph.resolution].epoch_seconds for ph in phases(spec))


def format_plan_table(rows: list[tuple[int, Any]], chosen: int) -> str:
    """One line per (n_S, resolution): b_S, shares, predicted epoch seconds; chosen n_S marked."""
    header = ("", "n_S", "res", "b_S", "B_L", "b_S/B_L", "d_S", "d_L", "epoch s", "vs all-large", "merge f_S")
    lines: list[tuple[str, ...]] = [header]
    for n_s, result in rows:
        mark = "*" if n_s == chosen else ""
        if isinstance(result, Exception):
            lines.append((mark, str(n_s), "-", "infeasible: " + str(result)))
            continue
        for r, p in result.resolutions.items():
            lines.append(
                (
                    mark,
                    str(n_s),
                    str(r),
                    "-" if p.batch_small is None else str(p.batch_small),
                    "/".join(sorted({str(b) for b in p.batch_large})),
                    "-" if p.small_fraction is None else f"{p.small_fraction:.0%}",
                    "-" if p.d_small is None else str(p.d_small),
                    "-" if p.small == p.workers else str(p.d_large),
                    f"{p.epoch_seconds:.4g}",
                    f"{p.epoch_seconds / p.baseline_epoch_seconds:.3f}",
                    "-" if p.small == 0 else f"{p.merge_weights[0]:.3f}",
                )
            )
    widths = [max(len(line[i]) for line in lines if len(line) > i and len(line) == len(header)) for i in range(len(header))]
    out = []
    for line in lines:
        if len(line) == len(header):
            out.append("  ".join(c.rjust(w) for c, w in zip(line, widths)))
        else:
            out.append("  ".join(c.rjust(w) for c, w in zip(line[:3], widths[:3])) + "  " + line[3])
    return "\n".join(out)


def format_mixed_table(plan: Any) -> str:
    """One line per (resolution, rank): its batch, micro-batches, share, steps and predicted step
    time, against the equal split stock DDP takes."""
    from dbl_ps.planner import step_seconds

    header = ("res", "rank", "b_i", "micro", "share", "steps", "step s", "equal-split step s")
    lines = [header]
    for r, rp in plan.resolutions.items():
        caps = rp.memory_caps or (None,) * rp.workers
        even = [rp.global_batch // rp.workers + (1 if i < rp.global_batch % rp.workers else 0)
                for i in range(rp.workers)]
        for i in range(rp.workers):
            lines.append((str(r), str(i), str(rp.batches[i]), str(rp.micro_batches[i]), str(rp.shares[i]),
                          str(rp.steps()[i]), f"{step_seconds(rp.time_models[i], rp.batches[i], caps[i]):.4g}",
                          f"{step_seconds(rp.time_models[i], even[i], caps[i]):.4g}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines)


def run_mixed(args: argparse.Namespace) -> int:
    """`dbl-ps plan` of sync mixed_batch: the split of the global batch, per rank."""
    from dbl_ps.planner import InfeasiblePlanError, plan_lines, plan_mixed

    try:
        inputs = gather_inputs(args)
        res = sorted(inputs.time_models)
        if args.global_batch is not None:
            if len(args.global_batch) not in (1, len(res)):
                raise ValueError(f"--global-batch has {len(args.global_batch)} values; give 1 or one per resolution {res}")
            inputs.global_batch = dict(zip(res, args.global_batch * len(res) if len(args.global_batch) == 1
                                           else args.global_batch))
        if args.memory_caps is not None:
            inputs.memory_caps = [c or None for c in args.memory_caps]  # 0: no cap
        models = {r: inputs.time_models[r] for r in res}
        if inputs.global_batch is None:
            raise ValueError("a mixed-batch plan needs the global batch: give --global-batch")
        plan = plan_mixed(models, inputs.global_batch, inputs.workers, inputs.dataset_size, inputs.memory_caps)
    except (InfeasiblePlanError, ValueError) as err:
        print(f"dbl-ps plan: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2))
        return 0
    print(f"W={inputs.workers} ranks, N={inputs.dataset_size}, one global batch per step split so every rank's step "
          f"takes the same time (sync mixed_batch)")
    print(format_mixed_table(plan))
    for line in plan_lines(plan):
        print(line)
    return 0


def _plans_mixed_batch(args: argparse.Namespace) -> bool:
    if args.global_batch is not None or args.memory_caps is not None:
        return True
    if not args.config:
        return False
    from dbl_ps.config import ConfigError, load_config

    try:
        return load_config(args.config, args.overrides).sync == "mixed_batch"
    except ConfigError:
        return False  # the DBSL path says what is wrong with it


ALL_COUNTS_UP_TO = 32  # workers up to which `table_small_counts` lists every n_S


def table_small_counts(workers: int, chosen: int, tau: float) -> list[int]:
    """The ``n_S`` a plan table shows: every one up to ``ALL_COUNTS_UP_TO`` workers; beyond, at
    most about 35 (0..8, each sixteenth of ``W``, the chosen one and its neighbours, and the
    first count that leaves the small workers data at ``tau`` on uniform hardware,
    ``n_S > W (1 - 1/tau)``). All ``W + 1`` of 4096 workers took minutes (a plan costs O(W))."""
    if workers <= ALL_COUNTS_UP_TO:
        return list(range(workers + 1))
    first = math.floor(workers * (1 - 1 / tau)) + 1 if tau > 1 else 1
    picks = {*range(9), *(round(workers * k / 16) for k in range(1, 17)), *range(chosen - 2, chosen + 3),
             *range(first - 1, first + 2)}
    return sorted(n for n in picks if 0 <= n <= workers)


def _counts_note(shown: int, workers: int) -> str:
    return (f"(the table shows {shown} of the {workers + 1} small-worker counts; --small N plans any other)"
            if shown < workers + 1 else "")


def run(args: argparse.Namespace) -> int:
    if _plans_mixed_batch(args):
        return run_mixed(args)
    from dbl_ps.planner import InfeasiblePlanError, make_plan, plan_all_small_counts

    try:
        inputs = gather_inputs(args)
        counts = table_small_counts(inputs.workers, inputs.small, inputs.tau)
        rows = plan_all_small_counts(inputs.time_models, inputs.batch_large, inputs.workers, inputs.tau,
                                     inputs.dataset_size, inputs.min_small_batch, inputs.batch_small, counts=counts)
        plan = make_plan(inputs.time_models, inputs.batch_large, inputs.workers, inputs.small, inputs.tau,
                         inputs.dataset_size, inputs.min_small_batch, inputs.batch_small)
        spec = schedule_spec(inputs, plan) if args.show_schedule else None
    except InfeasiblePlanError as err:
        if not args.json:
            print(format_plan_table(rows, inputs.small))
            print(_counts_note(len(counts), inputs.workers))
        print(f"dbl-ps plan: error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"dbl-ps plan: error: {err}", file=sys.stderr)
        return 2

    if args.json:
        out = plan.to_dict()
        out["options"] = [
            {"small": n, "feasible": not isinstance(p, Exception), "error": str(p) if isinstance(p, Exception) else None,
             "batch_small": None if isinstance(p, Exception) else [x.batch_small for x in p.resolutions.values()],
             "predicted_epoch_seconds": None if isinstance(p, Exception) else [x.epoch_seconds for x in p.resolutions.values()]}
            for n, p in rows
        ]
        if spec is not None:
            from dbl_ps.schedule import phases, plot_schedule

            plot_schedule(spec, args.schedule_png)
            out["schedule"] = {"method": spec.method, "phases": [ph.to_dict() for ph in phases(spec)],
                               "predicted_run_seconds": predicted_run_seconds(plan, spec), "png": args.schedule_png}
        print(json.dumps(out, indent=2))
        return 0

    print(
        f"W={inputs.workers} workers, N={inputs.dataset_size}, tau={inputs.tau:g}; "
        f"small workers are ids 0..n_S-1; * = chosen n_S={inputs.small}"
    )
    print(format_plan_table(rows, inputs.small))
    if len(counts) < inputs.workers + 1:
        print(_counts_note(len(counts), inputs.workers))
    for line in plan.regime_lines():  # what the chosen plan's small batch is on this device
        print(line)
    if spec is not None:
        from dbl_ps.schedule import format_phases, plot_schedule

        print()
        print(f"schedule ({spec.method}):")
        print(format_phases(spec))
        total = predicted_run_seconds(plan, spec)
        top = max(plan.resolutions)
        all_large = rows[0][1]
        assert not isinstance(all_large, InfeasiblePlanError)  # n_S = 0, always feasible
        baseline = spec.epochs * all_large[top].epoch_seconds
        print(
            f"predicted training time {total:.4g} s = {total / baseline:.3f} x all-large training at {top} px "
            f"({baseline:.4g} s)"
        )
        plot_schedule(spec, args.schedule_png)
        print(f"schedule drawn to {args.schedule_png}")
    return 0
