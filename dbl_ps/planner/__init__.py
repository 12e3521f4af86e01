"""Time model and dual-batch plan: who trains with which batch size on how much data.

Pure functions, no torch. Notation (arXiv 2509.26092, ``docs``/DESIGN):

* time per training step at batch ``b``:     ``t(b) = alpha + beta * b``
* epoch time of a worker with share ``d``:   ``T(d, b) = d * (beta + alpha / b)``
* ``W`` workers, the first ``n_S`` of them (ids ``0 .. n_S-1``) small, ``n_L = W - n_S``
  large; dataset size ``N``; largest batch ``B_L``; time budget ``tau >= 1``.

The paper's plan (one device type)::

    n_S = 0:  d_i = N / W, b_i = B_L
    n_S > 0:  d_L = tau * N / W
              d_S = (N - n_L * d_L) / n_S
              T0  = (N / W) * (beta + alpha / B_L)          # all-large epoch time
              b_S = alpha / (tau * T0 / d_S - beta)
    merge weight f_i = d_i / d_L  (1 for large workers)

Beyond the paper (mixed hardware): worker ``i`` has its own ``(alpha_i, beta_i)`` and
``B_L,i``. With ``c_i = beta_i + alpha_i / B_L,i`` (seconds per sample at the
largest batch)::

    T0  = N / sum_i (1 / c_i)        # load-balanced all-large epoch time
    T   = T0            if n_S = 0   # then d_i = T0 / c_i: every worker finishes together
    T   = tau * T0      if n_S > 0
    d_i = T / c_i                    for every large worker
    D_S = N - sum_large d_i          # data left for the small workers
    b_S : sum_small T / (beta_j + alpha_j / b_S) = D_S     # one batch size for all
    d_j = T / (beta_j + alpha_j / b_S)                     # small workers

so every worker's predicted epoch time is exactly ``T``. With one device type this
is the paper's plan (same ``d_L``, ``d_S``, ``b_S``). Small workers share one batch
size so they all train with the same gradient noise; the equation in ``b_S`` is
increasing in ``b_S`` and is solved in closed form when the small workers share a
time model, by bisection otherwise. Merge weights generalise to
``f_i = d_i / mean(large shares)`` (mean of all shares when ``n_S = W``).

A small batch chosen by the user (``batch_small``: a size, or a fraction of ``B_L`` below
1) replaces the formula for ``b_S``; the shares are then planned so that every worker
finishes together, ``T = N / (S_L + s(b_S))`` with ``s(b) = sum_small 1/(beta_j + alpha_j/b)``,
which must stay within ``tau * T0``. The formula's ``b_S`` is the smallest batch that fits
``tau``, so a chosen one must be at least that large (or ``tau`` raised).

Where the time model cannot choose ``b_S`` (``dual_batch_regime``): with ``alpha`` about 0
(below one sample's cost, ``alpha < beta``) a smaller batch costs no time and the formula
drives ``b_S`` to 1 or below; the plan then takes the
fraction of ``B_L`` that the authors' GTX 1080 time model gives for the same ``n_S``, ``W``
and ``tau`` (``reference_small_fraction``). With ``alpha/beta`` far below ``B_L`` (a CPU)
the formula gives a batch of a few samples (``b_S ~ 1.75 alpha/beta``); with ``alpha/beta``
far above ``B_L`` (a launch-bound GPU step) it is set by the data split,
``b_S ~ (d_S/d_L) B_L / tau``, close to ``B_L``. Both are planned as the paper does and
said in one line.

Rounding (the plan every runtime uses): shares are apportioned by the largest
remainder method, so they are integers summing to exactly ``N`` (ties go to the lower
worker id); ``b_S`` is rounded to the nearest integer with Python's ``round``, which
is what the authors' code does and the only rule that reproduces all their check
values (``b_S`` = 101.51 -> 102, 185.40 -> 185, 243.33 -> 243, 46.79 -> 47; floor
gives 101 and 46, ceil gives 186 and 244). The rounded plan predicts
``ceil(d/b) * alpha + d * beta`` per worker: every sample of the share is trained,
the last batch partial.

The package, one module per part: `time_model` (the time model and its fits, the rounding),
`dbsl` (the plan above, its types `ResolutionPlan`/`Plan`, the regime of its small batch, the
authors' presets), `mixed` (mixed-batch data parallelism: one global batch split so every
rank's step takes the same time), `drift` (re-planning when measured speeds drift, for both
kinds of plan). Everything public is importable from `dbl_ps.planner`.
"""

from dbl_ps.planner.dbsl import (
    AUTHORS_BEST,
    NO_FIXED_COST_SAMPLES,
    PAPER_BATCH_LARGE,
    PAPER_TIME_MODELS,
    TINY_FRACTION,
    Plan,
    Regime,
    ResolutionPlan,
    dual_batch_regime,
    epoch_time_ratio,
    feasible_tau_range,
    make_plan,
    plan_all_small_counts,
    plan_resolution,
    reference_small_fraction,
)
from dbl_ps.planner.drift import DEFAULT_THRESHOLD, drifted, replan, replan_any, scaled_models, speed_factors
from dbl_ps.planner.mixed import (
    balanced_batches,
    micro_batches,
    plan_lines,
    plan_mixed,
    plan_mixed_resolution,
    split_line,
    step_seconds,
)
from dbl_ps.planner.time_model import (
    InfeasiblePlanError,
    TimeModel,
    apportion,
    fit_nonnegative_time_model,
    fit_time_model,
)

__all__ = [
    "AUTHORS_BEST", "DEFAULT_THRESHOLD", "InfeasiblePlanError", "NO_FIXED_COST_SAMPLES", "PAPER_BATCH_LARGE",
    "PAPER_TIME_MODELS", "Plan", "Regime", "ResolutionPlan", "TINY_FRACTION", "TimeModel", "apportion",
    "balanced_batches", "drifted", "dual_batch_regime", "epoch_time_ratio", "feasible_tau_range",
    "fit_nonnegative_time_model", "fit_time_model", "make_plan", "micro_batches", "plan_all_small_counts",
    "plan_lines", "plan_mixed", "plan_mixed_resolution", "plan_resolution", "reference_small_fraction", "replan",
    "replan_any", "scaled_models", "speed_factors", "split_line", "step_seconds",
]
