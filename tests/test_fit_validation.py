"""The leak-free frame split through ``fit`` on repeated stimuli, ``frame_ids`` (and the
deprecated ``groups``), ``X_val``/``y_val``, and the resolved precision. How long a fit
trains is tested in test_stopping.py."""

import warnings

import numpy as np
import pytest
import sklearn
import torch
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cebra_halfunet import HalfUNetRegressor
from cebra_halfunet.splits import default_gap
from cebra_halfunet.stopping import MAX_EPOCHS
from cebra_halfunet.training import Trainer, cpu_has_bf16_units

FAST = dict(latent_dim=16, max_epochs=2, batch_size=32, ensemble_size=1, random_state=0)  # a pilot epoch, a final one


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
    for offset in range(1, default_gap(len(np.unique(shown[held_out]))) + 1):
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
    in_memory = regressor().fit(codes[shown], y)
    model = regressor().fit(codes[shown], stored)
    np.testing.assert_array_equal(model.validation_mask_, in_memory.validation_mask_)
    np.testing.assert_array_equal(model.excluded_mask_, in_memory.excluded_mask_)
    check_leak_free(shown, model.validation_mask_, model.excluded_mask_)


def noisy_repeats():
    frames, codes = movie()
    shown = LAYOUTS["repeat-major"]
    rng = np.random.default_rng(2)
    y = frames[shown] + 0.01 * rng.random((len(shown), 8, 16)).astype(np.float32)  # no two copies bit-identical
    return codes[shown], y, shown


def test_noisy_repeats_are_held_out_together_through_frame_ids():
    X, y, shown = noisy_repeats()
    by_hash = regressor().fit(X, y)
    trained = ~(by_hash.validation_mask_ | by_hash.excluded_mask_)
    assert set(shown[by_hash.validation_mask_]) & set(shown[trained])  # by hash, noisy copies of held-out frames train
    model = regressor().fit(X, y, frame_ids=shown)
    check_leak_free(shown, model.validation_mask_, model.excluded_mask_)
    assert "frames given by frame_ids" in model.validation_reason_
    with pytest.raises(ValueError, match="frame_ids must have one entry per sample"):
        regressor().fit(X, y, frame_ids=shown[:-1])


def test_groups_still_work_for_a_release_with_a_future_warning():
    X, y, shown = noisy_repeats()
    expected = regressor().fit(X, y, frame_ids=shown).validation_mask_
    with pytest.warns(FutureWarning, match="renamed frame_ids.*pass frame_ids="):
        model = regressor().fit(X, y, groups=shown)
    np.testing.assert_array_equal(model.validation_mask_, expected)
    assert "frames given by groups" in model.validation_reason_
    with pytest.raises(ValueError, match="frame_ids only"):
        regressor().fit(X, y, frame_ids=shown, groups=shown)


def test_frame_ids_reach_the_estimator_in_a_pipeline_and_by_metadata_routing():
    X, y, shown = noisy_repeats()
    expected = regressor().fit(X, y, frame_ids=shown).validation_mask_
    pipeline = make_pipeline(StandardScaler(), regressor()).fit(X, y, halfunetregressor__frame_ids=shown)
    np.testing.assert_array_equal(pipeline[-1].validation_mask_, expected)
    with sklearn.config_context(enable_metadata_routing=True):
        routed = make_pipeline(StandardScaler(), regressor().set_fit_request(frame_ids=True)).fit(X, y, frame_ids=shown)
    np.testing.assert_array_equal(routed[-1].validation_mask_, expected)


def test_a_search_gives_its_groups_to_the_splitter_and_frame_ids_to_the_decoder():
    """Repeat ids as a search's groups, frame numbers as frame_ids: each goes where it belongs."""
    X, y, shown = noisy_repeats()  # 4 repeats of 40 frames
    repeat = np.repeat(np.arange(4), 40)
    with sklearn.config_context(enable_metadata_routing=True):
        decoder = regressor().set_fit_request(frame_ids=True)
        search = GridSearchCV(decoder, {"lr": [2e-3]}, cv=GroupKFold(2)).fit(X, y, groups=repeat, frame_ids=shown)
    refitted = search.best_estimator_
    assert "frames given by frame_ids" in refitted.validation_reason_
    # a tenth of the 40 frames held out with their copies and a gap: most samples train
    assert (refitted.validation_mask_ | refitted.excluded_mask_).sum() < len(X) / 3


def test_ids_that_are_not_frames_warn_with_how_many_samples_they_leave_out():
    frames, codes = movie(20)
    shown = np.tile(np.arange(20), 5)  # a movie of 20 frames shown 5 times
    X = codes[shown] + 0.1 * np.random.default_rng(1).normal(size=(100, 4)).astype(np.float32)
    repeat = np.repeat(np.arange(5), 20)  # repeat ids as frame ids: the last repeat held out, the one before in the gap
    with pytest.warns(UserWarning, match=r"leaves 40 of 100 samples out of training until its last phase"):
        model = regressor().fit(X, frames[shown], frame_ids=repeat)
    assert (model.validation_mask_ | model.excluded_mask_).sum() == 40
    frames, codes = movie(60)
    shown = np.tile(np.arange(60), 5)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "The validation split leaves")  # frame ids: 6 frames and a gap of 6, a fifth
        model = regressor().fit(codes[shown], frames[shown], frame_ids=shown)
    assert (model.validation_mask_ | model.excluded_mask_).sum() == 60


def test_distinct_frames_give_stretches_of_samples_with_a_gap():
    frames, codes = movie(80)
    model = regressor().fit(codes, frames)
    held_out, excluded = model.validation_mask_, model.excluded_mask_
    # one stretch (8 frames: at least 2 * gap, fewer than 4 * gap), at the end: a gap before it
    gap = default_gap(8)
    assert gap == 4 and held_out.sum() == 8 and held_out[-8:].all() and excluded[-8 - gap : -8].all() and excluded.sum() == gap
    check_leak_free(np.arange(80), held_out, excluded)


def test_the_decoder_that_trains_every_frame_starts_from_their_mean_image():
    frames, codes = movie(80)
    model = regressor().fit(codes, frames)
    assert model.validation_mask_.any()  # a pilot validated on held-out frames: it normalised by the others
    np.testing.assert_allclose(model.module_.offset[0, 0].numpy(), frames.mean(axis=0), rtol=1e-5, atol=1e-6)


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
    last = model.history_[-1]["valid_loss"]  # the kept weights: the end of the last phase
    assert model.evaluate_loss(X_val, y_val) == pytest.approx(last, rel=1e-6)


def test_validation_targets_may_be_another_float_dtype():
    frames, codes = movie(20)
    model = regressor().fit(codes, frames, X_val=codes[:5], y_val=frames[:5].astype(np.float64))
    assert model.validation_reason_ == "X_val and y_val as given (5 samples)"
    with pytest.raises(ValueError, match="y_val must have the form of y: dtype uint8 instead of float32"):  # read as 0-255
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
        ({"X_val": "short", "y_val": "short", "frame_ids": "groups"}, {}, "frame_ids choose a validation split of X"),
        ({"X_val": "short", "y_val": "flat"}, {}, "y_val must have the form of y"),
        ({"X_val": "with NaN", "y_val": "short"}, {}, "X_val is not valid.*NaN"),
        ({"X_val": "narrow", "y_val": "short"}, {}, "X_val is not valid.*features"),
        ({"X_val": "scalar", "y_val": "short"}, {}, "X_val is not valid"),
        ({"frame_ids": "with NaN"}, {}, "frame_ids must name the frame of every sample, got 1 missing"),
        ({"frame_ids": "with None"}, {}, "frame_ids must name the frame of every sample, got 1 missing"),
        ({"frame_ids": "column"}, {}, r"frame_ids must have one entry per sample of X \(20\), got shape \(20, 1\)"),
    ],
)
def test_bad_validation_data_are_refused_before_training(kwargs, params, message, monkeypatch):
    frames, codes = movie(20)
    values = {
        "same length": codes, "short": codes[:5], "flat": frames[:5].reshape(5, -1), "groups": np.arange(20),
        "with NaN": np.r_[np.nan, np.arange(1.0, 20.0)], "narrow": codes[:5, :3], "column": np.arange(20)[:, None],
        "with None": np.array([None] + list(range(1, 20)), dtype=object), "scalar": 3.0,
    }
    values["with NaN"] = values["with NaN"] if "frame_ids" in kwargs else np.where(np.arange(5)[:, None] == 0, np.nan, codes[:5])
    monkeypatch.setattr(Trainer, "fit", lambda *a, **k: pytest.fail("trained"))
    fit_kwargs = {name: values[value] for name, value in kwargs.items()}
    if "X_val" in kwargs and kwargs["X_val"] == "same length":
        fit_kwargs["y_val"] = frames
    with pytest.raises(ValueError, match=message):
        regressor(**params).fit(codes, frames, **fit_kwargs)


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


@pytest.mark.parametrize("every", [3, 6])
def test_a_gray_screen_between_stimuli_stays_in_training_and_does_not_spread_the_gap(every):
    """A blank that recurs between stimuli (every 3rd or 6th frame, in every repeat) is shown in
    many separate runs: it stays in training, and the split of the other frames is as usual."""
    frames, codes = movie(60)
    shown = np.tile(np.arange(60), 5)
    gray = shown % every == 0
    y = np.where(gray[:, None, None], np.float32(0.5), frames[shown])
    X = codes[shown] + 0.1 * np.random.default_rng(1).normal(size=(300, 4)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "No frame-level validation split|The validation split leaves")
        model = regressor().fit(X, y)
    held_out, excluded = model.validation_mask_, model.excluded_mask_
    train = ~(held_out | excluded)
    assert not (held_out | excluded)[gray].any() and held_out.any()
    assert not set(shown[held_out]) & set(shown[train & ~gray])  # no frame in both parts
    for offset in range(1, default_gap(len(np.unique(shown[held_out]))) + 1):  # no training frame near a held-out one, but across a gray screen
        for start in np.flatnonzero(held_out):
            for neighbour in (start - offset, start + offset):
                between = gray[min(start, neighbour) : max(start, neighbour) + 1]
                if 0 <= neighbour < 300 and not between.any():
                    assert not train[neighbour], (start, neighbour)
    assert "recurring between others" in model.validation_reason_
    assert (held_out | excluded).sum() < 300 / 3
