"""The configs shipped inside the package (so a `pip install dbl-ps` has them too):
run configs (`*.yaml`: the paper's runs and the CPU/GPU demos) and DeepSpeed engine
configs (`deepspeed/*.json`, plus a hostfile example).

    run_configs()                    # {"cifar100_resnet18": Path(...), ...}
    find_run_config("cifar100_resnet18")      # also "cifar100_resnet18.yaml"; None if unknown
    find_deepspeed_config("gpu_bf16")         # also "gpu_bf16.json", "deepspeed/gpu_bf16"
    packaged_files()                 # every file, by name, for `dbl-ps configs`

`dbl-ps train --config NAME` and `deepspeed_config: NAME` resolve these names when no
file of that name exists; `dbl-ps configs` lists them and copies one out for editing.
In a source checkout the top-level `configs` folder is a link to this one.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["CONFIG_DIR", "DEEPSPEED_DIR", "run_configs", "deepspeed_configs", "packaged_files",
           "find_run_config", "find_deepspeed_config", "find_packaged"]

CONFIG_DIR = Path(__file__).resolve().parent
DEEPSPEED_DIR = CONFIG_DIR / "deepspeed"


def run_configs() -> dict[str, Path]:
    """Name (the file's stem) -> file, for every shipped run config, sorted by name."""
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.yaml"))}


def deepspeed_configs() -> dict[str, Path]:
    """Name (the file's stem) -> file, for every shipped DeepSpeed JSON config."""
    return {p.stem: p for p in sorted(DEEPSPEED_DIR.glob("*.json"))}


def packaged_files() -> dict[str, Path]:
    """Every shipped config file by the name `dbl-ps configs` shows: run configs by stem
    (`cifar100_resnet18`), DeepSpeed configs as `deepspeed/<stem>`, any other file by its
    path under the folder (`deepspeed/hostfile.example`)."""
    files = dict(run_configs())
    files.update({f"deepspeed/{name}": path for name, path in deepspeed_configs().items()})
    for path in sorted(CONFIG_DIR.rglob("*")):
        rel = path.relative_to(CONFIG_DIR).as_posix()
        if path.is_file() and path.suffix not in (".yaml", ".json", ".py", ".pyc") and "__pycache__" not in rel:
            files[rel] = path
    return files


def _strip(name: str, suffixes: tuple[str, ...]) -> str:
    for suffix in suffixes:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def find_run_config(name: str) -> Path | None:
    """The shipped run config called `name` (with or without `.yaml`/`.yml`), else None."""
    return run_configs().get(_strip(name.strip(), (".yaml", ".yml")))


def find_deepspeed_config(name: str) -> Path | None:
    """The shipped DeepSpeed config called `name` (`gpu_bf16`, `gpu_bf16.json` or
    `deepspeed/gpu_bf16`), else None."""
    name = _strip(name.strip(), (".json",))
    if name.startswith("deepspeed/"):
        name = name[len("deepspeed/"):]
    return deepspeed_configs().get(name)


def find_packaged(name: str) -> Path | None:
    """Any shipped config file by a name `dbl-ps configs` shows (a run config or DeepSpeed
    config also with its suffix, a DeepSpeed config also without `deepspeed/`), else None."""
    files = packaged_files()
    name = name.strip()
    if name in files:
        return files[name]
    return find_run_config(name) or find_deepspeed_config(name)
