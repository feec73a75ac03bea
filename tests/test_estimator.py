import pickle

import joblib
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score

from cebra_halfunet import HalfUNetRegressor, correlation_scorer, psnr_scorer, ssim_scorer
from cebra_halfunet.metrics import pooled_r2
from cebra_halfunet.splits import frame_validation_split
from cebra_halfunet.splits import VALIDATION_STRETCHES, validation_mask
from cebra_halfunet.stopping import decay_epochs

from .conftest import make_images

FAST = dict(latent_dim=16, max_epochs=3, batch_size=16, random_state=0)


def regressor(**kwargs):
    return HalfUNetRegressor(**(FAST | kwargs))


# ---------------------------------------------------------------- target forms
@pytest.mark.parametrize(
    "form, kwargs, channels",
    [
        ("nchw", {}, 3),
        ("nhw", {}, 1),
        ("flat", {"output_shape": (8, 16)}, 3),
        ("flat", {"output_shape": (8, 16), "output_channels": 3}, 3),
    ],
)
def test_each_target_form_round_trips_through_predict(form, kwargs, channels):
    z, images = make_images(channels=channels)
    y = {"nchw": images, "nhw": images[:, 0], "flat": images.reshape(len(images), -1)}[form]
    model = regressor(**kwargs).fit(z, y)
    prediction = model.predict(z[:7])
    assert prediction.shape == (7, *y.shape[1:])
    assert prediction.dtype == np.float32
    assert model.target_format_.channels == channels and model.target_format_.shape == (8, 16)
    assert model.module_.decoder.output_shape == (8, 16)


@pytest.mark.parametrize("dtype, expected", [(np.float64, np.float64), (np.int64, np.float32), (bool, np.float32)])
def test_dtype_family_of_predictions(data, dtype, expected):
    z, images = data
    y = (images > 0.5).astype(dtype)
    prediction = regressor().fit(z, y).predict(z)
    assert prediction.dtype == expected


def test_uint8_targets_are_0_255_images_and_predicted_as_uint8(data):
    z, images = data
    frames = np.round(images[:, 0] * 255).astype(np.uint8)
    model = regressor(max_epochs=10).fit(z, frames)
    prediction = model.predict(z)
    assert prediction.dtype == np.uint8 and prediction.shape == frames.shape
    assert model.data_range_ == 255
    # Learned in [0, 1] units: the mean image of every frame (the decoder trains them all) is the starting offset.
    np.testing.assert_allclose(model.module_.offset.numpy()[0, 0] * 255, frames.mean(0), atol=1e-3)
    # Same fit on float frames in [0, 1] gives the same images up to rounding.
    float_prediction = regressor(max_epochs=10).fit(z, frames / 255.0).predict(z)
    assert np.abs(prediction.astype(float) - float_prediction * 255).max() <= 1.0


def test_inputs_of_any_numeric_kind(data, tmp_path):
    z, images = data
    reference = regressor().fit(z, images).predict(z)
    as_tensor = regressor().fit(torch.from_numpy(z), torch.from_numpy(images)).predict(torch.from_numpy(z))
    np.testing.assert_array_equal(as_tensor, reference)
    path = tmp_path / "frames.npy"
    np.save(path, images)
    memmap = np.load(path, mmap_mode="r")
    np.testing.assert_array_equal(regressor().fit(z.astype(np.float64), memmap).predict(z), reference)
    assert regressor().fit((z * 10).astype(np.int32), images).predict(z).shape == images.shape


def test_caller_arrays_are_not_modified(data):
    z, images = data
    z_copy, images_copy = z.copy(), images.copy()
    regressor().fit(z, images).predict(z)
    np.testing.assert_array_equal(z, z_copy)
    np.testing.assert_array_equal(images, images_copy)


def test_predict_is_batched_and_independent_of_batch_size(data):
    z, images = data
    model = regressor().fit(z, images)
    full = model.predict(z)
    model.set_params(batch_size=7)
    np.testing.assert_allclose(model.predict(z), full, rtol=1e-5, atol=1e-6)


def test_bce_predicts_probabilities(data):
    z, images = data
    binary = (images > 0.5).astype(np.float32)
    prediction = regressor(loss="bce", max_epochs=5).fit(z, binary).predict(z)
    assert 0 <= prediction.min() and prediction.max() <= 1


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["mse", "l1", "ssim", "l1_ssim"])
def test_every_loss_learns(loss):
    z, images = make_images(n=80)
    # the configuration this test was tuned with (float32, a constant rate)
    before = dict(lr=3e-3, ema_decay=0, lr_schedule="constant", precision="float32")
    model = regressor(loss=loss, max_epochs=40, early_stopping=False, **before).fit(z, images)
    first, last = model.history_[0]["train_loss"], model.history_[-1]["train_loss"]
    assert last < 0.7 * first
    assert ssim_scorer(model, z, images) > 0.5
    if loss in ("mse", "l1"):  # SSIM leaves brightness and contrast partly free, R² need not follow
        assert model.score(z, images) > 0.3


# ------------------------------------------------------ training loop behaviour
def test_the_stop_rule_fires_n_iter_no_change_evaluations_after_the_best():
    z, images = make_images(n=60)
    split = frame_validation_split(np.arange(60), 0.1)  # the fit's split of 60 distinct frames
    held_out = split.held_out
    noise = np.random.default_rng(1).random(images.shape).astype(np.float32)
    # Training rows learnable, validation rows pure noise: validation loss rises with fitting.
    y = np.where(held_out[:, None, None, None], noise, images)
    model = regressor(max_epochs=30, n_iter_no_change=3, tol=0.0, lr=3e-3, lr_schedule="constant", scoring="loss").fit(z, y)
    np.testing.assert_array_equal(model.validation_mask_, held_out)
    pilot = [record for record in model.history_ if record["phase"] == "pilot"]
    assert model.best_epoch_ == min(pilot, key=lambda record: record["valid_loss"])["epoch"]
    assert len(pilot) == model.best_epoch_ + 3 and model.stop_reason_ == "stop rule"
    assert model.n_epochs_ == len(pilot) + model.best_epoch_ + decay_epochs(model.best_epoch_) < 30


@settings(max_examples=200, deadline=None)
@given(n=st.integers(2, 400), data=st.data())
def test_validation_is_stretches_spread_over_the_samples(n, data):
    n_valid = data.draw(st.integers(1, n - 1))
    mask = validation_mask(n, n_valid)
    assert mask.shape == (n,) and mask.dtype == bool and mask.sum() == n_valid and mask[-1]
    edges = np.flatnonzero(np.diff(np.r_[False, mask, False].astype(int)))
    run_lengths = edges[1::2] - edges[::2]
    n_runs, n_train = min(VALIDATION_STRETCHES, n_valid), n - n_valid
    if n_train >= n_runs:  # one stretch per part, parts as equal as whole samples allow
        assert len(run_lengths) == n_runs
        assert run_lengths.max() - run_lengths.min() <= 1
        gaps = np.diff(np.r_[0, edges[1::2]]) - run_lengths
        assert gaps.min() >= 1 and gaps.max() - gaps.min() <= 1
    else:  # too few training samples to separate every stretch
        assert len(run_lengths) <= n_runs


def test_history_and_counts(data):
    z, images = data
    model = regressor(max_epochs=4, n_iter_no_change=10).fit(z, images)
    assert [record["epoch"] for record in model.history_] == [1, 2, 3, 4]
    assert [record["phase"] for record in model.history_] == ["pilot", "pilot", "stable", "decay"]  # the pilot: half the cap
    assert all(record["valid_loss"] is not None and record["duration_s"] > 0 for record in model.history_[:2])
    assert model.history_[-1]["valid_loss"] is None and model.history_[-1]["held_out_loss"] > 0
    no_validation = regressor(max_epochs=2, early_stopping=False).fit(z, images)
    assert [record["valid_loss"] for record in no_validation.history_] == [None, None]
    assert no_validation.best_epoch_ is None


def test_warm_start_and_partial_fit_continue_training(data):
    z, images = data
    model = regressor(max_epochs=2, early_stopping=False, warm_start=True).fit(z, images)
    first_weights = {k: v.clone() for k, v in model.module_.state_dict().items()}
    model.fit(z, images)
    assert model.n_epochs_ == 4 and [r["epoch"] for r in model.history_] == [1, 2, 3, 4]
    assert any(not torch.equal(first_weights[k], v) for k, v in model.module_.state_dict().items())
    model.partial_fit(z, images)
    assert model.n_epochs_ == 5
    # Without weight averaging (each call averages its own steps), continuing equals
    # training straight through with the same seed at a constant rate (a warm start restarts
    # the schedule): same batches, same optimizer moments.
    constant = dict(early_stopping=False, ema_decay=0, lr_schedule="constant")
    pieces = regressor(max_epochs=2, warm_start=True, **constant).fit(z, images)
    pieces.fit(z, images).partial_fit(z, images)
    straight = regressor(max_epochs=5, **constant).fit(z, images)
    assert [r["epoch"] for r in straight.history_] == [r["epoch"] for r in pieces.history_] == [1, 2, 3, 4, 5]
    np.testing.assert_array_equal(pieces.predict(z), straight.predict(z))
    cold = regressor(max_epochs=2, early_stopping=False).fit(z, images)
    cold.fit(z, images)
    assert cold.n_epochs_ == 2, "without warm_start, fit starts again"
    with pytest.raises(ValueError, match="form of the targets the decoder was fitted on: rank 3 instead of 4"):
        model.partial_fit(z, images[:, 0])


def test_partial_fit_from_scratch(data):
    z, images = data
    model = regressor().partial_fit(z, images)
    assert model.n_epochs_ == 1 and model.predict(z).shape == images.shape


def test_same_random_state_same_predictions(data):
    z, images = data
    a = regressor(random_state=3).fit(z, images).predict(z)
    b = regressor(random_state=3).fit(z, images).predict(z)
    c = regressor(random_state=4).fit(z, images).predict(z)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_fit_leaves_global_torch_rng_alone(data):
    z, images = data
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    regressor().fit(z, images)
    torch.testing.assert_close(torch.rand(3), expected)


def test_verbose_shows_progress(data, capsys):
    z, images = data
    regressor(verbose=True, max_epochs=2).fit(z, images)
    assert "train_loss" in capsys.readouterr().out


@pytest.mark.slow
def test_large_body_through_the_estimator(data):
    z, images = data
    model = regressor(latent_dim=1024, max_epochs=1).fit(z, images)
    assert {type(member.body).__name__ for member in model.module_.decoder.members} == {"ComplexLargeUNetDecoderOnly"}
    assert model.predict(z).shape == images.shape


def test_default_is_an_ensemble_of_three_that_predicts_their_mean(data):
    z, images = data
    model = regressor(precision="float32").fit(z, images)  # the members are run below in float32
    members = model.module_.decoder.members
    assert len(members) == 3
    weights = [torch.cat([p.flatten() for p in member.parameters()]) for member in members]
    assert not torch.equal(weights[0], weights[1]) and not torch.equal(weights[1], weights[2])
    with torch.no_grad():
        each = [model.module_.offset + model.module_.scale * member(torch.from_numpy(z)) for member in members]
    np.testing.assert_allclose(model.predict(z), torch.stack(each).mean(dim=0).numpy(), atol=1e-6)
    with torch.no_grad():  # the fitted module is left in eval mode: it returns the mean too
        np.testing.assert_allclose(model.module_(torch.from_numpy(z)).numpy(), model.predict(z), atol=1e-6)


def test_one_member_is_a_plain_decoder(data):
    z, images = data
    model = regressor(ensemble_size=1).fit(z, images)
    assert type(model.module_.decoder).__name__ == "HalfUNetDecoder"
    assert model.predict(z).shape == images.shape


# ---------------------------------------------------------- scoring and search
def test_score_is_pooled_r2(data):
    z, images = data
    model = regressor().fit(z, images)
    prediction = model.predict(z)
    from sklearn.metrics import r2_score

    expected = r2_score(images.reshape(60, -1), prediction.reshape(60, -1), multioutput="variance_weighted")
    assert model.score(z, images) == pytest.approx(expected, rel=1e-6)


def test_pooled_r2_ignores_constant_background():
    rng = np.random.default_rng(0)
    truth = np.zeros((20, 1, 4, 4))
    truth[:, 0, 0, 0] = rng.normal(size=20)
    truth[:, 0, 0, 0] -= truth[:, 0, 0, 0].mean()
    prediction = truth.copy()
    prediction[:, 0, 0, 0] *= 0.5
    prediction[:, 0, 1:, 1:] = 1e-9  # tiny error on never-changing pixels
    assert pooled_r2(truth, prediction) == pytest.approx(0.75, abs=1e-6)


@pytest.mark.parametrize("form", ["nchw", "flat"])
def test_image_scorers(data, form):
    z, images = data
    y = images if form == "nchw" else images.reshape(60, -1)
    model = regressor(output_shape=(8, 16) if form == "flat" else None).fit(z, y)
    ssim = ssim_scorer(model, z, y)
    psnr = psnr_scorer(model, z, y)
    corr = correlation_scorer(model, z, y)
    assert -1 <= ssim <= 1 and np.isfinite(psnr) and -1 <= corr <= 1
    perfect = type("Perfect", (), {"predict": lambda self, X: y, "steps": [("decoder", model)]})()
    assert ssim_scorer(perfect, z, y) == pytest.approx(1.0)
    assert correlation_scorer(perfect, z, y) == pytest.approx(1.0)


def test_ssim_matches_scikit_image():
    from skimage.metrics import structural_similarity as skimage_ssim

    from cebra_halfunet.metrics import structural_similarity

    rng = np.random.default_rng(0)
    a = rng.random((3, 1, 24, 40))
    b = np.clip(a + 0.2 * rng.normal(size=a.shape), 0, 1)
    expected = np.mean(
        [
            skimage_ssim(x[0], y[0], data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
            for x, y in zip(a, b)
        ]
    )
    assert structural_similarity(a, b, data_range=1.0) == pytest.approx(expected, abs=1e-6)


@pytest.mark.slow
def test_grid_search_over_latent_dim_and_loss(data):
    z, images = data
    search = GridSearchCV(
        regressor(max_epochs=2),
        {"latent_dim": [8, 1024], "loss": ["mse", "l1_ssim"]},
        cv=KFold(2),
        scoring={"ssim": ssim_scorer, "psnr": psnr_scorer},
        refit="ssim",
        error_score="raise",
    ).fit(z, images)
    assert len(search.cv_results_["params"]) == 4
    assert np.isfinite(search.cv_results_["mean_test_ssim"]).all()
    assert search.best_estimator_.predict(z[:3]).shape == (3, 1, 8, 16)


def test_cross_val_score_with_default_score(data):
    z, images = data
    scores = cross_val_score(regressor(), z, images, cv=KFold(3), error_score="raise")
    assert scores.shape == (3,) and np.isfinite(scores).all()


# ---------------------------------------------------------------- persistence
def test_clone_and_set_params_keep_parameters_verbatim():
    model = HalfUNetRegressor(output_shape=[8, 16], latent_dim=None, device="cpu")
    assert clone(model).get_params()["output_shape"] == [8, 16]
    assert model.set_params(loss="l1").loss == "l1"


def test_joblib_round_trip_gives_identical_predictions(data, tmp_path):
    z, images = data
    model = regressor().fit(z, images)
    joblib.dump(model, tmp_path / "decoder.joblib")
    loaded = joblib.load(tmp_path / "decoder.joblib")
    np.testing.assert_array_equal(loaded.predict(z), model.predict(z))
    loaded.partial_fit(z, images)  # optimizer state survived too
    assert loaded.n_epochs_ == model.n_epochs_ + 1


def test_unfitted_estimator_pickles():
    model = pickle.loads(pickle.dumps(regressor()))
    assert model.get_params() == regressor().get_params()


def test_fitted_state_holds_no_device_tensors(data):
    """What is pickled lives on the CPU, so a decoder fitted on CUDA loads without CUDA."""
    z, images = data
    model = regressor().fit(z, images)
    tensors = list(model.module_.state_dict().values())
    tensors += [t for state in model.optimizer_state_["state"].values() for t in state.values() if torch.is_tensor(t)]
    assert tensors and all(t.device.type == "cpu" for t in tensors)


def test_missing_cuda_falls_back_to_cpu_for_predict(data, monkeypatch):
    z, images = data
    model = regressor().fit(z, images)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model.set_params(device="cuda")
    with pytest.warns(RuntimeWarning, match="CPU instead") as caught:
        assert model.predict(z).shape == images.shape
    assert len(caught) == 1  # one call, one warning (not one per setting resolved)


def test_embedding_noise_is_seeded_and_regularises(data):
    z, images = data
    clean = regressor(early_stopping=False).fit(z, images)
    noisy = regressor(early_stopping=False, embedding_noise=0.5).fit(z, images)
    again = regressor(early_stopping=False, embedding_noise=0.5).fit(z, images)
    np.testing.assert_array_equal(noisy.predict(z), again.predict(z))
    assert not np.array_equal(noisy.predict(z), clean.predict(z))
    # noise makes the training fit looser: the clean decoder fits its training data better
    assert clean.score(z, images) > noisy.score(z, images)


def test_weight_average_is_the_normalised_exponential_average_of_the_steps():
    from cebra_halfunet.training import WeightAverage

    model = torch.nn.Linear(2, 1)
    average = WeightAverage(model, decay=0.5)
    steps = [model.weight.detach() + shift for shift in (1.0, 2.0, 4.0)]
    for weights in steps:
        with torch.no_grad():
            model.weight.copy_(weights)
        average.update(model)
    # weights 1/4, 2/4 and 4/4, normalised; the initial weights do not count
    expected = (steps[0] + 2 * steps[1] + 4 * steps[2]) / 7
    torch.testing.assert_close(average.module.weight, expected)
    assert average.steps == 3 and not average.module.weight.requires_grad


def test_predictions_use_the_average_of_the_weights_of_every_step(data, monkeypatch):
    z, images = data
    steps = []  # the raw weights before the first step and after every step
    original_step = torch.optim.AdamW.step

    def snapshot(optimizer):
        return [p.detach().clone() for group in optimizer.param_groups for p in group["params"]]

    def recording_step(optimizer, *args, **kwargs):
        if not steps:
            steps.append(snapshot(optimizer))
        result = original_step(optimizer, *args, **kwargs)
        steps.append(snapshot(optimizer))
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    raw = regressor(early_stopping=False, ema_decay=0).fit(z, images)
    trajectory, steps = steps, []
    averaged = regressor(early_stopping=False, ema_decay=0.9).fit(z, images)
    assert len(steps) == len(trajectory) > 10
    for before, after in zip(trajectory, steps):  # the average does not change the training itself
        for a, b in zip(before, after):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    n = len(trajectory) - 1  # the average of the weights after every step, step i weighted 0.9 ** (n - i)
    coefficients = 0.9 ** torch.arange(n - 1, -1, -1, dtype=torch.float64)
    coefficients /= coefficients.sum()
    expected = [sum(c * w[k].double() for c, w in zip(coefficients, trajectory[1:])).float() for k in range(len(trajectory[0]))]
    for e, p in zip(expected, averaged.module_.parameters()):
        torch.testing.assert_close(p, e, rtol=1e-5, atol=1e-6)
    assert not all(torch.equal(p, r) for p, r in zip(averaged.module_.parameters(), raw.module_.parameters()))
    torch.testing.assert_close(list(raw.module_.parameters())[0], trajectory[-1][0], rtol=0, atol=0)
