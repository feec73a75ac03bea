"""Learning-rate schedules: a pure function of the step, so that a run resumes exactly."""

from __future__ import annotations

import math


def warmup_stable_decay(step: int, warmup_steps: int, decay_start: int | None = None, decay_steps: int = 0) -> float:
    """Factor on the base learning rate before optimizer step ``step`` (0-based).

    Warm-up, stable, decay: a linear warm-up from ``1 / warmup_steps`` to 1 over the first
    ``warmup_steps`` steps; then 1 for as long as training needs, a length nobody knows in
    advance; from step ``decay_start`` on (once it is known: the stop rule has chosen the
    length), a half cosine from 1 to 0 over ``decay_steps`` steps (and 0 after them). Where
    warm-up and decay overlap (a fit too short for either) the lower factor holds.

    Being a function of the step and of the decay's start, it needs no state of its own:
    a fit resumed from a checkpoint continues on the exact rates of the uninterrupted run.

    Parameters
    ----------
    step, warmup_steps : int
        ``step >= 0``, ``warmup_steps >= 0`` (0: no warm-up).
    decay_start : int or None
        First step of the decay; None while the length is not yet known.
    decay_steps : int
        Steps of the decay (``>= 1`` when ``decay_start`` is given).
    """
    if step < 0 or warmup_steps < 0 or (decay_start is not None and (decay_start < 0 or decay_steps < 1)):
        raise ValueError(
            f"Need step >= 0, warmup_steps >= 0 and, with decay_start >= 0, decay_steps >= 1; got step={step}, "
            f"warmup_steps={warmup_steps}, decay_start={decay_start}, decay_steps={decay_steps}."
        )
    factor = (step + 1) / warmup_steps if step < warmup_steps else 1.0
    if decay_start is not None and step >= decay_start:
        progress = min((step - decay_start) / decay_steps, 1.0)
        factor = min(factor, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return factor
