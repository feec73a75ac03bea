"""Learning-rate schedules: a pure function of the step, so that a run resumes exactly."""

from __future__ import annotations

import math

import torch


def warmup_cosine(step: int, total_steps: int, warmup_steps: int) -> float:
    """Factor on the base learning rate before optimizer step ``step`` (0-based).

    Linear warm-up from ``1 / warmup_steps`` to 1 over the first ``warmup_steps`` steps, then
    a half cosine from 1 down to 0 at ``total_steps`` (and 0 after it). The schedule is
    sized to the steps the fit will take (``max_epochs`` times the batches per epoch, or a
    step budget), so early stopping ends a run whose rate has already decayed rather than
    one cut off at its peak.

    Being a function of the step count alone, it needs no state of its own: a fit resumed
    from a checkpoint after ``e`` epochs of ``b`` batches continues at step ``e * b``, on the
    exact rates of the uninterrupted run. How the estimator is to use it:

    - ``fit``: one schedule over the call's steps, step 0 at its first batch.
    - ``fit`` with ``warm_start=True`` on a fitted decoder: a new schedule over the new call's
      steps, warm-up included (a warm restart; the optimizer's moments are kept).
    - ``partial_fit``: the number of calls is unknown, so no schedule: factor 1 (the base
      rate) at every step.

    Parameters
    ----------
    step, total_steps, warmup_steps : int
        ``0 <= warmup_steps <= total_steps``, ``total_steps >= 1``, ``step >= 0``.
    """
    if total_steps < 1 or not 0 <= warmup_steps <= total_steps or step < 0:
        raise ValueError(
            f"Need step >= 0 and 0 <= warmup_steps <= total_steps >= 1, got step={step}, "
            f"total_steps={total_steps}, warmup_steps={warmup_steps}."
        )
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


#: Share of a fit's steps spent warming up (see :func:`warmup_cosine_scheduler`).
WARMUP_FRACTION = 0.1


def warmup_cosine_scheduler(optimizer, total_steps: int, warmup_fraction: float = WARMUP_FRACTION):
    """A ``LambdaLR`` on ``optimizer`` that follows :func:`warmup_cosine` over
    ``total_steps`` optimizer steps, the first ``warmup_fraction`` of them (rounded up)
    warming up. A ``policy`` for :class:`~cebra_halfunet.callbacks.LRScheduler`."""
    warmup_steps = min(math.ceil(warmup_fraction * total_steps), total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, total_steps, warmup_steps))
