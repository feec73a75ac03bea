"""How long a fit trains (stopping.py): the stop rule, the last phase on every row, the cap,
the ConvergenceWarning, the evaluation period, divergence; and the schedule a fit follows."""

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from cebra_halfunet import HalfUNetRegressor
from cebra_halfunet.callbacks import Callback
from cebra_halfunet.schedules import warmup_stable_decay
from cebra_halfunet.stopping import MAX_EPOCHS, STOP_RULE, decay_epochs
from cebra_halfunet.training import Trainer

from .conftest import at_training_batch, make_images

FAST = dict(latent_dim=16, batch_size=16, ensemble_size=1, random_state=0)


def regressor(**kwargs):
    return HalfUNetRegressor(**(FAST | kwargs))


def trained_batches(monkeypatch) -> list:
    """Make the trainer record the rows of every training batch, in order."""
    batches, original = [], Trainer._batch_loss

    def spy(self, model, inputs, Y, index):
        if model.training:
            batches.append(index.numpy().copy())
        return original(self, model, inputs, Y, index)

    monkeypatch.setattr(Trainer, "_batch_loss", spy)
    return batches


def scripted(monkeypatch, losses):
    """Make the ``n``-th measurement of the validation loss on ``X_val`` ``losses[n]``."""
    original, script = Trainer.evaluate, iter(losses)

    def evaluate(self, model, X, Y, rows=None):
        return next(script) if rows is None else original(self, model, X, Y, rows)

    monkeypatch.setattr(Trainer, "evaluate", evaluate)


# --------------------------------------------------------- every row trains
@pytest.mark.parametrize("ensemble_size", [1, 3])
def test_the_rule_chooses_the_length_and_the_last_phase_trains_every_row(monkeypatch, ensemble_size):
    z, images = make_images(60)
    batches = trained_batches(monkeypatch)
    model = regressor(ensemble_size=ensemble_size, max_epochs=40, n_iter_no_change=2, lr=1e-2).fit(z, images)
    stable = [r for r in model.history_ if r["phase"] == "stable"]
    decay = [r for r in model.history_ if r["phase"] == "decay"]
    assert model.stop_reason_ == STOP_RULE and len(decay) == decay_epochs(len(stable)) and model.n_epochs_ < 40
    assert [r["phase"] for r in model.history_] == ["stable"] * len(stable) + ["decay"] * len(decay)
    # the first phase never sees a held-out or gap row; the last one trains every row, every epoch
    train = ~(model.validation_mask_ | model.excluded_mask_)
    first = math.ceil(train.sum() / 16) * len(stable)
    assert train[np.concatenate(batches[:first])].all()
    last = batches[first:]
    assert len(last) == math.ceil(60 / 16) * len(decay)
    for epoch in range(len(decay)):
        rows = np.concatenate(last[epoch * 4 : (epoch + 1) * 4])
        assert np.array_equal(np.sort(rows), np.arange(60))
    # validation losses while held out; their loss as trained rows once the decay trains them
    assert all(r["valid_loss"] is not None and r["held_out_loss"] is None for r in stable)
    assert all(r["valid_loss"] is None for r in decay) and decay[-1]["held_out_loss"] is not None
    assert model.best_epoch_ == min(stable, key=lambda r: r["valid_loss"])["epoch"]


def test_without_early_stopping_every_row_trains_max_epochs_and_the_last_quarter_decays():
    z, images = make_images(60)
    model = regressor(max_epochs=8, early_stopping=False).fit(z, images)
    assert [r["phase"] for r in model.history_] == ["stable"] * 6 + ["decay"] * 2
    assert model.stop_reason_ == MAX_EPOCHS and model.best_epoch_ is None
    assert not model.validation_mask_.any() and not model.excluded_mask_.any()


@pytest.mark.parametrize("max_epochs, phases", [(1, "d"), (2, "sd"), (3, "ssd"), (5, "ssssd"), (6, "ssssdd"), (8, "ssssssdd")])
def test_the_cap_leaves_room_for_the_decay(max_epochs, phases):
    """One more epoch of the first phase must leave room for a decay of a quarter of it."""
    z, images = make_images(60)
    model = regressor(max_epochs=max_epochs, n_iter_no_change=100).fit(z, images)
    assert "".join(r["phase"][0] for r in model.history_) == phases
    assert model.n_epochs_ == max_epochs and model.stop_reason_ == MAX_EPOCHS


# ------------------------------------------ the rule's verdict and its warning
@pytest.mark.parametrize(
    "losses, n_epochs, reason, best, warns",
    [
        ([8, 7, 6, 5, 4, 3, 2, 1], 8, MAX_EPOCHS, 6, True),  # improving to the cap (6 stable + 2 decay)
        ([8, 7, 6, 5, 4, 3, 3.5, 3.5], 8, MAX_EPOCHS, 6, True),  # the last improvement is the last evaluation
        ([8, 7, 6, 5, 5, 5, 5, 5], 8, STOP_RULE, 4, False),  # the rule fires when the cap would: the rule
        ([4, 2, 3, 3, 9, 9, 9, 9], 5, STOP_RULE, 2, False),  # 4 stable epochs, then a decay of 1
        ([1, 2, 3, 4, 9, 9, 9, 9], 4, STOP_RULE, 1, False),
        ([4, 3, 2, 1.99, 1.985, 9, 9, 9], 7, STOP_RULE, 5, False),  # better by less than tol (1%): not improvements
    ],
)
def test_convergence_warning_fires_exactly_when_the_cap_ends_a_fit_still_improving(monkeypatch, losses, n_epochs, reason, best, warns):
    z, images = make_images(20)
    scripted(monkeypatch, losses)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = regressor(max_epochs=8, n_iter_no_change=2, tol=0.01).fit(z, images, X_val=z[:5], y_val=images[:5])
    assert model.n_epochs_ == n_epochs and model.stop_reason_ == reason and model.best_epoch_ == best
    stable = sum(r["phase"] == "stable" for r in model.history_)
    assert n_epochs - stable == (8 - stable if reason == MAX_EPOCHS else decay_epochs(stable))
    assert sum(issubclass(w.category, ConvergenceWarning) for w in caught) == int(warns)
    assert all(r["valid_loss"] is not None for r in model.history_)  # X_val is never trained on: valid throughout


def test_no_convergence_warning_without_validation_or_in_partial_fit():
    z, images = make_images(20)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        assert regressor(max_epochs=2, early_stopping=False).fit(z, images).stop_reason_ == MAX_EPOCHS
        model = regressor().partial_fit(z, images).partial_fit(z, images)
    assert model.stop_reason_ is None and model.n_epochs_ == 2


# ------------------------------------------------------ counted in steps
def test_short_epochs_are_evaluated_every_so_many_steps(default_evaluation_period):
    from cebra_halfunet.training import EVALUATION_STEPS

    z, images = make_images(60)  # 51 training rows: 4 batches of 16 an epoch
    period = math.ceil(EVALUATION_STEPS / 4)
    model = regressor(max_epochs=10 * period, n_iter_no_change=1).fit(z, images)
    evaluated = [r["epoch"] for r in model.history_ if r["train_loss"] is not None]
    stable = [r["epoch"] for r in model.history_ if r["phase"] == "stable"]
    assert period > 1 and evaluated[: len(stable) // period] == list(range(period, len(stable) + 1, period))
    assert len(stable) % period == 0 and len(stable) >= 2 * period  # the rule waited for two evaluations
    assert evaluated[-1] == model.n_epochs_  # the fit's last epoch is always measured


def test_a_diverging_fit_stops_with_a_clear_error():
    z, images = make_images(60)
    with pytest.raises(ValueError, match=r"Training diverged: the training loss of epoch \d+ is (inf|nan)\. Lower lr \(now 1e\+06\)"):
        regressor(latent_dim=512, lr=1e6, max_epochs=4).fit(z, images)


# --------------------------------------------------------------- the schedule
def rate_spy():
    """A callback (copied by the estimator) and the list it fills with the learning rate
    after each optimizer step: the rate of the next step, the schedule having moved on."""
    seen = []

    class Spy(Callback):
        def on_batch_end(self, run, loss):
            seen.append(run.optimizer.param_groups[0]["lr"])

    return Spy(), seen


def test_the_schedule_warms_up_holds_decays_and_restarts_with_warm_start():
    z, images = make_images(64)  # 4 batches an epoch
    spy, seen = rate_spy()
    model = regressor(max_epochs=4, early_stopping=False, callbacks=[spy], lr=1e-2).fit(z, images)
    # warm-up over the first evaluation period (an epoch here), the rate, then the last epoch decays
    assert seen == pytest.approx([1e-2 * warmup_stable_decay(step, 4, 12, 4) for step in range(1, 17)], rel=1e-12)
    assert seen[3:12] == [1e-2] * 9 and seen[-1] == 0
    seen.clear()
    model.set_params(warm_start=True, max_epochs=2).fit(z, images)  # a new schedule over the new call
    assert seen == pytest.approx([1e-2 * warmup_stable_decay(step, 4, 4, 4) for step in range(1, 9)], rel=1e-12)
    seen.clear()
    model.partial_fit(z, images)  # no schedule: the base rate
    assert seen == [1e-2] * 4
    seen.clear()
    regressor(max_epochs=2, early_stopping=False, callbacks=[spy], lr_schedule="constant").fit(z, images)
    assert seen == [2e-3] * 8


def test_the_decay_starts_when_the_rule_fires(monkeypatch):
    z, images = make_images(64)
    scripted(monkeypatch, [1, 2, 3, 9, 9, 9])  # the rule fires after epoch 3
    spy, seen = rate_spy()
    model = regressor(max_epochs=40, n_iter_no_change=2, callbacks=[spy], lr=1e-2).fit(
        z, images, X_val=z[:5], y_val=images[:5]
    )
    assert model.n_epochs_ == 3 + decay_epochs(3) == 4
    assert seen == pytest.approx([1e-2 * warmup_stable_decay(step, 4, 12, 4) for step in range(1, 17)], rel=1e-12)


def raise_keyboard_interrupt():
    raise KeyboardInterrupt


def test_ctrl_c_in_the_last_phase_keeps_its_weights(monkeypatch):
    z, images = make_images(60)  # 4 batches an epoch in both phases (51 rows, then 60)
    batches = at_training_batch(monkeypatch, 4 * 4 + 4 + 2, raise_keyboard_interrupt)
    model = regressor(max_epochs=6, n_iter_no_change=100)  # phases ssssdd: batch 2 of the last epoch
    with pytest.raises(KeyboardInterrupt), pytest.warns(RuntimeWarning, match="keeps its last weights"):
        model.fit(z, images)
    assert len(batches) == 22 and model.stop_reason_ == "interrupted"
    assert [r["phase"] for r in model.history_] == ["stable"] * 4 + ["decay"]
