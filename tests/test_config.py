"""Config: defaults, YAML + overrides, one clear error per bad input, round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from dbl_ps.config import (
    ConfigError,
    DataConfig,
    RunConfig,
    apply_overrides,
    load_config,
    parse_override,
    per_resolution,
    resolve_sync,
    sync_line,
    sync_record,
)

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


# --------------------------------------------------------------------------- defaults and files


def test_default_is_the_digits_hybrid_job():
    cfg = RunConfig()
    assert cfg.data.source == "digits"
    assert cfg.model.name == "small_resnet"
    assert cfg.dbl.workers == 4 and cfg.dbl.small == 1
    assert 1.05 <= cfg.dbl.tau <= 1.1
    assert len(cfg.schedule.resolutions) >= 2 and cfg.schedule.cyclic
    assert cfg.dropouts() == [0.0, 0.1]
    assert cfg.batch_large() == [96, 64]
    assert load_config() == cfg


def test_digits_default_yaml_equals_embedded_default():
    assert load_config(CONFIGS / "digits_default.yaml") == RunConfig()


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_says_what_it_reproduces(path):
    cfg = load_config(path)
    assert cfg.description, f"{path.name} needs a description"
    assert path.read_text().lstrip().startswith("#"), f"{path.name} should open with a comment saying what it is"
    assert len(cfg.dropouts()) == len(cfg.schedule.resolutions)
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_shipped_config_set_is_complete():
    names = {p.name for p in CONFIGS.glob("*.yaml")}
    assert {"digits_default.yaml", "fashion_mnist_cpu.yaml", "cifar100_resnet18.yaml", "imagenet_resnet18.yaml"} <= names


def test_cifar100_config_is_the_papers_headline_run():
    """The authors' best CIFAR-100 hybrid (n_S = 3 of 4, tau 1.05): LR 0.2 at B_L 560 for both
    batch sizes, no warm-up, weight decay 2e-4, momentum restarted at every phase."""
    cfg = load_config(CONFIGS / "cifar100_resnet18.yaml")
    assert cfg.model.name == "resnet18_cifar" and cfg.data.source == "cifar100"
    assert (cfg.schedule.epochs, cfg.schedule.lr, cfg.schedule.milestones, cfg.schedule.gamma) == (140, 0.2, [80, 120], 0.1)
    assert cfg.schedule.warmup_epochs == 0
    assert (cfg.optim.weight_decay, cfg.optim.momentum, cfg.optim.restart_momentum) == (2e-4, 0.9, True)
    assert cfg.schedule.resolutions == [24, 32] and cfg.dropouts() == [0.1, 0.2]
    assert (cfg.dbl.workers, cfg.dbl.small, cfg.dbl.tau) == (4, 3, 1.05)
    assert cfg.batch_large()[-1] == 560
    alpha, beta = cfg.time_model()[-1]
    assert alpha == pytest.approx(0.015562114074817612) and beta == pytest.approx(0.0005056358858583448)
    # The paper's formulas at 32 px from these numbers (DESIGN): b_S = 243 for n_S = 3, tau 1.05.
    n, w, tau, b_l = 50000, 4, cfg.dbl.tau, 560
    d_l = tau * n / w
    d_s = (n - 1 * d_l) / 3
    t0 = (n / w) * (beta + alpha / b_l)
    assert d_l == 13125
    assert round(alpha / (tau * t0 / d_s - beta)) == 243


def test_cifar100_variants_by_override():
    base = load_config(CONFIGS / "cifar100_resnet18.yaml", ["dbl.small=0", "schedule.resolutions=[32]"])
    assert base.dbl.small == 0 and base.dropouts() == [0.2] and base.batch_large() == [560]
    tau = load_config(CONFIGS / "cifar100_resnet18.yaml", ["dbl.tau=1.1", "dbl.small=4"])
    assert tau.dbl.tau == 1.1 and tau.dbl.small == 4


def test_imagenet_config_is_the_papers_run():
    cfg = load_config(CONFIGS / "imagenet_resnet18.yaml")
    assert (cfg.schedule.epochs, cfg.schedule.milestones) == (105, [60, 90])
    assert cfg.schedule.resolutions == [160, 224, 288] and cfg.dropouts() == [0.1, 0.2, 0.3]
    assert cfg.model.name == "resnet18_imagenet"


def test_partial_yaml_keeps_defaults(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"dbl": {"tau": 1.05}, "schedule": {"epochs": 30}})
    cfg = load_config(path)
    assert cfg.dbl.tau == 1.05 and cfg.schedule.epochs == 30
    assert cfg.dbl.workers == RunConfig().dbl.workers


# --------------------------------------------------------------------------- overrides


def test_overrides_parse_yaml_scalars_and_lists():
    cfg = load_config(None, ["dbl.tau=1.05", "schedule.epochs=40", "schedule.milestones=[20,30]",
                             "optim.nesterov=true", "data.path=null", "name=my run", "store.sync_every=5"])
    assert cfg.dbl.tau == 1.05
    assert cfg.schedule.milestones == [20, 30]
    assert cfg.optim.nesterov is True
    assert cfg.name == "my run"
    assert cfg.store.sync_every == 5


def test_calibration_file_can_replace_batch_large():
    cfg = load_config(None, ["dbl.batch_large=null", "dbl.calibration=runs/calibration.json"])
    assert cfg.batch_large() is None and cfg.dbl.calibration == "runs/calibration.json"


def test_store_pairings_accepted():
    assert load_config(None, ["store.mode=bsp", "store.rule=average"]).store.rule == "average"
    assert load_config(None, ["store.mode=ssp", "store.staleness=2"]).store.staleness == 2
    assert load_config(None, ["store.mode=bsp", "store.rule=sgd", "store.sync_every=1"]).store.rule == "sgd"


def test_override_beats_file(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"dbl": {"tau": 1.05}})
    assert load_config(path, ["dbl.tau=1.2"]).dbl.tau == 1.2


def test_float_written_without_dot_is_accepted():
    # YAML 1.1 reads `1e-4` as a string; a float field takes it as a number.
    assert load_config(None, ["optim.weight_decay=5e-4"]).optim.weight_decay == 5e-4


def test_int_given_for_float_becomes_float():
    cfg = load_config(None, ["schedule.lr=1"])
    assert cfg.schedule.lr == 1.0 and isinstance(cfg.schedule.lr, float)


def test_per_resolution_map_and_list_forms():
    cfg = load_config(None, ["schedule.resolutions=[8,12,16]", "model.dropout=[0.0,0.1,0.2]", "dbl.batch_large=[128]"])
    assert cfg.dropouts() == [0.0, 0.1, 0.2]
    assert cfg.batch_large() == [128, 128, 128]
    # A map may hold extra resolutions: switching CPL off picks the right entry.
    cfg = load_config(None, ["schedule.resolutions=[16]"])
    assert cfg.dropouts() == [0.1] and cfg.batch_large() == [64]


def test_one_value_for_every_resolution_is_accepted_on_the_command_line_and_in_yaml(tmp_path):
    # the form README and `dbl-ps configs --keys` document: one value = the same at every resolution
    overrides = ["dbl.batch_small=0.5", "dbl.alpha=0.003", "dbl.beta=0.0002", "dbl.batch_large=64", "model.dropout=0.1"]
    from_cli = load_config(None, overrides)
    path = write_yaml(tmp_path / "one.yaml", {"dbl": {"batch_small": 0.5, "alpha": 0.003, "beta": 0.0002,
                                                      "batch_large": 64}, "model": {"dropout": 0.1}})
    from_yaml = load_config(path)
    for cfg in (from_cli, from_yaml):
        assert cfg.batch_large() == [64, 64] and cfg.dropouts() == [0.1, 0.1]
        assert cfg.batch_small() == {12: 0.5, 16: 0.5}
        assert cfg.time_model() == [(0.003, 0.0002), (0.003, 0.0002)]
    assert from_cli.to_dict() == from_yaml.to_dict()
    # the saved config.yaml (a one-element list) loads back to the same run
    assert RunConfig.from_dict(yaml.safe_load(from_cli.to_yaml())).to_dict() == from_cli.to_dict()
    # one value still follows any resolutions; a bad one is still one error naming the key and the forms
    assert load_config(None, ["dbl.batch_large=64", "schedule.resolutions=[16,24,32]"]).batch_large() == [64] * 3
    with pytest.raises(ConfigError, match=r"'model.dropout(\[0\])?': got 1.5, expected .*< 1.0"):
        load_config(None, ["model.dropout=1.5"])
    with pytest.raises(ConfigError, match=r"'dbl.batch_large': got 'big', expected an integer \(all resolutions\), "
                                          r"a list \(one per resolution\), \{px: value\} or null"):
        load_config(None, ["dbl.batch_large=big"])


def test_per_resolution_function():
    assert per_resolution(None, [24, 32]) is None
    assert per_resolution([0.1], [24, 32]) == [0.1, 0.1]
    assert per_resolution({32: 2, 24: 1}, [24, 32]) == [1, 2]
    with pytest.raises(ValueError, match="resolution"):
        per_resolution({24: 1}, [24, 32])
    with pytest.raises(ValueError, match="1 or 2"):
        per_resolution([1, 2, 3], [24, 32])


def test_apply_overrides_to_a_config_object():
    cfg = apply_overrides(RunConfig(), ["dbl.small=0"])
    assert cfg.dbl.small == 0 and RunConfig().dbl.small == 1


@pytest.mark.parametrize("text", ["dbl.tau", "=1", "dbl..tau=1", "dbl tau=1", "1dbl=2"])
def test_malformed_override_is_one_clear_error(text):
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override(text)


def test_override_into_a_value_is_an_error():
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides(RunConfig(), ["dbl.tau.x=1"])


# --------------------------------------------------------------------------- one clear error


@pytest.mark.parametrize(
    "override, key, expected",
    [
        ("dbl.tau=abc", "dbl.tau", "a number"),
        ("dbl.tau=0.9", "dbl.tau", ">= 1.0"),
        ("dbl.workers=0", "dbl.workers", ">= 1"),
        ("dbl.workers=2.5", "dbl.workers", "an integer"),
        ("dbl.small=5", "dbl.small", "0..dbl.workers"),
        ("schedule.epochs=true", "schedule.epochs", "an integer"),
        ("schedule.milestones=[120,80]", "schedule.milestones", "strictly increasing"),
        ("schedule.milestones=[10,30]", "schedule.milestones", "schedule.epochs - 1"),
        ("schedule.milestones=[1,x]", "schedule.milestones[1]", "an integer"),
        ("schedule.resolutions=[16,12]", "schedule.resolutions", "strictly increasing"),
        ("schedule.warmup_epochs=13", "schedule.warmup_epochs", "0..12 (warm-up ends by the first milestone)"),
        ("schedule.warmup_start_factor=2", "schedule.warmup_start_factor", "<= 1.0"),
        ("store.mode=fast", "store.mode", "'bsp', 'asp', 'ssp'"),
        ("store.sync_every=0", "store.sync_every", ">= 1"),
        ("store.sync_every=epoch", "store.sync_every", "'mini_epoch'"),
        ("model.name=vgg", "model.name", "small_resnet, resnet18_cifar, resnet18_imagenet, resnet50_imagenet or an import path"),
        ("model.dropout=[0.1,0.2,0.3]", "model.dropout", "one per resolution"),
        ("model.dropout={12: 0.0}", "model.dropout", "missing [16]"),
        ("model.dropout={12: 0.0, 16: 1.0}", "model.dropout[16]", "< 1.0"),
        ("data.source=svhn", "data.source", "'digits'"),
        ("data.source=cifar10", "data.path", "directory"),
        ("device=tpu", "device", "'cuda'"),
        ("dbl.alpha=[0.01,0.02]", "dbl.alpha", "dbl.beta"),
        ("dbl.batch_large=null", "dbl.batch_large", "dbl.calibration"),
        ("store.mode=bsp;store.rule=blend", "store.rule", "'average' or 'sgd' with store.mode='bsp'"),
        ("store.mode=asp;store.rule=average", "store.rule", "'blend' or 'sgd' with store.mode='asp'"),
        ("store.mode=bsp;store.staleness=2", "store.staleness", "mode 'ssp' only"),
        ("sync=nope", "sync", "'store', 'collective'"),
        ("store.apply_threads=300", "store.apply_threads", "<= 256"),
        ("optim.momentum=0", None, None),  # fine on its own
    ],
)
def test_bad_values_name_key_value_and_allowed(override, key, expected):
    overrides = override.split(";")  # the last one is the bad value
    if key is None:
        load_config(None, overrides)
        return
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    err = info.value
    assert err.key == key
    message = str(err)
    assert f"'{key}'" in message and expected in message
    assert overrides[-1].split("=", 1)[1].split(",")[0].strip("[{") in message  # the value given is shown


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ConfigError, match=r"unknown config key 'dbl.tua'; did you mean 'dbl.tau'\?"):
        load_config(None, ["dbl.tua=1.1"])
    # A key in the wrong section points at the section that has it.
    with pytest.raises(ConfigError, match=r"did you mean 'dbl.tau'"):
        load_config(None, ["tau=1.1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'schedule.milestone'; did you mean 'schedule.milestones'"):
        load_config(None, ["schedule.milestone=[1]"])


def test_unknown_key_in_file_names_the_file(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"store": {"mdoe": "bsp"}})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "store.mdoe" in str(info.value) and "store.mode" in str(info.value) and str(path) in str(info.value)


def test_error_from_override_says_so(tmp_path):
    with pytest.raises(ConfigError, match="command-line override 'dbl.tau=0.5'"):
        load_config(None, ["dbl.tau=0.5"])


def test_section_given_as_value_is_an_error(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"dbl": 4})
    with pytest.raises(ConfigError, match="'dbl'.*a section"):
        load_config(path)


def test_config_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("dbl: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == RunConfig()


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_direct_construction_is_validated_too():
    with pytest.raises(ConfigError, match="data.path"):
        RunConfig(data=DataConfig(source="mnist"))


# --------------------------------------------------------------------------- round trips


def test_round_trip_through_yaml_and_json(tmp_path):
    cfg = load_config(CONFIGS / "cifar100_resnet18.yaml", ["store.sync_every=4", "dbl.tau=1.1"])
    assert RunConfig.from_dict(yaml.safe_load(cfg.to_yaml())) == cfg
    # JSON turns the {px: value} keys into strings; from_dict reads them back as ints.
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert load_config(cfg.save(tmp_path / "config.yaml")) == cfg
    assert load_config(cfg.save(tmp_path / "config.json")) == cfg


@settings(max_examples=40, deadline=None)
@given(
    tau=st.floats(1.0, 2.0),
    workers=st.integers(1, 16),
    data=st.data(),
    lr=st.floats(1e-5, 10.0),
    epochs=st.integers(2, 300),
    sync=st.one_of(st.just("mini_epoch"), st.integers(1, 1000)),
)
def test_round_trip_property(tau, workers, data, lr, epochs, sync):
    small = data.draw(st.integers(0, workers))
    milestones = sorted(data.draw(st.sets(st.integers(1, epochs - 1), max_size=3)))
    cfg = load_config(None, [f"dbl.tau={tau!r}", f"dbl.workers={workers}", f"dbl.small={small}", f"schedule.lr={lr!r}",
                             f"schedule.epochs={epochs}", f"schedule.milestones={milestones}", f"store.sync_every={sync}",
                             "schedule.warmup_epochs=0"])
    assert (cfg.dbl.tau, cfg.dbl.workers, cfg.dbl.small, cfg.schedule.lr) == (tau, workers, small, lr)
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# --------------------------------------------------------------------------- configs feed the schedule and the planner


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_config_gives_a_valid_schedule_spec(path):
    from dbl_ps.schedule import ScheduleSpec

    cfg = load_config(path)
    s = cfg.schedule
    spec = ScheduleSpec(epochs=s.epochs, base_lr=s.lr, milestones=tuple(s.milestones), gamma=s.gamma,
                        warmup_epochs=s.warmup_epochs, warmup_start_factor=s.warmup_start_factor,
                        resolutions=tuple(s.resolutions), dropouts=tuple(cfg.dropouts()),
                        batch_large=tuple(cfg.batch_large()), cyclic=s.cyclic)
    assert spec.resolutions == tuple(s.resolutions)


@pytest.mark.parametrize("name, dataset_size", [("cifar100_resnet18.yaml", 50000), ("imagenet_resnet18.yaml", 1281167)])
def test_paper_configs_plan_feasibly(name, dataset_size):
    from dbl_ps.planner import TimeModel, make_plan

    cfg = load_config(CONFIGS / name)
    res = cfg.schedule.resolutions
    models = {r: TimeModel(a, b) for r, (a, b) in zip(res, cfg.time_model())}
    plan = make_plan(models, dict(zip(res, cfg.batch_large())), cfg.dbl.workers, cfg.dbl.small, cfg.dbl.tau, dataset_size)
    for r in res:
        assert sum(plan[r].shares) == dataset_size and 1 <= plan[r].batch_small <= plan[r].batch_large[0]
    if name.startswith("cifar"):  # the authors' best plans use 27-51 % of B_L
        assert (plan[32].d_large, plan[32].d_small, plan[32].batch_small) == (13125, 12292, 243)
        assert plan[32].regime().kind == "dual-batch"


def test_an_unset_mode_or_rule_is_the_sync_kinds_first_that_fits_the_other():
    def resolved(*overrides: str, launched: bool = False) -> tuple[str, str | None, str | None, int]:
        cfg = resolve_sync(load_config(None, list(overrides)), launched=launched)
        return cfg.sync, cfg.store.mode, cfg.store.rule, cfg.store.staleness

    assert resolved() == ("store", "asp", "blend", 0)  # the authors' code on one machine
    assert resolved(launched=True) == ("collective", "bsp", "average", 0)
    assert resolved("store.mode=bsp") == ("store", "bsp", "average", 0)
    assert resolved("store.rule=average") == ("store", "bsp", "average", 0)
    assert resolved("store.rule=sgd") == ("store", "asp", "sgd", 0)
    assert resolved("store.staleness=2") == ("store", "ssp", "blend", 2)
    assert resolved("store.mode=bsp", launched=True) == ("collective", "bsp", "average", 0)
    once = resolve_sync(load_config(None, []), launched=False)
    assert resolve_sync(once, launched=False) is once  # resolving a resolved config changes nothing


@pytest.mark.parametrize("overrides, launched, key, expected", [
    # what a launcher's collective cannot run is refused, saying what it runs and where the setting runs
    (["store.mode=asp"], True, "store.mode", "'bsp' with sync 'collective'"),
    (["store.rule=sgd"], True, "store.rule", "train with sync 'store' (on one machine)"),
    (["store.staleness=1"], True, "store.staleness", "0 with sync 'collective'"),
    (["sync=store"], True, "sync", "'collective' or 'mixed_batch' or 'auto' for a run under a launcher"),
    (["sync=collective"], False, "sync", "'store' or 'auto' for a run on one machine"),
])
def test_a_sync_setting_the_launch_cannot_honour_is_refused_in_one_line(overrides, launched, key, expected):
    with pytest.raises(ConfigError) as info:
        resolve_sync(load_config(None, overrides), launched=launched)
    assert info.value.key == key and expected in str(info.value) and "\n" not in str(info.value)


def test_plan_and_summary_record_the_sync_that_ran():
    cfg = resolve_sync(load_config(None, ["store.sync_every=3"]), launched=True)
    assert sync_record(cfg) == {"kind": "collective", "mode": "bsp", "rule": "average", "period": 3, "staleness": 0}
    assert sync_line(cfg).startswith("sync: collective, store.mode bsp, store.rule average, every 3 steps")


@pytest.mark.parametrize("mode", ["bsp", "asp", "ssp"])
@pytest.mark.parametrize("rule", ["average", "blend", "sgd"])
@pytest.mark.parametrize("staleness", [0, 2])
def test_store_settings_the_config_accepts_are_the_ones_the_store_accepts(mode, rule, staleness):
    pytest.importorskip("dbl_ps._rust_ps", reason="the Rust extension is not built")
    from dbl_ps.parameter_store import ParameterStore

    overrides = [f"store.mode={mode}", f"store.rule={rule}", f"store.staleness={staleness}"]
    try:
        cfg = load_config(None, overrides)
    except ConfigError:
        cfg = None
    try:
        # Momentum/weight decay on the server apply to rule 'sgd' only.
        extra = {"momentum": 0.9, "weight_decay": 1e-4} if rule == "sgd" else {}
        with ParameterStore(8, 2, mode=mode, rule=rule, staleness=staleness, **extra):
            store_ok = True
    except ValueError:
        store_ok = False
    assert (cfg is not None) == store_ok


# --------------------------------------------------------------------------- values that follow an override


def test_epochs_alone_scales_the_default_milestones():
    notes = []
    cfg = load_config(None, ["schedule.epochs=4"], notes=notes)
    assert cfg.schedule.epochs == 4 and cfg.schedule.milestones == [2, 3]  # 12/24, 20/24 of the run
    assert len(notes) == 1 and "schedule.milestones [12, 20] -> [2, 3]" in notes[0]
    # A milestone that would round onto the previous one or onto the end is dropped.
    assert load_config(None, ["schedule.epochs=2"]).schedule.milestones == [1]
    assert load_config(None, ["schedule.epochs=1"]).schedule.milestones == []
    assert load_config(None, ["schedule.epochs=48"]).schedule.milestones == [24, 40]


def test_epochs_override_scales_a_files_milestones_and_shortens_its_warmup(tmp_path):
    assert load_config(CONFIGS / "cifar100_resnet18.yaml", ["schedule.epochs=14"]).schedule.milestones == [8, 12]
    path = write_yaml(tmp_path / "c.yaml", {"schedule": {"epochs": 40, "milestones": [20, 30], "warmup_epochs": 5}})
    notes = []
    cfg = load_config(path, ["schedule.epochs=8"], notes=notes)
    assert cfg.schedule.milestones == [4, 6] and cfg.schedule.warmup_epochs == 4  # ends by the first milestone
    assert any("schedule.warmup_epochs 5 -> 4" in n for n in notes)


def test_milestones_the_user_sets_are_kept_and_checked():
    cfg = load_config(None, ["schedule.epochs=10", "schedule.milestones=[5]"])
    assert cfg.schedule.milestones == [5]
    with pytest.raises(ConfigError, match="schedule.milestones"):
        load_config(None, ["schedule.epochs=10", "schedule.milestones=[12]"])
    # Milestones set in the file next to the epochs stay as written.
    assert load_config(CONFIGS / "cifar100_resnet18.yaml").schedule.milestones == [80, 120]


def test_a_file_that_sets_only_the_epochs_gets_scaled_default_milestones(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"schedule": {"epochs": 6}})
    assert load_config(path).schedule.milestones == [3, 5]


def test_resolutions_alone_derive_dropout_and_batch_large():
    notes = []
    cfg = load_config(None, ["schedule.resolutions=[24,32]"], notes=notes)
    # dropout by position in the climb (lowest keeps the lowest rate, highest the highest)
    assert cfg.dropouts() == [0.0, 0.1]
    # B_L from the nearest known resolution (16 px: 64), scaled by area: 64*(16/24)^2, 64*(16/32)^2
    assert cfg.batch_large() == [28, 16]
    assert len(notes) == 2 and all("follows schedule.resolutions=[24, 32]" in n for n in notes)
    three = load_config(None, ["schedule.resolutions=[8,12,16]"])
    assert three.dropouts() == [0.0, 0.05, 0.1]
    assert three.batch_large() == [216, 96, 64]  # 12 and 16 px keep theirs
    one = load_config(None, ["schedule.resolutions=[20]"])
    assert one.dropouts() == [0.1] and one.batch_large() == [40]


def test_resolutions_within_the_known_ones_keep_their_values_also_from_lists(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"schedule": {"resolutions": [24, 32]}, "model": {"dropout": [0.1, 0.2]},
                                            "dbl": {"batch_large": [600, 560], "alpha": [0.01, 0.02], "beta": [0.001, 0.002]}})
    cfg = load_config(path, ["schedule.resolutions=[32]"])
    assert cfg.dropouts() == [0.2] and cfg.batch_large() == [560] and cfg.time_model() == [(0.02, 0.002)]


def test_a_time_model_for_other_resolutions_is_dropped_not_invented():
    notes = []
    cfg = load_config(CONFIGS / "cifar100_resnet18.yaml", ["schedule.resolutions=[16,24,32]"], notes=notes)
    assert cfg.time_model() is None  # measured when the run starts (or dbl.calibration)
    assert cfg.dropouts() == [0.1, 0.15, 0.2] and cfg.batch_large() == [1350, 600, 560]
    assert any("dbl.alpha/dbl.beta dropped" in n for n in notes)


def test_per_resolution_values_the_user_sets_with_the_resolutions_are_kept_and_checked():
    cfg = load_config(None, ["schedule.resolutions=[24,32]", "model.dropout=[0.3]"])
    assert cfg.dropouts() == [0.3, 0.3] and cfg.batch_large() == [28, 16]
    with pytest.raises(ConfigError, match="'model.dropout'.*missing \\[32\\]"):
        load_config(None, ["schedule.resolutions=[24,32]", "model.dropout={24: 0.1}"])
    with pytest.raises(ConfigError, match="'dbl.alpha'"):  # a time model given for 2 of 3 resolutions
        load_config(None, ["schedule.resolutions=[8,12,16]", "dbl.alpha=[0.01,0.02]", "dbl.beta=[0.001,0.002]"])


def test_a_resumed_runs_full_config_follows_nothing(tmp_path):
    cfg = load_config(None, ["schedule.epochs=4", "schedule.resolutions=[24,32]"])
    notes = []
    assert load_config(cfg.save(tmp_path / "config.yaml"), notes=notes) == cfg and notes == []


# --------------------------------------------------------------------------- duplicate keys, shipped names, worker count


def test_a_duplicate_yaml_key_names_the_key_and_its_lines(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("schedule:\n  epochs: 10\n  lr: 0.1\n  epochs: 20\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "'epochs'" in message and "line 4" in message and "first at line 2" in message and str(path) in message
    # YAML merge keys (<<) may be overridden: that is what they are for.
    merged = tmp_path / "m.yaml"
    merged.write_text("dbl:\n  <<: {tau: 1.2, small: 0}\n  tau: 1.05\n")
    assert load_config(merged).dbl.tau == 1.05
    with pytest.raises(ConfigError, match="appears twice"):
        load_config(None, ["model.dropout={12: 0.1, 12: 0.2}"])


def test_a_shipped_config_is_found_by_name():
    assert load_config("cifar100_resnet18") == load_config(CONFIGS / "cifar100_resnet18.yaml")
    assert load_config("imagenet_resnet18.yaml").schedule.resolutions == [160, 224, 288]
    with pytest.raises(ConfigError, match="does not exist.*cifar100_resnet18.*dbl-ps configs"):
        load_config("no_such_config")


def test_a_local_file_beats_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_yaml(tmp_path / "cifar100_resnet18.yaml", {"dbl": {"tau": 1.3}})
    assert load_config("cifar100_resnet18.yaml").dbl.tau == 1.3
    assert load_config("cifar100_resnet18").dbl.tau == 1.05  # no such file here: the shipped one


def test_more_workers_than_training_samples_names_dbl_workers():
    from dbl_ps.config import check_workers_fit

    with pytest.raises(ConfigError) as info:
        check_workers_fit(RunConfig(), 3)
    assert info.value.key == "dbl.workers" and "'dbl.workers': got 4" in str(info.value) and "at most 3" in str(info.value)
    for override in ("data.train_limit=3", "data.source=synthetic"):
        extra = ["data.synthetic.num_train=3"] if "synthetic" in override else []
        with pytest.raises(ConfigError, match="'dbl.workers': got 4, expected at most 3"):
            load_config(None, [override, *extra])


@pytest.mark.parametrize(("override", "pattern"), [
    ("schedule.lr=.inf", r"'schedule.lr': got inf, expected a finite number > 0.0"),
    ("dbl.tau=.inf", r"'dbl.tau': got inf, expected a finite number >= 1.0"),
    ("dbl.alpha={16:0.002}", r"'16:0.002' is a base-60 number to YAML; for a mapping put a space after the colon: "
                             r"dbl.alpha=\{16: 0.002\}"),
])
def test_values_yaml_or_floats_would_take_silently_are_refused(override, pattern):
    """Issue 24/25: `.inf` was refused only after measuring, under internal names; YAML 1.1
    reads `20:0.002` (no space) as 1200.002, so a per-resolution map became one number."""
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, [override, "dbl.beta=[0.0001]"])


def test_a_base_60_number_in_a_config_file_names_the_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("dbl:\n  alpha: {16:0.002}\n  beta: [0.0001]\n")
    with pytest.raises(ConfigError, match=r"'16:0.002' at line 2 is a base-60 number to YAML"):
        load_config(path)


def test_a_resolution_that_no_stage_reaches_is_said_once():
    """Three resolutions in stages of 1 epoch: CPL never trains at 8 or 12 px (issue 24)."""
    notes: list[str] = []
    load_config(None, ["schedule.epochs=2", "schedule.milestones=[1]", "schedule.resolutions=[8,12,16]",
                       "schedule.warmup_epochs=0"], notes=notes)
    assert [n for n in notes if "[8, 12] px get no epoch with schedule.epochs=2" in n] == notes[-1:]
    notes = []  # one stage of 3 epochs reaches every one of them
    load_config(None, ["schedule.epochs=3", "schedule.milestones=[]", "schedule.resolutions=[8,12,16]",
                       "schedule.warmup_epochs=0"], notes=notes)
    assert not any("get no epoch" in n for n in notes)


def test_config_differences_names_each_dotted_key_with_both_values():
    from dbl_ps.config import config_differences

    a = load_config(None, ["schedule.epochs=4", "dbl.alpha=[0.003]", "dbl.beta=[0.0002]"]).to_dict()
    b = load_config(None, ["schedule.epochs=5", "dbl.alpha=[0.004]", "dbl.beta=[0.0002]"]).to_dict()
    assert config_differences(a, a) == []
    assert config_differences(a, b) == [("dbl.alpha", [0.003], [0.004]), ("schedule.epochs", 4, 5),
                                        ("schedule.milestones", [2, 3], [3, 4])]  # milestones follow the epochs
    assert config_differences({"x": {"y": 1}}, {"x": {}}) == [("x.y", 1, None)]


def test_a_users_model_and_data_do_not_inherit_the_digits_job():
    # a model by import path: its own name, no dropout inserted; each said once
    notes: list[str] = []
    cfg = load_config(None, ["model.name=torchvision.models:resnet18"], notes=notes)
    assert cfg.name == "resnet18-digits-hybrid"
    assert cfg.description == "hybrid DBSL+CPL: torchvision.models:resnet18 on digits."
    assert cfg.dropouts() == [0.0, 0.0]
    assert sum("model.dropout 0.0" in n for n in notes) == 1 and sum(n.startswith("name ") for n in notes) == 1
    # data from a factory: no augmentation added, and the digits job's resolutions are said
    notes = []
    cfg = load_config(None, ["data.factory=mypkg.data:make_sets", "dbl.small=0"], notes=notes)
    assert (cfg.name, cfg.data.augment) == ("small_resnet-make_sets-cpl", False)
    assert any(n.startswith("data.augment false") for n in notes)
    assert any(n.startswith("schedule.resolutions [12, 16] px are the embedded digits job's") for n in notes)


def test_what_the_user_set_is_kept_and_the_embedded_job_is_unchanged(tmp_path):
    notes: list[str] = []
    assert load_config(None, notes=notes).to_dict() == RunConfig().to_dict() and notes == []
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nmodel: {name: 'torchvision.models:resnet18', dropout: [0.2]}\n"
                    "data: {factory: 'mypkg.data:make_sets', augment: true}\nschedule: {resolutions: [24, 32]}\n"
                    "dbl: {batch_large: [64, 32]}\n")
    notes = []
    cfg = load_config(path, ["schedule.lr=0.05"], notes=notes)
    assert (cfg.name, cfg.dropouts(), cfg.data.augment) == ("mine", [0.2, 0.2], True)
    assert notes == []
    # an override naming the model keeps the file's name (the name was set, in the file)
    assert load_config(path, ["model.name=torchvision.models:resnet34"]).name == "mine"
