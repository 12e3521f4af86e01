"""`dbl-ps configs`: the configs shipped inside the package (a pip install has no repository).

    dbl-ps configs                                  # list them with what each one runs
    dbl-ps configs --show cifar100_resnet18         # print one
    dbl-ps configs --copy cifar100_resnet18 my.yaml # copy one out to edit it (DEST may be a folder)
    dbl-ps configs --keys                           # every config key: what it takes, its default, what it does
    dbl-ps configs --keys dbl                       # the keys of one section (or keys containing the text)

`dbl-ps train --config NAME` and `deepspeed_config: NAME` take the names directly.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from functools import partial
from pathlib import Path

from dbl_ps.commands._arguments import command_error



def add_arguments(parser: argparse.ArgumentParser) -> None:
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--copy", nargs=2, metavar=("NAME", "DEST"),
                        help="copy the shipped config NAME to the file or existing folder DEST")
    action.add_argument("--show", metavar="NAME", help="print the shipped config NAME")
    action.add_argument("--keys", nargs="?", const="", metavar="TEXT",
                        help="list every config key (KEY=VALUE overrides, YAML) with what it takes, its default and "
                             "what it does; TEXT: only the keys containing it (e.g. dbl, lr)")
    parser.add_argument("--force", action="store_true", help="with --copy: overwrite DEST if it exists")


_error = partial(command_error, "configs")


def _describe(path: Path) -> str:
    """What a shipped file is: a run config's `description`, else its kind."""
    if path.suffix == ".yaml":
        import yaml

        try:
            return str((yaml.safe_load(path.read_text()) or {}).get("description", ""))
        except (yaml.YAMLError, AttributeError):
            return ""
    if path.suffix == ".json":
        import json

        try:
            ds = json.loads(path.read_text())
        except json.JSONDecodeError:
            return "DeepSpeed engine config"
        precision = next((p for p in ("bf16", "fp16") if ds.get(p, {}).get("enabled")), "fp32")
        stage = ds.get("zero_optimization", {}).get("stage", 0)
        return f"DeepSpeed engine config: {precision}, ZeRO stage {stage} (engine: deepspeed, deepspeed_config: NAME)"
    return "example file"


def _find(name: str) -> tuple[Path | None, str]:
    from dbl_ps.configs import find_packaged, packaged_files

    path = find_packaged(name)
    if path is None:
        return None, f"no shipped config named {name!r}; the names are {', '.join(packaged_files())}"
    return path, ""


def format_keys(text: str = "", width: int = 100) -> str:
    """The config keys containing `text` as `--keys` prints them: the key and its default on
    one line, what it takes and what it does indented below."""
    import textwrap

    import yaml

    from dbl_ps.config import config_keys

    lines = []
    for key in config_keys():
        if text not in key.key:
            continue
        # YAML flow style: what an override or a config file takes ({12: 96}, not JSON's {"12": 96})
        default = yaml.safe_dump(key.default, default_flow_style=True, width=10**6).strip().removesuffix("\n...")
        lines.append(f"{key.key} = {default}")
        about = f"{key.kind}" + (f"; {key.help}" if key.help else "")
        lines += textwrap.wrap(about, width, initial_indent="    ", subsequent_indent="    ")
    return "\n".join(lines) + "\n" if lines else ""


def run(args: argparse.Namespace) -> int:
    from dbl_ps.configs import CONFIG_DIR, packaged_files

    if args.force and not args.copy:
        return _error("--force only applies to --copy NAME DEST")
    if args.keys is not None:
        listing = format_keys(args.keys)
        if not listing:
            return _error(f"no config key contains {args.keys!r}; `dbl-ps configs --keys` lists them all")
        sys.stdout.write(listing)
        return 0
    if args.show:
        path, problem = _find(args.show)
        if path is None:
            return _error(problem)
        sys.stdout.write(path.read_text())
        return 0
    if args.copy:
        name, dest = args.copy
        path, problem = _find(name)
        if path is None:
            return _error(problem)
        target = Path(dest)
        if target.is_dir():
            target = target / path.name
        if target.exists() and not args.force:
            return _error(f"{target} already exists; choose another DEST or add --force to overwrite it")
        if not target.parent.is_dir():
            return _error(f"folder {target.parent} does not exist (DEST is a file path or an existing folder)")
        shutil.copyfile(path, target)
        print(f"copied {name} to {target}")
        return 0
    files = packaged_files()
    width = max(len(n) for n in files)
    for name, path in files.items():
        print(f"{name:<{width}}  {_describe(path)}")
    print(f"\n{len(files)} shipped configs in {CONFIG_DIR}: use a name with "
          f"`dbl-ps train --config NAME`, or `dbl-ps configs --copy NAME DEST` to edit one")
    return 0
