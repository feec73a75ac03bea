"""Bad input is refused before training with a message naming the argument; property
tests check that every valid shape, dtype and size round-trips through fit/predict."""


import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.exceptions import NotFittedError
from sklearn.utils._param_validation import InvalidParameterError

from cebra_halfunet import HalfUNetRegressor

FAST = dict(latent_dim=16, max_epochs=3, batch_size=16, random_state=0)


def regressor(**kwargs):
    return HalfUNetRegressor(**(FAST | kwargs))


@pytest.mark.parametrize(
    "make_args, error, match",
    [
        (lambda z, y: (z[:50], y), ValueError, "same number of samples"),
        (lambda z, y: (np.where(np.arange(4) == 0, np.nan, z), y), ValueError, "NaN"),
        (lambda z, y: (z, np.where(np.arange(16) == 3, np.inf, y)), ValueError, "y contains NaN or infinity"),
        (lambda z, y: (z, np.where(np.arange(16) == 3, np.nan, y)), ValueError, "y contains NaN or infinity"),
        (lambda z, y: (z[:, :, None], y), ValueError, "dim 3"),
        (lambda z, y: (z, y[:, :, :, :, None]), ValueError, "rank 5"),
        (lambda z, y: (z[:0], y[:0]), ValueError, "0 sample"),
        (lambda z, y: (z[:1], y[:1]), ValueError, "1 sample"),
        (lambda z, y: (z, y.astype(np.complex64)), TypeError, "real numbers"),
        (lambda z, y: (z, np.array([["a"] * 3] * 60, dtype=object)), TypeError, "real numbers"),
    ],
)
def test_bad_data_raises_before_training(data, make_args, error, match, monkeypatch):
    z, images = data
    trained = []
    monkeypatch.setattr("cebra_halfunet.training.Trainer.fit", lambda *a, **k: trained.append(1))
    with pytest.raises(error, match=match):
        regressor().fit(*make_args(z, images))
    assert not trained


@pytest.mark.parametrize(
    "kwargs, y_form, match",
    [
        ({"output_shape": (8, 15)}, "flat", "does not fit output_shape"),
        ({"output_shape": (8, 16), "output_channels": 2}, "flat", "does not fit output_shape"),
        ({"output_shape": (16, 8)}, "nchw", r"output_shape=\(16, 8\)"),
        ({"output_channels": 3}, "nchw", "output_channels=3"),
        ({"loss": "bce"}, "scaled", r"targets in \[0, 1\]"),
    ],
)
def test_targets_that_do_not_fit_the_parameters(data, kwargs, y_form, match):
    z, images = data
    y = {"flat": images.reshape(60, -1), "nchw": images, "scaled": images * 2}[y_form]
    with pytest.raises(ValueError, match=match):
        regressor(**kwargs).fit(z, y)


@pytest.mark.parametrize(
    "kwargs",
    [{"loss": "huber"}, {"lr": -1.0}, {"lr": 0}, {"batch_size": 0}, {"max_epochs": 0}, {"validation_fraction": 1.0},
     {"latent_dim": 0}, {"n_iter_no_change": 0}, {"tol": -1.0}, {"tol": 1.0}, {"lr_schedule": "cyclic"}, {"early_stopping": "yes"}, {"ema_decay": 1.0}, {"ema_decay": -0.1},
     {"ensemble_size": 0}, {"ensemble_size": 1.5}],
)
def test_invalid_hyper_parameters_raise_at_fit(data, kwargs):
    z, images = data
    model = regressor(**kwargs)  # construction accepts anything, as scikit-learn requires
    with pytest.raises(InvalidParameterError, match=next(iter(kwargs))):
        model.fit(z, images)


@pytest.mark.parametrize("device", ["tpu", "cuda:7", "not a device"])
def test_unknown_or_missing_device(data, device, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    z, images = data
    with pytest.raises(ValueError, match="device"):
        regressor(device=device).fit(z, images)


def test_bad_output_shape_parameter(data):
    z, images = data
    with pytest.raises(ValueError, match="output_shape"):
        regressor(output_shape=(8, 16, 2)).fit(z, images)


def test_predict_checks(data):
    z, images = data
    with pytest.raises(NotFittedError):
        regressor().predict(z)
    model = regressor().fit(z, images)
    with pytest.raises(ValueError, match="features"):
        model.predict(z[:, :3])
    with pytest.raises(ValueError, match="shape"):
        model.score(z, images[:, :, :4])


def test_early_stopping_needs_a_validation_fraction(data):
    z, images = data
    with pytest.raises(ValueError, match="validation_fraction"):
        regressor(validation_fraction=0.0).fit(z, images)
    assert regressor(validation_fraction=0.0, early_stopping=False).fit(z, images).n_epochs_ == 3


def test_fit_does_not_modify_or_keep_views_of_the_callers_arrays(data):
    z, images = data
    z_before, images_before = z.copy(), images.copy()
    model = regressor(loss="l1_ssim").fit(z, images)
    model.predict(z)
    np.testing.assert_array_equal(z, z_before)
    np.testing.assert_array_equal(images, images_before)


# ------------------------------------------------------------ property tests
DTYPES = {"uint8": np.uint8, "int16": np.int16, "bool": np.bool_, "float32": np.float32, "float64": np.float64}


@st.composite
def targets(draw):
    """Random image targets: any size from 1x1, 1-3 channels, every accepted form and dtype."""
    n = draw(st.integers(4, 12))
    height, width, channels = draw(st.integers(1, 9)), draw(st.integers(1, 12)), draw(st.integers(1, 3))
    form = draw(st.sampled_from(["nchw", "nhw", "flat"] if channels == 1 else ["nchw", "flat"]))
    dtype = draw(st.sampled_from(sorted(DTYPES)))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    images = rng.random((n, channels, height, width))
    if dtype == "uint8":
        images = (images * 255).astype(np.uint8)
    elif dtype == "int16":
        images = (images * 1000 - 500).astype(np.int16)
    else:
        images = (images > 0.5) if dtype == "bool" else images.astype(DTYPES[dtype])
    y = {"nchw": images, "nhw": images[:, 0] if channels == 1 else images, "flat": images.reshape(n, -1)}[form]
    kwargs = {"output_shape": (height, width), "output_channels": channels} if form == "flat" else {}
    kwargs = kwargs | ({"target_layout": "channels_first"} if form == "nchw" else {})  # (N, 1, 3, 4) reads both ways
    return rng.normal(size=(n, draw(st.integers(1, 5)))).astype(draw(st.sampled_from([np.float32, np.float64]))), y, kwargs


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(targets())
def test_fit_predict_round_trip_for_any_valid_target(case):
    X, y, kwargs = case
    X_before, y_before = X.copy(), y.copy()
    model = HalfUNetRegressor(latent_dim=8, max_epochs=1, batch_size=4, early_stopping=False, random_state=0, **kwargs)
    prediction = model.fit(X, y).predict(X)
    assert prediction.shape == y.shape
    expected_dtype = y.dtype if y.dtype in (np.uint8, np.float32, np.float64) else np.float32
    assert prediction.dtype == expected_dtype
    assert np.isfinite(prediction.astype(np.float64)).all()
    np.testing.assert_array_equal(X, X_before)
    np.testing.assert_array_equal(y, y_before)
    np.testing.assert_array_equal(model.predict(torch.from_numpy(X)), prediction)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(0, 4), fraction=st.sampled_from([0.0, 0.1, 0.5, 0.9]))
def test_a_validation_split_needs_a_sample_on_each_side(n, fraction):
    rng = np.random.default_rng(n)
    X, y = rng.normal(size=(n, 2)), rng.random((n, 3, 5))
    model = HalfUNetRegressor(validation_fraction=fraction, latent_dim=8, max_epochs=2, random_state=0)
    if n >= 2 and fraction > 0:  # the frame split, or a split over samples with a warning
        assert model.fit(X, y).predict(X).shape == y.shape
    else:
        with pytest.raises(ValueError, match="sample"):
            model.fit(X, y)
