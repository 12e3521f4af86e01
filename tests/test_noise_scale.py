"""The gradient noise scale: the estimator against a problem whose noise scale is known, the
engine's per-step measurement, the meter's choice of source, the record keys and the regime line."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dbl_ps.config import ConfigError, load_config
from dbl_ps.integrations.wandb import epoch_metrics
from dbl_ps.noise_scale import NoiseScaleEMA, central_half_width, estimate, fit_line, regime_line, two_batch
from dbl_ps.training.engine import TorchEngine
from dbl_ps.training.messages import EpochReport, merge_members
from dbl_ps.training.noise import NoiseMeter, probe_batches, worker_observations
from dbl_ps.training.topology import Topology


# ------------------------------------------------------------ a problem with a known noise scale

class LinearRegression:
    """y = x.w* + eps with x ~ N(0, I_d), eps ~ N(0, s^2), loss (x.w - y)^2 / 2 per sample.

    At weights w (r = w - w*) one sample's gradient is x (x.r - eps), so G = E[x x^T] r = r and
    E[g g^T] = |r|^2 I + 2 r r^T + s^2 I (Gaussian fourth moments): Sigma = (|r|^2 + s^2) I + r r^T,
    tr(Sigma) = d (|r|^2 + s^2) + |r|^2, |G|^2 = |r|^2."""

    def __init__(self, d: int = 20, noise: float = 2.0, distance: float = 0.5, seed: int = 0):
        self.gen = torch.Generator().manual_seed(seed)
        self.d, self.noise = d, noise
        self.w_star = torch.randn(d, generator=self.gen, dtype=torch.float64)
        r = torch.randn(d, generator=self.gen, dtype=torch.float64)
        self.w = self.w_star + distance * r / r.norm()

    @property
    def grad_sq(self) -> float:
        return float((self.w - self.w_star).square().sum())

    @property
    def trace(self) -> float:
        r2 = self.grad_sq
        return self.d * (r2 + self.noise**2) + r2

    @property
    def b_noise(self) -> float:
        return self.trace / self.grad_sq

    def batches(self, batch: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(count, batch, self.d, generator=self.gen, dtype=torch.float64)
        y = x @ self.w_star + self.noise * torch.randn(count, batch, generator=self.gen, dtype=torch.float64)
        return x, y

    def grad_sq_of(self, x: torch.Tensor, y: torch.Tensor) -> list[float]:
        """|g|^2 of the mean loss of each batch: g = x^T (x w - y) / b."""
        g = torch.einsum("kbd,kb->kd", x, x @ self.w - y) / x.shape[1]
        return g.square().sum(1).tolist()

    def observations(self, count: int, sizes: tuple[int, ...] = (16, 256)) -> list[tuple[int, float]]:
        return [(b, v) for b in sizes for v in self.grad_sq_of(*self.batches(b, count))]


def test_the_estimator_recovers_the_known_noise_scale_of_linear_regression():
    problem = LinearRegression()
    assert problem.b_noise == pytest.approx(20 * (0.25 + 4) / 0.25 + 1)  # 341: d (|r|^2 + s^2)/|r|^2 + 1
    x, y = problem.batches(16, 1)  # the closed-form batch gradient is autograd's
    w = problem.w.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(0.5 * (x[0] @ w - y[0]).square().mean(), w)
    assert problem.grad_sq_of(x, y)[0] == pytest.approx(float(g.square().sum()), rel=1e-12)
    est = estimate(problem.observations(3000))
    assert est.batches == (16, 256) and est.observations == 6000
    assert est.grad_sq == pytest.approx(problem.grad_sq, rel=0.15)
    assert est.trace == pytest.approx(problem.trace, rel=0.05)
    assert est.b_noise == pytest.approx(problem.b_noise, rel=0.15)
    # the bootstrap spread is honest: the truth lies within three of it, and it is not vacuous
    assert abs(est.b_noise - problem.b_noise) < 3 * est.spread
    assert est.spread < 0.2 * problem.b_noise


def test_the_spread_shrinks_with_more_steps_and_says_unbounded_when_the_gradient_is_all_noise():
    problem = LinearRegression(seed=1)
    few = estimate(problem.observations(200))
    many = estimate(problem.observations(3200))
    assert many.spread < few.spread / 2  # ~1/sqrt(16) of it
    # near the optimum |G|^2 is tiny against the noise: a handful of steps cannot resolve it
    near = LinearRegression(distance=0.01, seed=2)
    est = estimate(near.observations(20))
    assert est.spread == math.inf or est.b_noise is None


def test_two_batch_and_the_line_are_exact_on_expected_values():
    grad_sq, trace = 0.7, 90.0
    expected = {b: grad_sq + trace / b for b in (8, 32, 256)}
    assert two_batch(8, expected[8], 256, expected[256]) == pytest.approx((grad_sq, trace))
    assert fit_line([(b, v, 1) for b, v in expected.items()]) == pytest.approx((grad_sq, trace))
    # a batch size with many observations weighs more than one with a single, off value
    off = [(8, expected[8], 100), (256, expected[256], 100), (32, expected[32] * 3, 1)]
    assert fit_line(off)[1] == pytest.approx(trace, rel=0.05)
    with pytest.raises(ValueError, match="0 < small < large"):
        two_batch(64, 1.0, 64, 1.0)


def test_a_small_batch_no_noisier_than_the_large_one_resolves_no_noise_scale():
    # DBSL early on: the large worker, further from a minimum, has the larger gradient
    est = estimate([(24, 1.0), (24, 1.1), (256, 1.4), (256, 1.5)])
    assert est.trace < 0 < est.grad_sq and est.b_noise is None
    assert est.spread == pytest.approx(0.0)  # every resample sits at the zero end
    assert "not resolved this time (the tr(Sigma) estimate" in regime_line(est.b_noise, est.spread, batch_large=256,
                                                                           grad_sq=est.grad_sq)


def test_one_batch_size_gives_no_estimate_and_non_finite_steps_are_left_out():
    assert estimate([(64, 1.0), (64, 1.2)]) is None
    est = estimate([(8, 5.0), (8, math.inf), (64, 1.2), (64, math.nan), (64, 1.3)], resamples=0)
    assert est.observations == 3 and est.spread is None


def test_the_moving_average_is_the_ratio_of_averages_not_the_average_of_ratios():
    ema = NoiseScaleEMA(decay=0.5)
    assert ema.b_noise is None
    ema.update(1.0, 100.0)
    ema.update(3.0, 100.0)  # averages: |G|^2 2.0, tr 100
    assert ema.b_noise == pytest.approx(50.0)  # not mean(100, 33.3)
    ema.update_pairs([(8, 2.0 + 100 / 8), (64, 2.0 + 100 / 64)])
    assert (ema.grad_sq, ema.trace) == pytest.approx((2.0, 100.0))
    with pytest.raises(ValueError, match="decay"):
        NoiseScaleEMA(decay=1.0)


def test_central_half_width_is_a_standard_deviation_for_normal_values():
    values = torch.randn(20000, generator=torch.Generator().manual_seed(0)).mul(3.0).tolist()
    assert central_half_width(values) == pytest.approx(3.0, rel=0.05)
    assert central_half_width([1.0] * 50 + [math.inf] * 50) == math.inf


# ------------------------------------------------------------ the regime line

def test_the_regime_line_places_the_batches_against_the_noise_scale():
    line = regime_line(40.0, 6.0, batch_large=256, batch_small=24, epoch=1)
    assert line.startswith("gradient noise scale (epoch 1): B_noise = 40 +- 6 samples")
    assert "B_L 256 is 6.4x it, b_S 24 is 0.6x" in line
    assert line.endswith("the large-batch regime, where DBSL is meant to help")
    assert "the small-batch regime" in regime_line(400.0, None, batch_large=32)
    assert "near the critical batch" in regime_line(40.0, None, batch_large=50)
    merged = regime_line(100.0, None, batch_large=64, merged_every_step=4)
    assert "x4 workers merged every step: 256" in merged and "2.6x it" in merged
    beyond = regime_line(None, None, batch_large=64, grad_sq=-0.01)
    assert "above what the batches resolve" in beyond and "the small-batch regime" in beyond


def test_a_mixed_batch_run_places_its_global_batch_against_the_noise_scale(tmp_path):
    """sync mixed_batch: every step trains the union of the ranks' batches, so the regime line
    compares B_noise with their sum (the finisher is told `global_batch`), not with the largest
    rank's batch, and names no small batch (unequal rank batches are not DBSL's b_S)."""
    from dbl_ps.metrics import Logger
    from dbl_ps.schedule import ScheduleSpec
    from dbl_ps.training.finisher import EpochFinisher
    from dbl_ps.training.rundir import RunDirectory

    record = {"epoch": 0, "b_noise": 100.0, "b_noise_std": None, "workers": [{"batch": 96}, {"batch": 160}]}
    lines = {}
    for merged in (False, True):
        finisher = EpochFinisher(RunDirectory(tmp_path / str(merged)), ScheduleSpec(epochs=1, base_lr=0.1),
                                 evaluate=None, logger=Logger([]), engine="torch", workers=2, global_batch=merged)
        lines[merged] = finisher.noise_line(record)
    assert "B_L 160 is 1.6x it, b_S 96 is 0.96x" in lines[False]
    assert "the global batch 256 is 2.6x it:" in lines[True] and "b_S" not in lines[True]
    assert lines[True].endswith("the large-batch regime, where DBSL is meant to help")


# ------------------------------------------------------------ the engine's measurement

def _engine(cfg_overrides=()):
    cfg = load_config(None, ["schedule.lr=0.05", *cfg_overrides])
    torch.manual_seed(0)
    module = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 10))
    return TorchEngine(module, cfg, torch.device("cpu"), Topology.single(0, 1))


def test_the_engine_records_the_whole_batch_gradient_norm_without_changing_the_step():
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(12, 3, 8, 8, generator=gen), torch.randint(0, 10, (12,), generator=gen)) for _ in range(3)]
    plain, measured, split = _engine(), _engine(), _engine(["micro_batch=5"])
    assert plain.grad_sq is None  # off by default: train_step does nothing extra
    measured.measure_gradients(True)
    split.measure_gradients(True)
    expected = []
    for images, labels in batches:
        reference = _engine()
        reference.module.load_state_dict(measured.module.state_dict())
        reference.loss_fn(reference.module(images), labels).backward()
        expected.append(sum(float(p.grad.square().sum()) for p in reference.module.parameters()))
        plain.train_step(images, labels)
        measured.train_step(images, labels)
        split.train_step(images, labels)
    recorded = measured.take_grad_sq()
    assert [b for b, _ in recorded] == [12, 12, 12]
    assert [v for _, v in recorded] == pytest.approx(expected, rel=1e-5)
    # micro-batches accumulate to the whole batch's gradient: the same norms
    assert [v for _, v in split.take_grad_sq()] == pytest.approx(expected, rel=1e-4)
    assert measured.take_grad_sq() == []  # taken: emptied
    for a, b in zip(plain.module.state_dict().values(), measured.module.state_dict().values()):
        assert torch.equal(a, b)  # measuring does not change training


# ------------------------------------------------------------ from reports to the record

def _report(worker: int, batch: int, grad_sq: list[tuple[int, float]], member: int = 0) -> EpochReport:
    return EpochReport(worker=worker, epoch=0, loss=1.0, acc=0.5, batch=batch, resolution=28, samples=100,
                       steps=len(grad_sq), syncs=1, seconds=1.0, wait_seconds=0.0, sync_seconds=0.0, weight=1.0,
                       version=1, member=member, grad_sq=grad_sq)


def test_the_workers_give_the_estimate_where_the_plan_has_two_batch_sizes_else_the_probe():
    small = [_report(w, 24, [(24, 3.0 + w * 0.1)] * 5 + [(10, 9.0)]) for w in range(3)]
    large = _report(3, 256, [(256, 0.5), (256, 0.6), (112, 0.9)])
    observations = worker_observations([*small, large])
    assert sorted({b for b, _ in observations}) == [24, 256]  # each share's last, smaller batch left out
    assert len(observations) == 17
    assert large.to_record()["grad_sq"] == pytest.approx(0.55)
    assert worker_observations([large, _report(0, 256, [(256, 0.4)])]) == []
    calls = []

    def probe(state, **kwargs):
        calls.append(kwargs)
        return [(32, 2.0), (32, 2.2), (256, 0.5), (256, 0.55)]

    meter = NoiseMeter(probe, probe_batch_small=None)
    est, source = meter(0, [*small, large], {}, resolution=28, dropout=0.1, evaluated=False)
    assert source == "workers" and est.batches == (24, 256) and not calls
    equal = [_report(w, 256, [(256, 0.5)]) for w in range(4)]
    assert meter(0, equal, {}, resolution=28, dropout=0.1, evaluated=False) == (None, "")  # probes with the evaluation
    est, source = meter(2, equal, {}, resolution=28, dropout=0.1, evaluated=True)
    assert source == "probe" and calls == [{"epoch": 2, "resolution": 28, "dropout": 0.1, "batches": (32, 256)}]
    record = est.to_record(source)
    assert set(record) == {"b_noise", "b_noise_std", "noise_grad_sq", "noise_trace", "noise_batches", "noise_source"}
    assert epoch_metrics({**record, "workers": [large.to_record()]})["noise/b_noise"] == pytest.approx(est.b_noise)
    assert "train/worker3/grad_sq" in epoch_metrics({**record, "workers": [large.to_record()]})


def test_probe_batches_and_fsdp_members_add_up():
    assert probe_batches(256, None) == (32, 256) and probe_batches(8, None) == (2, 8)
    assert probe_batches(256, 64) == (64, 256) and probe_batches(2, None) == (1, 2)
    assert probe_batches(128, 256) == (16, 128)  # a configured one that does not fit this batch: an eighth
    with pytest.raises(ConfigError, match="noise_scale.probe_batch_small.*below the smallest dbl.batch_large, 64"):
        load_config(None, ["noise_scale.probe_batch_small=64"])
    merged = merge_members([_report(0, 64, [(32, 1.0), (32, 2.0)]), _report(0, 64, [(32, 0.5), (32, 0.25)], member=1)])
    assert merged.grad_sq == [(64, 1.5), (64, 2.25)]  # each member: a slice of the batch, a shard of the gradient
