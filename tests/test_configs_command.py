"""`dbl-ps configs`: the configs shipped inside the package, listed, shown and copied, and
found by name by `dbl-ps train --config NAME` and `deepspeed_config: NAME`."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from dbl_ps.cli import main
from dbl_ps.config import load_config
from dbl_ps.configs import CONFIG_DIR, find_deepspeed_config, find_run_config, packaged_files

ROOT = Path(__file__).resolve().parents[1]


def test_the_configs_live_in_the_package_and_the_top_level_folder_links_there():
    assert CONFIG_DIR == ROOT / "dbl_ps" / "configs"
    assert (ROOT / "configs").resolve() == CONFIG_DIR
    names = set(packaged_files())
    assert {"cifar100_resnet18", "imagenet_resnet18", "digits_default", "fashion_mnist_cpu",
            "deepspeed/cpu_gloo", "deepspeed/gpu_bf16", "deepspeed/gpu_fp16_zero1", "deepspeed/hostfile.example"} <= names
    assert find_run_config("cifar100_resnet18.yaml") == CONFIG_DIR / "cifar100_resnet18.yaml"
    assert find_deepspeed_config("gpu_bf16") == find_deepspeed_config("deepspeed/gpu_bf16.json") == \
        CONFIG_DIR / "deepspeed" / "gpu_bf16.json"
    assert find_run_config("gpu_bf16") is None and find_deepspeed_config("nope") is None


def test_list_shows_every_config_with_what_it_runs(capsys):
    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    for name in packaged_files():
        assert name in out
    assert "Paper's CIFAR-100 headline run" in out and "bf16, ZeRO stage 0" in out and "fp16, ZeRO stage 1" in out


def test_show_prints_a_config(capsys):
    assert main(["configs", "--show", "imagenet_resnet18"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["schedule"]["resolutions"] == [160, 224, 288]


def test_copy_writes_a_file_or_into_a_folder_and_never_overwrites_by_accident(tmp_path, capsys):
    assert main(["configs", "--copy", "cifar100_resnet18", str(tmp_path / "mine.yaml")]) == 0
    assert load_config(tmp_path / "mine.yaml") == load_config("cifar100_resnet18")
    assert main(["configs", "--copy", "deepspeed/gpu_bf16", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "gpu_bf16.json").read_text())["bf16"]["enabled"] is True
    capsys.readouterr()
    (tmp_path / "mine.yaml").write_text("# edited\n")
    assert main(["configs", "--copy", "cifar100_resnet18", str(tmp_path / "mine.yaml")]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err
    assert (tmp_path / "mine.yaml").read_text() == "# edited\n"
    assert main(["configs", "--copy", "cifar100_resnet18", str(tmp_path / "mine.yaml"), "--force"]) == 0
    assert load_config(tmp_path / "mine.yaml").name == "cifar100-resnet18-hybrid"


def test_unknown_names_and_missing_folders_are_one_line_errors(tmp_path, capsys):
    for argv, needle in [(["--show", "cifar"], "no shipped config named 'cifar'"),
                         (["--copy", "nope", str(tmp_path)], "the names are cifar100_resnet18"),
                         (["--copy", "digits_default", str(tmp_path / "no" / "dir" / "x.yaml")], "does not exist"),
                         (["--force"], "--force only applies to --copy")]:
        assert main(["configs", *argv]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err


def test_train_takes_a_shipped_config_by_name_from_any_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here, as after `pip install dbl-ps`
    # The shipped CIFAR-100 config needs its data: the error is about the data, not the config.
    code = main(["train", "--config", "cifar100_resnet18", "--run-dir", str(tmp_path / "run"),
                 "data.path=/no/such/cifar"])
    err = capsys.readouterr().err
    assert code == 2 and "/no/such/cifar" in err and "config file" not in err


def test_deepspeed_engine_configs_resolve_by_name():
    import pytest

    pytest.importorskip("deepspeed")
    from dbl_ps.integrations.deepspeed import load_ds_config

    assert load_ds_config("gpu_fp16_zero1")["zero_optimization"]["stage"] == 1
    assert load_ds_config("deepspeed/gpu_bf16")["bf16"]["enabled"] is True


def _leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key not in ("kwargs", "dropout", "batch_large"):  # sections, not mapping values
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_keys_lists_every_config_key_with_its_default_as_an_override_takes_it(capsys):
    assert main(["configs", "--keys"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = dict(line.split(" = ", 1) for line in lines if not line.startswith(" "))
    # the run config's keys and every registered engine's own (a config holds those of its engine)
    every = {k for engine in ("torch", "deepspeed", "fsdp")
             for k in _leaves(load_config(None, [f"engine={engine}"]).to_dict())}
    assert set(listed) == every and {"deepspeed_config", "fsdp.ranks_per_worker"} <= every
    # each printed default, given back as an override, is the default: a user can copy it
    for key, default in listed.items():
        assert load_config(None, [f"{key}={default}"]).to_dict() == load_config(None).to_dict(), key
    # and every key says what it takes and what it does
    about: dict[str, str] = {}
    for line in lines:
        if not line.startswith(" "):
            key = line.split(" = ", 1)[0]
            about[key] = ""
        else:
            about[key] += line.strip() + " "
    assert all("; " in text for text in about.values()), about
    assert set(about) == set(listed)


def test_keys_of_one_section_and_an_unknown_text(capsys):
    assert main(["configs", "--keys", "store."]) == 0
    keys = [line.split(" = ")[0] for line in capsys.readouterr().out.splitlines() if not line.startswith(" ")]
    assert keys == ["store.mode", "store.rule", "store.staleness", "store.sync_every", "store.apply_threads",
                    "store.reject_non_finite", "store.worker_timeout", "store.post_local_every",
                    "store.post_local_start"]
    assert main(["configs", "--keys", "nosuchkey"]) == 2
    assert "no config key contains 'nosuchkey'" in capsys.readouterr().err
