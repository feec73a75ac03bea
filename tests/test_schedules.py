"""The learning-rate schedule (schedules.py)."""

import math

import pytest
import torch

from cebra_halfunet.schedules import warmup_cosine


def test_warmup_then_cosine_to_zero_at_the_last_step():
    factors = [warmup_cosine(step, 100, 10) for step in range(101)]
    assert factors[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert factors[10] == 1.0
    assert factors[55] == pytest.approx(0.5)
    assert factors[100] == 0.0 and warmup_cosine(150, 100, 10) == 0.0
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert [warmup_cosine(s, 4, 0) for s in range(4)] == pytest.approx([1.0, 0.5 + 0.5 * math.cos(math.pi / 4), 0.5, 0.5 - 0.5 * math.cos(math.pi / 4)])


def test_a_resumed_run_continues_on_the_same_rates():
    def rates(first_step, n_steps):
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(first_step + step, 20, 5))
        seen = []
        for _ in range(n_steps):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.step()
        return seen

    assert rates(0, 8) + rates(8, 12) == rates(0, 20)


@pytest.mark.parametrize("step, total, warmup", [(0, 0, 0), (0, 10, 11), (-1, 10, 2), (0, 10, -1)])
def test_bad_schedule_arguments_raise(step, total, warmup):
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_cosine(step, total, warmup)

