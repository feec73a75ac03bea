"""The learning-rate schedule (schedules.py)."""

import math

import pytest

from cebra_halfunet.schedules import warmup_stable_decay


def test_warmup_then_the_base_rate_until_the_decay_is_known():
    factors = [warmup_stable_decay(step, 10) for step in range(1000)]
    assert factors[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert factors[10:] == [1.0] * 990  # no end is known: the rate holds


def test_the_decay_is_a_half_cosine_to_zero_over_its_steps():
    factors = [warmup_stable_decay(step, 10, decay_start=50, decay_steps=4) for step in range(60)]
    assert factors[10:50] == [1.0] * 40
    cosine = [0.5 + 0.5 * math.cos(math.pi * k / 4) for k in range(4)]
    assert factors[50:54] == pytest.approx(cosine)
    assert factors[54:] == [0.0] * 6
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))


def test_a_decay_that_starts_during_the_warmup_takes_the_lower_factor():
    factors = [warmup_stable_decay(step, 4, decay_start=0, decay_steps=4) for step in range(4)]
    cosine = [0.5 + 0.5 * math.cos(math.pi * k / 4) for k in range(4)]
    assert factors == pytest.approx([min((k + 1) / 4, c) for k, c in enumerate(cosine)])


def test_the_factor_is_a_function_of_the_step_alone():
    """What a resumed run relies on: the same step gives the same rate, whatever came before."""
    schedule = dict(warmup_steps=5, decay_start=12, decay_steps=8)
    whole = [warmup_stable_decay(step, **schedule) for step in range(20)]
    assert whole[:8] + [warmup_stable_decay(step, **schedule) for step in range(8, 20)] == whole


@pytest.mark.parametrize(
    "step, warmup, start, length", [(-1, 2, None, 0), (0, -1, None, 0), (0, 2, -1, 3), (0, 2, 5, 0)]
)
def test_bad_schedule_arguments_raise(step, warmup, start, length):
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_stable_decay(step, warmup, start, length)
