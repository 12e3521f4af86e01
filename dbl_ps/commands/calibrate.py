"""`dbl-ps calibrate`: measure t(b) = alpha + beta*b per resolution and the largest batch.

Writes the JSON file that `dbl-ps plan --calibration` and `dbl.calibration` in a run
config read, and prints a table. torch is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import sys

from dbl_ps.commands._arguments import int_list, json_object
from dbl_ps.config import MODELS

R2_WARNING = 0.95



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="small_resnet",
                        help=f"{', '.join(MODELS)} or an import path 'package.module:callable' as in model.name "
                             "(default %(default)s)")
    parser.add_argument("--model-kwargs", type=json_object, default={}, metavar="JSON",
                        help="keyword arguments for a model by import path, e.g. '{\"model_name\": \"resnet50\"}'")
    parser.add_argument("--cifar-stem", action="store_true", help="the 3x3 stem without max-pool (model.cifar_stem)")
    parser.add_argument("--resolutions", type=int_list, required=True, help="pixels, comma list, e.g. 24,32")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default %(default)s)")
    parser.add_argument("--out", metavar="FILE", help="output JSON (default calibration-MODEL-DEVICE.json)")
    parser.add_argument("--num-classes", type=int, default=10, help="classifier outputs (default %(default)s)")
    parser.add_argument("--in-channels", type=int, default=3, help="image channels (default %(default)s)")
    parser.add_argument("--batch-sizes", type=int_list, help="batch-size grid (default: geometric from 8 to B_L)")
    parser.add_argument(
        "--batch-cap",
        type=int,
        help="CPU: the largest batch B_L (default 128); GPU: upper limit of the out-of-memory probe (default 65536)",
    )
    parser.add_argument("--points", type=int, default=6, help="grid points when --batch-sizes is not given (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per batch size (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per batch size; the median counts (default %(default)s)")
    parser.add_argument(
        "--statistic",
        choices=("median", "min"),
        default="median",
        help="per batch size: median of the timed steps, or min on a machine shared with other jobs (default %(default)s)",
    )
    parser.add_argument("--margin", type=float, default=0.9, help="GPU: B_L = margin x largest batch that fits (default %(default)s)")
    parser.add_argument(
        "--auto-cap",
        action="store_true",
        help="CPU: B_L = the grid batch with the best throughput (fewest seconds per sample); fit only up to it",
    )
    parser.add_argument("--compile", action="store_true", help="time the torch.compile'd model (warmed up per shape)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="autocast precision of the timed steps, as the run's `precision` (default %(default)s)")
    parser.add_argument("--channels-last", action="store_true",
                        help="channels-last model and batches, as the run's `channels_last`")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from dbl_ps.calibrate import calibrate, format_calibration_table, save_calibration
    from dbl_ps.config import RunConfig
    from dbl_ps.training.engine import engine_step_factory

    model_label = args.model.replace(":", ".").rsplit(".", 1)[-1]
    out = args.out or f"calibration-{model_label}-{args.device.replace(':', '')}.json"
    try:
        cal = calibrate(
            args.model,
            args.resolutions,
            # The step a run with these options trains with: the default run's optimizer and
            # loss, the precision, channels_last and compile given here (`engine: torch`).
            make_step=engine_step_factory(RunConfig()),
            device=args.device,
            num_classes=args.num_classes,
            in_channels=args.in_channels,
            batch_sizes=args.batch_sizes,
            batch_cap=args.batch_cap,
            grid_points=args.points,
            warmup=args.warmup,
            repeats=args.repeats,
            margin=args.margin,
            compile=args.compile,
            precision=args.precision,
            channels_last=args.channels_last,
            auto_cap=args.auto_cap,
            statistic=args.statistic,
            threads=args.threads,
            progress=not args.quiet,
            model_kwargs=args.model_kwargs,
            cifar_stem=args.cifar_stem,
        )
    except ValueError as err:
        print(f"dbl-ps calibrate: error: {err}", file=sys.stderr)
        return 2
    save_calibration(cal, out)
    print(format_calibration_table(cal))
    for r, c in cal.resolutions.items():
        if c.r2 < R2_WARNING:
            print(
                f"warning: at {r} px the step time is not linear in the batch size (R^2={c.r2:.3f} < {R2_WARNING}); "
                f"the plan will be off. Lower --batch-cap, raise --repeats, or calibrate on an idle machine.",
                file=sys.stderr,
            )
        if c.alpha <= 0:
            print(
                f"warning: at {r} px alpha={c.alpha:.3g} <= 0 (no fixed cost per step), so DBSL cannot pick a small "
                f"batch there; plan with n_S=0 or recalibrate.",
                file=sys.stderr,
            )
    print(f"wrote {out}")
    return 0
