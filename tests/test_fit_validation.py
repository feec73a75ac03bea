"""Issue 22 through ``fit``: the leak-free frame split on repeated stimuli, ``groups``,
``X_val``/``y_val``, why a fit stopped and the ``ConvergenceWarning``, the learning-rate
schedule, and the resolved precision."""

import warnings

import numpy as np
import pytest
import sklearn
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cebra_halfunet import HalfUNetRegressor
from cebra_halfunet.callbacks import Callback
from cebra_halfunet.schedules import WARMUP_FRACTION, warmup_cosine
from cebra_halfunet.splits import VALIDATION_GAP
from cebra_halfunet.stopping import MAX_EPOCHS, STOP_RULE
from cebra_halfunet.training import Trainer, cpu_has_bf16_units

FAST = dict(latent_dim=16, max_epochs=1, batch_size=32, ensemble_size=1, random_state=0)


def regressor(**kwargs):
    return HalfUNetRegressor(**(FAST | kwargs))


def movie(n_frames=40, seed=0):
    """Distinct frames ``(n_frames, 8, 16)`` in [0, 1] and an embedding per frame."""
    rng = np.random.default_rng(seed)
    return rng.random((n_frames, 8, 16)).astype(np.float32), rng.normal(size=(n_frames, 4)).astype(np.float32)


LAYOUTS = {
    "repeat-major": np.tile(np.arange(40), 4),
    "interleaved": np.repeat(np.arange(40), 4),
    "uneven": np.r_[np.arange(40), np.arange(10, 35), np.arange(40), np.arange(5, 20)],
}


def check_leak_free(shown, held_out, excluded):
    """No frame in both parts; no training sample within the gap of a held-out one."""
    train = ~(held_out | excluded)
    assert held_out.any() and train.any()
    assert not set(shown[held_out]) & set(shown[train])
    assert not set(shown[excluded]) & set(shown[train])
    for offset in range(1, VALIDATION_GAP + 1):
        assert not (held_out[:-offset] & train[offset:]).any() and not (train[:-offset] & held_out[offset:]).any()


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_exact_repeats_are_held_out_together_by_their_hash(layout):
    frames, codes = movie()
    shown = LAYOUTS[layout]
    rng = np.random.default_rng(1)
    X = codes[shown] + 0.1 * rng.normal(size=(len(shown), 4)).astype(np.float32)  # responses differ per repeat
    model = regressor().fit(X, frames[shown])
    check_leak_free(shown, model.validation_mask_, model.excluded_mask_)
    held_frames = np.unique(shown[model.validation_mask_])
    assert len(held_frames) == 4  # 10% of the 40 distinct frames, not of the samples
    assert model.validation_mask_.sum() == np.isin(shown, held_frames).sum()  # every copy
    assert "hashing" in model.validation_reason_ and "4 of 40 distinct frames" in model.validation_reason_


@pytest.mark.parametrize("form", ["memmap", "uint8 channels-last"])
def test_repeats_are_found_in_targets_on_disk_and_channels_last(form, tmp_path):
    frames, codes = movie()
    shown = LAYOUTS["interleaved"]
    y = frames[shown]
    if form == "memmap":
        stored = np.lib.format.open_memmap(tmp_path / "y.npy", mode="w+", dtype=y.dtype, shape=y.shape)
        stored[:] = y
        stored.flush()
        stored = np.load(tmp_path / "y.npy", mmap_mode="r")
    else:
        stored = np.round(y[..., None] * 255).astype(np.uint8)  # (N, H, W, 1), as a video reader gives
    in_memory = regressor(max_epochs=1).fit(codes[shown], y)
    model = regressor(max_epochs=1).fit(codes[shown], stored)
    np.testing.assert_array_equal(model.validation_mask_, in_memory.validation_mask_)
    np.testing.assert_array_equal(model.excluded_mask_, in_memory.excluded_mask_)
    check_leak_free(shown, model.validation_mask_, model.excluded_mask_)


def noisy_repeats():
    frames, codes = movie()
    shown = LAYOUTS["repeat-major"]
    rng = np.random.default_rng(2)
    y = frames[shown] + 0.01 * rng.random((len(shown), 8, 16)).astype(np.float32)  # no two copies bit-identical
    return codes[shown], y, shown


def test_noisy_repeats_are_held_out_together_through_groups():
    X, y, shown = noisy_repeats()
    by_hash = regressor().fit(X, y)
    assert np.unique(shown[by_hash.validation_mask_]).size < by_hash.validation_mask_.sum()  # hash: samples, not frames
    model = regressor().fit(X, y, groups=shown)
    check_leak_free(shown, model.validation_mask_, model.excluded_mask_)
    assert "groups" in model.validation_reason_
    with pytest.raises(ValueError, match="groups must have one entry per sample"):
        regressor().fit(X, y, groups=shown[:-1])


def test_groups_reach_the_estimator_in_a_pipeline_and_by_metadata_routing():
    X, y, shown = noisy_repeats()
    expected = regressor().fit(X, y, groups=shown).validation_mask_
    pipeline = make_pipeline(StandardScaler(), regressor()).fit(X, y, halfunetregressor__groups=shown)
    np.testing.assert_array_equal(pipeline[-1].validation_mask_, expected)
    with sklearn.config_context(enable_metadata_routing=True):
        routed = make_pipeline(StandardScaler(), regressor().set_fit_request(groups=True)).fit(X, y, groups=shown)
    np.testing.assert_array_equal(routed[-1].validation_mask_, expected)


def test_distinct_frames_give_stretches_of_samples_with_a_gap():
    frames, codes = movie(80)
    model = regressor().fit(codes, frames)
    held_out, excluded = model.validation_mask_, model.excluded_mask_
    # one stretch (8 frames: at least 2 * gap, fewer than 4 * gap), at the end: a gap before it
    assert held_out.sum() == 8 and held_out[-8:].all() and excluded[-8 - VALIDATION_GAP : -8].all() and excluded.sum() == VALIDATION_GAP
    check_leak_free(np.arange(80), held_out, excluded)


def test_moments_come_from_the_training_rows_only():
    frames, codes = movie(80)
    model = regressor().fit(codes, frames)
    train = ~(model.validation_mask_ | model.excluded_mask_)
    np.testing.assert_allclose(model.module_.offset[0, 0].numpy(), frames[train].mean(axis=0), rtol=1e-5, atol=1e-6)


def test_no_honest_split_warns_once():
    _, codes = movie(3)
    y = np.zeros((30, 8, 16), np.float32) + np.arange(3, dtype=np.float32)[np.arange(30) % 3, None, None]  # 3 frames
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = regressor().fit(codes[np.arange(30) % 3], y)
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert sum("no frame-level validation split" in m.lower() for m in messages) == 1
    assert "no frame-level" in model.validation_reason_


# ------------------------------------------------------------- X_val, y_val
def test_validation_data_are_used_as_given():
    frames, codes = movie(60)
    X_val, y_val = codes[:7] + 0.5, frames[10:17]
    model = regressor(max_epochs=2).fit(codes, frames, X_val=X_val, y_val=y_val)
    assert not model.validation_mask_.any() and not model.excluded_mask_.any()  # all of X trains
    assert "X_val and y_val" in model.validation_reason_
    best = model.history_[model.best_epoch_ - 1]["valid_loss"]
    assert model.evaluate_loss(X_val, y_val) == pytest.approx(best, rel=1e-6)


def test_validation_targets_may_be_another_float_dtype():
    frames, codes = movie(20)
    model = regressor().fit(codes, frames, X_val=codes[:5], y_val=frames[:5].astype(np.float64))
    assert model.validation_reason_ == "X_val and y_val as given (5 samples)"
    with pytest.raises(ValueError, match="y_val must have the form of y"):  # uint8 would be read as 0-255
        regressor().fit(codes, frames, X_val=codes[:5], y_val=(255 * frames[:5]).astype(np.uint8))


def test_validation_data_inside_a_search_pass_through_unsliced():
    frames, codes = movie(60)
    X_val, y_val = codes[:7], frames[:7]
    search = GridSearchCV(regressor(), {"lr": [2e-3]}, cv=2).fit(codes, frames, X_val=X_val, y_val=y_val)
    assert search.best_estimator_.validation_reason_ == "X_val and y_val as given (7 samples)"


def test_validation_data_as_long_as_a_training_fold_are_refused_saying_so():
    frames, codes = movie(60)
    search = GridSearchCV(regressor(), {"lr": [2e-3]}, cv=2, error_score="raise")
    with pytest.raises(ValueError, match=r"as many samples as X \(30; inside a search, X is the training fold\)"):
        search.fit(codes, frames, X_val=codes[:30], y_val=frames[:30])


@pytest.mark.parametrize(
    "kwargs, params, message",
    [
        ({"X_val": "same length"}, {}, "must not have as many samples as X"),
        ({"X_val": "short"}, {}, "must be passed together"),
        ({"X_val": "short", "y_val": "short"}, {"early_stopping": False}, "set early_stopping=True"),
        ({"X_val": "short", "y_val": "short", "groups": "groups"}, {}, "one or the other"),
        ({"X_val": "short", "y_val": "flat"}, {}, "y_val must have the form of y"),
        ({"X_val": "with NaN", "y_val": "short"}, {}, "X_val is not valid.*NaN"),
        ({"X_val": "narrow", "y_val": "short"}, {}, "X_val is not valid.*features"),
        ({"X_val": "scalar", "y_val": "short"}, {}, "X_val is not valid"),
        ({"groups": "with NaN"}, {}, "groups must name the frame of every sample, got 1 missing"),
        ({"groups": "with None"}, {}, "groups must name the frame of every sample, got 1 missing"),
        ({"groups": "column"}, {}, r"groups must have one entry per sample of X \(20\), got shape \(20, 1\)"),
    ],
)
def test_bad_validation_data_are_refused_before_training(kwargs, params, message, monkeypatch):
    frames, codes = movie(20)
    values = {
        "same length": codes, "short": codes[:5], "flat": frames[:5].reshape(5, -1), "groups": np.arange(20),
        "with NaN": np.r_[np.nan, np.arange(1.0, 20.0)], "narrow": codes[:5, :3], "column": np.arange(20)[:, None],
        "with None": np.array([None] + list(range(1, 20)), dtype=object), "scalar": 3.0,
    }
    values["with NaN"] = values["with NaN"] if "groups" in kwargs else np.where(np.arange(5)[:, None] == 0, np.nan, codes[:5])
    monkeypatch.setattr(Trainer, "fit", lambda *a, **k: pytest.fail("trained"))
    fit_kwargs = {name: values[value] for name, value in kwargs.items()}
    if "X_val" in kwargs and kwargs["X_val"] == "same length":
        fit_kwargs["y_val"] = frames
    with pytest.raises(ValueError, match=message):
        regressor(**params).fit(codes, frames, **fit_kwargs)


# ------------------------------------------------ the stop rule and its warning
def scripted(monkeypatch, losses):
    """Make the validation loss of epoch ``e`` ``losses[e - 1]`` (validation on X_val)."""
    original, script = Trainer.evaluate, iter(losses)

    def evaluate(self, model, X, Y, rows=None):
        return next(script) if rows is None else original(self, model, X, Y, rows)

    monkeypatch.setattr(Trainer, "evaluate", evaluate)


@pytest.mark.parametrize(
    "losses, n_epochs, reason, warns",
    [
        ([4, 3, 2, 1], 4, MAX_EPOCHS, True),  # improving to the end
        ([4, 3, 2, 2.5], 4, MAX_EPOCHS, True),  # best epoch 3 is among the last 2
        ([4, 2, 3, 3], 4, STOP_RULE, False),  # the rule fires at the last epoch
        ([4, 2, 2.5, 2.6, 2.7], 4, STOP_RULE, False),
        ([1, 2, 3, 4], 3, STOP_RULE, False),
        ([4, 3, 2, 1.99], 4, MAX_EPOCHS, True),  # an improvement below tol (1%) does not count, epoch 3 did
        ([4, 2, 1.99, 1.985], 4, STOP_RULE, False),  # epochs 3 and 4 better, by less than tol
    ],
)
def test_convergence_warning_fires_exactly_when_the_fit_ends_still_improving(monkeypatch, losses, n_epochs, reason, warns):
    frames, codes = movie(20)
    scripted(monkeypatch, losses)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = regressor(max_epochs=4, n_iter_no_change=2, tol=0.01, lr_schedule="constant").fit(
            codes, frames, X_val=codes[:5], y_val=frames[:5]
        )
    assert model.n_epochs_ == n_epochs and model.stop_reason_ == reason
    assert model.best_epoch_ == int(np.argmin(losses[:n_epochs])) + 1
    assert sum(issubclass(w.category, ConvergenceWarning) for w in caught) == int(warns)


def test_no_convergence_warning_without_validation_or_in_partial_fit():
    frames, codes = movie(20)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        assert regressor(max_epochs=2, early_stopping=False).fit(codes, frames).stop_reason_ == MAX_EPOCHS
        model = regressor().partial_fit(codes, frames).partial_fit(codes, frames)
    assert model.stop_reason_ is None and model.n_epochs_ == 2


@pytest.mark.parametrize("schedule, n_epochs", [("warmup_cosine", 3), ("constant", 2)])
def test_the_stop_rule_waits_for_half_the_schedule(monkeypatch, schedule, n_epochs):
    frames, codes = movie(20)
    scripted(monkeypatch, [1, 2, 3, 4, 5, 6])
    model = regressor(max_epochs=6, n_iter_no_change=1, lr_schedule=schedule).fit(
        codes, frames, X_val=codes[:5], y_val=frames[:5]
    )
    assert model.n_epochs_ == n_epochs and model.stop_reason_ == STOP_RULE and model.best_epoch_ == 1


# ------------------------------------------------------------- the schedule
def rate_spy():
    """A callback (copied by the estimator) and the list it fills with the learning rate
    after each optimizer step: the rate of the next step, the schedule having moved on."""
    seen = []

    class Spy(Callback):
        def on_batch_end(self, run, loss):
            seen.append(run.optimizer.param_groups[0]["lr"])

    return Spy(), seen


def schedule(lr, epochs, batches):
    total = epochs * batches
    warmup = int(np.ceil(WARMUP_FRACTION * total))
    return [lr * warmup_cosine(step, total, warmup) for step in range(1, total + 1)]


def test_the_default_schedule_is_warmup_then_cosine_over_the_fit_and_restarts_with_warm_start():
    frames, codes = movie(64)
    spy, seen = rate_spy()
    model = regressor(max_epochs=3, batch_size=16, early_stopping=False, callbacks=[spy], lr=1e-2).fit(codes, frames)
    assert seen == pytest.approx(schedule(1e-2, 3, 4), rel=1e-12) and seen[-1] == 0
    seen.clear()
    model.set_params(warm_start=True, max_epochs=2).fit(codes, frames)  # a new schedule over the new call
    assert seen == pytest.approx(schedule(1e-2, 2, 4), rel=1e-12)
    seen.clear()
    model.partial_fit(codes, frames)  # no schedule: the base rate
    assert seen == [1e-2] * 4
    seen.clear()
    regressor(max_epochs=2, batch_size=16, early_stopping=False, callbacks=[spy], lr_schedule="constant").fit(codes, frames)
    assert seen == [2e-3] * 8


# ------------------------------------------------------------- precision
def test_precision_auto_resolves_by_the_device_and_is_recorded(tmp_path):
    frames, codes = movie(20)
    model = regressor(early_stopping=False).fit(codes, frames)
    bf16 = cpu_has_bf16_units()
    assert model.precision_ == ("bfloat16" if bf16 else "float32") and model.channels_last_ is bf16
    exact = regressor(early_stopping=False, precision="float32").fit(codes, frames)
    assert exact.precision_ == "float32" and exact.channels_last_ is False
    model.save(tmp_path / "m.safetensors")
    loaded = HalfUNetRegressor.load(tmp_path / "m.safetensors")
    assert loaded.precision_ == model.precision_ and loaded.stop_reason_ == MAX_EPOCHS
    np.testing.assert_array_equal(loaded.predict(codes), model.predict(codes))


def test_precision_auto_is_float32_channels_last_on_cuda(monkeypatch):
    model = regressor()
    monkeypatch.setattr(model, "_inference_device", lambda: torch.device("cuda"))
    assert model._resolved_precision() == ("float32", True)
    assert model.set_params(precision="bfloat16")._resolved_precision() == ("bfloat16", True)
    assert model.set_params(channels_last=False)._resolved_precision() == ("bfloat16", False)
