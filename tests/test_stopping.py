"""How long a fit trains (stopping.py): the stop rule, the last phase on every row, the cap,
the ConvergenceWarning, the evaluation period, divergence; and the schedule a fit follows."""

import math
import warnings

import numpy as np
import pytest
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
def test_a_pilot_chooses_the_length_and_the_decoder_trains_every_frame_that_long(monkeypatch, ensemble_size):
    z, images = make_images(60)
    batches = trained_batches(monkeypatch)
    model = regressor(ensemble_size=ensemble_size, max_epochs=40, n_iter_no_change=2, lr=1e-2).fit(z, images)
    assert model.stop_reason_ == STOP_RULE, [r["valid_score"] for r in model.history_]
    phases = [r["phase"] for r in model.history_]
    pilot, length = phases.count("pilot"), model.best_epoch_
    assert 1 <= length <= pilot - 2  # the rule fired 2 evaluations after the best
    assert phases == ["pilot"] * pilot + ["stable"] * length + ["decay"] * decay_epochs(length)
    # the pilot never trains a held-out or gap row; the decoder trains every row in every epoch
    train = ~(model.validation_mask_ | model.excluded_mask_)
    pilot_batches = math.ceil(train.sum() / 16) * pilot
    assert train[np.concatenate(batches[:pilot_batches])].all()
    final = batches[pilot_batches:]
    assert len(final) == 4 * (length + decay_epochs(length))  # 60 rows: 4 batches an epoch
    for epoch in range(0, len(final), 4):
        assert np.array_equal(np.sort(np.concatenate(final[epoch : epoch + 4])), np.arange(60))
    # validated while held out (the pilot); their loss as trained rows in the final run, as low as the others'
    records = model.history_
    assert all(r["valid_loss"] is not None and r["held_out_loss"] is None for r in records[:pilot])
    assert all(r["valid_loss"] is None for r in records[pilot:]) and records[-1]["held_out_loss"] is not None
    assert model.best_epoch_ == max(records[:pilot], key=lambda r: r["valid_score"])["epoch"]  # SSIM, by default
    assert records[-1]["held_out_loss"] < 1.3 * records[-1]["train_loss"]


def test_without_early_stopping_every_row_trains_max_epochs_and_the_last_quarter_decays():
    z, images = make_images(60)
    model = regressor(max_epochs=8, early_stopping=False).fit(z, images)
    assert [r["phase"] for r in model.history_] == ["stable"] * 6 + ["decay"] * 2
    assert model.stop_reason_ == MAX_EPOCHS and model.best_epoch_ is None
    assert not model.validation_mask_.any() and not model.excluded_mask_.any()


@pytest.mark.parametrize("max_epochs, phases", [(1, "d"), (2, "sd"), (3, "ssd"), (5, "ssssd"), (6, "ssssdd"), (8, "ssssssdd")])
def test_a_run_of_fixed_length_leaves_room_for_its_decay(max_epochs, phases):
    """One more epoch at the full rate must leave room for a decay of a quarter of them."""
    z, images = make_images(60)
    model = regressor(max_epochs=max_epochs, early_stopping=False).fit(z, images)
    assert "".join(r["phase"][0] for r in model.history_) == phases
    assert model.n_epochs_ == max_epochs and model.stop_reason_ == MAX_EPOCHS


def scripted_pilot(monkeypatch, losses):
    """Make the pilot's ``n``-th validation loss ``losses[n]`` (the held-out rows of 60 distinct
    frames; later measurements of those rows, the final run's, as measured)."""
    from cebra_halfunet.splits import frame_validation_split

    held_out = np.flatnonzero(frame_validation_split(np.arange(60), 0.1).held_out)
    original, script = Trainer.evaluate, iter(losses)

    def evaluate(self, model, X, Y, rows=None):
        if rows is not None and np.array_equal(np.asarray(rows), held_out):
            return next(script, original(self, model, X, Y, rows))
        return original(self, model, X, Y, rows)

    monkeypatch.setattr(Trainer, "evaluate", evaluate)


@pytest.mark.parametrize(
    "losses, pilot, reason, best, warns",
    [
        ([8, 7, 6, 5, 4, 3, 2, 1], 8, MAX_EPOCHS, 8, True),  # improving to the pilot's cap (half of 16)
        ([8, 7, 6, 5, 5, 5, 9, 9], 6, STOP_RULE, 4, False),
        ([1, 2, 3, 9, 9, 9, 9, 9], 3, STOP_RULE, 1, False),
        # better by less than tol (1%) at epochs 4 and 5: not improvements, so the length ends at epoch 3
        ([4, 3, 2, 1.99, 1.985, 9, 9, 9], 5, STOP_RULE, 3, False),
    ],
)
def test_the_pilot_ends_by_its_rule_or_half_the_cap_and_warns_exactly_when_still_improving(monkeypatch, losses, pilot, reason, best, warns):
    z, images = make_images(60)
    scripted_pilot(monkeypatch, losses)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = regressor(max_epochs=16, n_iter_no_change=2, tol=0.01, scoring="loss").fit(z, images)
    phases = [r["phase"] for r in model.history_]
    assert phases.count("pilot") == pilot and model.stop_reason_ == reason and model.best_epoch_ == best
    assert len(phases) - pilot == min(best + decay_epochs(best), 16 - pilot)  # the final run, in what is left
    assert sum(issubclass(w.category, ConvergenceWarning) for w in caught) == int(warns)


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
def test_with_x_val_one_run_decays_once_the_rule_fires_and_warns_exactly_when_still_improving(monkeypatch, losses, n_epochs, reason, best, warns):
    z, images = make_images(20)
    scripted(monkeypatch, losses)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = regressor(max_epochs=8, n_iter_no_change=2, tol=0.01, scoring="loss").fit(z, images, X_val=z[:5], y_val=images[:5])
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
    model = regressor(max_epochs=20 * period, n_iter_no_change=1).fit(z, images)
    pilot = [r for r in model.history_ if r["phase"] == "pilot"]
    evaluated = [r["epoch"] for r in pilot if r["valid_loss"] is not None]
    assert period > 1 and evaluated == list(range(period, len(pilot) + 1, period))
    assert len(pilot) >= 2 * period and model.best_epoch_ in evaluated  # the rule waited for two evaluations
    assert model.history_[-1]["train_loss"] is not None  # the fit's last epoch is always measured


def test_a_diverging_fit_stops_with_a_clear_error():
    z, images = make_images(60)
    with pytest.raises(ValueError, match=r"Training diverged: the .* of epoch \d+ is .*\. Lower lr \(now 1e\+06\)"):
        regressor(latent_dim=512, lr=1e6, max_epochs=4).fit(z, images)
    with pytest.raises(ValueError, match=r"Training diverged: the training loss of epoch 1 is .*, .* times that of the network"):
        regressor(lr=1e3, max_epochs=4, early_stopping=False).fit(z, images)  # finite, yet far above where it started


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
    model = regressor(max_epochs=40, n_iter_no_change=2, callbacks=[spy], lr=1e-2, scoring="loss").fit(
        z, images, X_val=z[:5], y_val=images[:5]
    )
    assert model.n_epochs_ == 3 + decay_epochs(3) == 4
    assert seen == pytest.approx([1e-2 * warmup_stable_decay(step, 4, 12, 4) for step in range(1, 17)], rel=1e-12)


def raise_keyboard_interrupt():
    raise KeyboardInterrupt


def test_ctrl_c_in_the_decay_keeps_its_weights(monkeypatch):
    z, images = make_images(60)  # 4 batches an epoch
    batches = at_training_batch(monkeypatch, 5 * 4 + 2, raise_keyboard_interrupt)
    model = regressor(max_epochs=6, early_stopping=False)  # phases ssssdd: batch 2 of the last epoch
    with pytest.raises(KeyboardInterrupt), pytest.warns(RuntimeWarning, match="keeps its last weights"):
        model.fit(z, images)
    assert len(batches) == 22 and model.stop_reason_ == "interrupted"
    assert [r["phase"] for r in model.history_] == ["stable"] * 4 + ["decay"]


def test_ctrl_c_in_the_pilot_leaves_the_estimator_as_it_was(monkeypatch):
    z, images = make_images(60)
    at_training_batch(monkeypatch, 6, raise_keyboard_interrupt)  # in the pilot's second epoch
    model = regressor(max_epochs=40)
    with pytest.raises(KeyboardInterrupt), pytest.warns(RuntimeWarning, match="while the pilot chose its length"):
        model.fit(z, images)
    assert not any(name.endswith("_") for name in vars(model))


def scripted_scores(monkeypatch, scores):
    """Make the ``n``-th validation score (SSIM) ``scores[n]``."""
    script = iter(scores)
    monkeypatch.setattr(Trainer, "score", lambda self, model, X, Y, rows=None: next(script))


def test_by_default_the_rule_judges_the_validation_ssim_relative_to_the_best(monkeypatch):
    z, images = make_images(60)
    scripted_scores(monkeypatch, [0.30, 0.32, 0.322, 0.321, 0.5, 0.5])  # +0.6%: less than tol (1%) of 0.32
    model = regressor(max_epochs=40, n_iter_no_change=2, tol=0.01).fit(z, images)
    pilot = [r for r in model.history_ if r["phase"] == "pilot"]
    assert [r["valid_score"] for r in pilot] == [0.30, 0.32, 0.322, 0.321]  # fired after two without 1% over 0.32
    assert model.best_epoch_ == 2 and model.stop_reason_ == STOP_RULE  # the last by tol, not the highest (3)
    assert all(r["valid_loss"] is not None for r in pilot)  # the loss is recorded beside it


def test_a_validation_score_that_is_not_finite_is_divergence(monkeypatch):
    z, images = make_images(60)
    scripted_scores(monkeypatch, [0.3, float("nan")])
    with pytest.raises(ValueError, match="Training diverged: the validation SSIM of epoch 2 is nan"):
        regressor(max_epochs=40).fit(z, images)


def test_partial_fit_trains_at_the_rate_lr_without_a_decay():
    z, images = make_images(60)
    spy, seen = rate_spy()
    model = regressor(callbacks=[spy], lr=1e-2).partial_fit(z, images).partial_fit(z, images)
    assert [r["phase"] for r in model.history_] == ["stable", "stable"] and seen == [1e-2] * 8
    assert "partial_fit" in model.validation_reason_ and model.stop_reason_ is None


def test_the_warning_says_when_the_rule_had_too_few_evaluations_to_judge():
    z, images = make_images(60)
    with pytest.warns(ConvergenceWarning, match=r"could not judge the validation SSIM: only 1 evaluation fit in half of max_epochs=3"):
        regressor(max_epochs=3).fit(z, images)
