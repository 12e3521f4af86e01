"""`dbl-ps lr-find [--config FILE] [KEY=VALUE ...]`: the LR range test on the run's own
model, data, batch and engine (`dbl_ps.training.lr_find`), a plot and the suggested
`schedule.lr`, which `--write` puts into the run config (`--write-to FILE`: into another).

    dbl-ps lr-find --config my_run.yaml --write            # then: dbl-ps train --config my_run.yaml
    dbl-ps lr-find model.name=torchvision.models:resnet18 data.source=imagefolder data.path=DIR

The test trains one fresh copy of the run's model (seeded as the run's) in this process with
the run's engine, optimizer, loss, augmentation and dropout, at the largest batch `B_L` of
one resolution (default the highest, where the run ends), while the LR rises from
`--min-lr` to `--max-lr` over `--steps` steps; nothing of the run directory is touched.
Files: `lr_find.png` and `lr_find.json` in `--out` (default OUT_DIR/NAME-lr-find).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from dbl_ps.commands._arguments import command_error
from dbl_ps.config import ConfigError, RunConfig, load_config
from dbl_ps.metrics import strict_dumps
from dbl_ps.run_ownership import atomic_write

error = partial(command_error, "lr-find")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("KEY=VALUE takes any config key, as `dbl-ps train` does (`dbl-ps configs --keys`). The suggestion "
                     "is the LR of the lowest smoothed loss divided by 10 (fastai's lr_min; --method steepest: "
                     "the steepest descent, Lightning's default); see dbl_ps/training/lr_find.py for why.")
    parser.add_argument("--config", metavar="FILE", help="YAML run config (default: the embedded digits job)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, as for dbl-ps train")
    parser.add_argument("--steps", type=int, default=200, help="steps of the LR ramp (default %(default)s)")
    parser.add_argument("--min-lr", type=float, default=1e-6, help="first LR of the ramp (default %(default)s)")
    parser.add_argument("--max-lr", type=float, default=10.0, help="last LR of the ramp (default %(default)s)")
    parser.add_argument("--resolution", type=int, metavar="PX",
                        help="the resolution to test at, one of schedule.resolutions (default: the highest)")
    parser.add_argument("--batch", type=int, help="batch size (default: dbl.batch_large at that resolution)")
    parser.add_argument("--method", choices=("min10", "steepest"), default="min10",
                        help="how the LR is suggested (default %(default)s)")
    parser.add_argument("--out", metavar="DIR", help="folder for lr_find.png and lr_find.json "
                                                     "(default OUT_DIR/NAME-lr-find)")
    parser.add_argument("--write", action="store_true",
                        help="write the suggested schedule.lr into the --config file; its other lines, comments "
                             "included, are kept")
    parser.add_argument("--write-to", metavar="FILE",
                        help="write the suggested schedule.lr into FILE instead (created when missing)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    notes: list[str] = []
    try:
        cfg = load_config(args.config, args.overrides, notes=notes)
    except ConfigError as exc:
        return error(str(exc))
    for note in notes:
        if not note.startswith("your model and data train with"):  # the line that points here
            print(f"dbl-ps lr-find: {note}", flush=True)
    problem = _check_arguments(args, cfg)
    if problem:
        return error(problem)
    target = _write_target(args)
    if isinstance(target, str):
        return error(target)
    return _find(args, cfg, target)


def _check_arguments(args: argparse.Namespace, cfg: RunConfig) -> str | None:
    if args.steps < 20:
        return f"--steps {args.steps}: give at least 20 (the suggestion reads the smoothed loss after its first 10)"
    if not 0 < args.min_lr < args.max_lr:
        return f"--min-lr {args.min_lr:g} and --max-lr {args.max_lr:g}: give 0 < --min-lr < --max-lr"
    if args.resolution is not None and args.resolution not in cfg.schedule.resolutions:
        return f"--resolution {args.resolution}: give one of schedule.resolutions {cfg.schedule.resolutions}"
    if args.batch is not None and args.batch < 1:
        return f"--batch {args.batch}: give a batch size >= 1"
    if args.batch is None and cfg.batch_large() is None:
        return "dbl.batch_large is null (B_L comes from the calibration file): give --batch B_L"
    return None


def _write_target(args: argparse.Namespace) -> Path | None | str:
    """The file --write / --write-to names, checked before anything is trained (a str: what
    is wrong)."""
    if args.write and args.write_to:
        return "--write writes into the --config file, --write-to into another: give one"
    if args.write:
        if args.config is None or not Path(args.config).is_file():
            return ("--write writes into the --config file, and there is none here (a shipped config is copied "
                    "out first: `dbl-ps configs --copy NAME DEST`); or give --write-to FILE")
        path, flag = Path(args.config), "--write"
    elif args.write_to:
        path, flag = Path(args.write_to), "--write-to"
    else:
        return None
    if path.is_dir():
        return f"{flag} {path}: that is a folder; give a YAML file (created when missing)"
    if path.exists() and not os.access(path, os.W_OK):
        return f"{flag} {path}: the file is not writable"
    if not path.exists() and not path.parent.is_dir():
        return f"{flag} {path}: folder {path.parent} does not exist"
    return path


def _find(args: argparse.Namespace, cfg: RunConfig, target: Path | None) -> int:
    # torch-heavy modules are imported when the command runs: `dbl-ps --help` stays fast
    import torch

    from dbl_ps.data import DataError, build_transform, load_dataset
    from dbl_ps.runtime.engine_setup import build_engine, check_engine_config, check_store_mode_engine, engine_options
    from dbl_ps.shards import share_loader_for
    from dbl_ps.training.lr_find import lr_range_test, plot_lr_find
    from dbl_ps.training.cores import cpu_cores
    from dbl_ps.training.run_model import build_run_model, check_run_model
    from dbl_ps.training.topology import LaunchError, Topology

    say = (lambda m: None) if args.quiet else (lambda m: print(f"dbl-ps lr-find: {m}", flush=True))
    started = time.perf_counter()
    try:
        check_engine_config(cfg, say)
        data = load_dataset(cfg.data, image_size=max(cfg.schedule.resolutions), log=say)
    except (DataError, LaunchError, ValueError) as exc:
        return error(str(exc))
    index = cfg.schedule.resolutions.index(args.resolution or max(cfg.schedule.resolutions))
    resolution, dropout = cfg.schedule.resolutions[index], cfg.dropouts()[index]
    large = cfg.batch_large()
    if not args.batch and large is None:
        return error("the config takes B_L from its calibration file (dbl.batch_large is null): give --batch")
    batch = args.batch or (large or [])[index]
    batch = min(batch, len(data.train))
    device = torch.device("cuda" if cfg.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    torch.set_num_threads(int(cfg.threads_per_worker) if cfg.threads_per_worker else cpu_cores())
    out = Path(args.out) if args.out else Path(cfg.out_dir) / f"{cfg.name}-lr-find"
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)  # the run's initial model
    try:
        model = build_run_model(cfg, data.num_classes, data.in_channels, dropout=dropout, log=say)
        check_run_model(cfg, model, data.num_classes, data.in_channels, device)
        check_store_mode_engine(cfg)  # one process, as a store-mode worker
        engine = build_engine(cfg, model.to(device), device, Topology.single(0, 1), batch_size=batch,
                              options=engine_options(cfg, out, resuming=False))
    except (LaunchError, ValueError) as exc:
        return error(str(exc))
    engine.warm_up([(batch, resolution, dropout)], data.in_channels)
    engine.set_batch_size(batch)
    engine.module.train()
    loader = share_loader_for(cfg.data, data.train, build_transform(cfg.data, data), resolutions=[resolution],
                              worker=0, shares=[len(data.train)], batch_size=batch, resolution=resolution,
                              seed=cfg.seed, epoch=0, device=device)
    batches = _endless(loader, len(data.train), batch, resolution)
    say(f"{args.steps} steps of {cfg.model.name} at batch {batch}, {resolution} px (B_L there), engine {cfg.engine}, "
        f"optimizer {cfg.optim.name}, LR {args.min_lr:g} -> {args.max_lr:g}")

    def step(lr: float) -> float:
        engine.set_lr(lr)
        images, labels = next(batches)
        loss, _ = engine.train_step(images, labels)
        return float(loss)

    def progress(i: int, lr: float, loss: float) -> None:
        if (i + 1) % 25 == 0:
            say(f"step {i + 1}/{args.steps}  lr {lr:.3g}  loss {loss:.4g}")

    finding = lr_range_test(step, min_lr=args.min_lr, max_lr=args.max_lr, steps=args.steps, method=args.method,
                            on_step=progress)
    seconds = time.perf_counter() - started
    title = f"{cfg.name}: {cfg.model.name}, batch {batch} at {resolution} px"
    plot = plot_lr_find(finding, out / "lr_find.png", title)
    record = {**finding.to_dict(), "model": cfg.model.name, "engine": cfg.engine, "optimizer": cfg.optim.name,
              "batch": batch, "resolution": resolution, "dropout": dropout, "seconds": round(seconds, 1),
              "config": args.config, "overrides": list(args.overrides)}
    (out / "lr_find.json").write_text(strict_dumps(record, indent=1) + "\n")
    ended = {"diverged": f"the loss diverged at lr {finding.lrs[-1]:.3g}", "not finite":
             f"the loss was not finite at lr {finding.lrs[-1]:.3g}", "all steps": "all steps taken"}[finding.stop]
    print(f"dbl-ps lr-find: {len(finding.lrs)} steps in {seconds:.0f} s ({ended}); plot {plot}")
    if finding.suggestion is None:
        return error(f"too few steps before the loss stopped ({len(finding.lrs)}): lower --min-lr or --max-lr, or "
                     f"give more --steps")
    if finding.still_falling:
        print(f"dbl-ps lr-find: warning: the loss was still falling at --max-lr {args.max_lr:g}; raise --max-lr to "
              f"see where it turns", file=sys.stderr)
    steepest = f"{finding.steepest_lr:.3g}" if finding.steepest_lr else "none before the minimum"
    why = (f"the lowest smoothed loss is at lr {finding.min_loss_lr:.3g}, / 10" if finding.method == "min10"
           else "the steepest descent of the smoothed loss")
    print(f"dbl-ps lr-find: suggested schedule.lr {finding.suggestion:.3g} ({why}; steepest descent at {steepest}). "
          f"It is every worker's peak LR: the small-batch workers train at it too")
    if target is not None:
        try:
            write_schedule_lr(target, finding.suggestion)
        except (OSError, ValueError) as exc:
            return error(f"writing schedule.lr into {target}: {exc}")
        print(f"dbl-ps lr-find: schedule.lr {finding.suggestion:.3g} written to {target}; train with: "
              f"dbl-ps train --config {target}")
    else:
        command = ["dbl-ps train", *(["--config", args.config] if args.config else []), *args.overrides,
                   f"schedule.lr={finding.suggestion:.3g}"]
        print(f"dbl-ps lr-find: train with: {' '.join(command)}")
    return 0


def _endless(loader: Any, samples: int, batch: int, resolution: int):
    """The loader's batches across epochs (a new shuffle each epoch), for as many steps as asked."""
    epoch = 0
    while True:
        yield from loader
        epoch += 1
        loader.set_epoch(epoch, shares=[samples], batch_size=batch, resolution=resolution)


_SECTION = re.compile(r"^schedule:\s*(#.*)?$")
_FLOW = re.compile(r"^(schedule:\s*)\{(.*)\}(\s*(?:#.*)?)$")  # a flow mapping on one line
_FLOW_LR = re.compile(r"((?:^|,)\s*)lr:\s*[^,}]*")
_LR_LINE = re.compile(r"^(\s+)lr:(\s*)([^#\n]*?)(\s*#.*)?$")


def write_schedule_lr(path: Path, lr: float) -> None:
    """Set `schedule.lr` in the YAML run config `path` (created when missing), keeping every
    other line, comments included: the `lr:` line of the block-style `schedule:` section is
    rewritten, or added as its first key; in a one-line `schedule: {...}` the `lr:` entry is
    rewritten or put first; else a `schedule:` section is appended. The result is
    loaded back and must be a valid config with that LR; else the file is left as it was."""
    value = f"{lr:.3g}"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if _SECTION.match(line)), None)
    flow = next((i for i, line in enumerate(lines) if _FLOW.match(line)), None)
    if start is None and flow is not None:  # schedule: {epochs: 6, lr: 0.1} on one line
        m = _FLOW.match(lines[flow])
        assert m is not None  # the line `flow` was found by this pattern
        body = m.group(2)
        if _FLOW_LR.search(body):
            body = _FLOW_LR.sub(lambda k: f"{k.group(1)}lr: {value}", body, count=1)
        else:
            body = f"lr: {value}, {body}" if body.strip() else f"lr: {value}"
        lines[flow] = f"{m.group(1)}{{{body}}}{m.group(3)}"
    elif start is None:
        if re.search(r"^schedule:", text, re.M):
            raise ValueError("its schedule section is written in a form this edit does not follow (a flow mapping "
                             "over several lines?); set schedule.lr by hand")
        lines += ["schedule:", f"  lr: {value}"]
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].strip() and not lines[i][0].isspace()),
                   len(lines))
        found = next((i for i in range(start + 1, end) if _LR_LINE.match(lines[i])), None)
        if found is not None:
            m = _LR_LINE.match(lines[found])
            assert m is not None  # the line `found` was found by this pattern
            lines[found] = f"{m.group(1)}lr:{m.group(2) or ' '}{value}{m.group(4) or ''}"
        else:
            indent = next((lines[i][:len(lines[i]) - len(lines[i].lstrip())] for i in range(start + 1, end)
                           if lines[i].strip() and not lines[i].lstrip().startswith("#")), "  ")
            lines.insert(start + 1, f"{indent}lr: {value}")
    new = "\n".join(lines) + "\n"

    def write_checked(tmp: Path) -> None:  # the file is replaced only by one that reads back with that LR
        tmp.write_text(new, encoding="utf-8")
        try:
            if load_config(tmp).schedule.lr != float(value):
                raise ValueError("the edited file does not read back with that schedule.lr; set it by hand")
        except ConfigError as exc:
            raise ValueError(f"the edited file is not a valid config ({exc}); set schedule.lr by hand") from None

    atomic_write(path, write_checked)
