"""A fit that raises leaves a fitted estimator exactly as it was; what it raises is clear."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from cebra_halfunet import HalfUNetRegressor
from cebra_halfunet.callbacks import Callback

FAST = dict(latent_dim=16, max_epochs=3, batch_size=16, random_state=0)


def assert_same(before, after, path="vars"):
    """Deep equality of fitted state: modules by their weights, arrays and tensors by value."""
    assert type(before) is type(after), path
    if isinstance(before, nn.Module):
        assert_same(before.state_dict(), after.state_dict(), path + ".state_dict()")
        assert before.training == after.training, path
    elif isinstance(before, dict):
        assert set(before) == set(after), f"{path}: keys {set(before) ^ set(after)}"
        for key in before:
            assert_same(before[key], after[key], f"{path}[{key!r}]")
    elif isinstance(before, (list, tuple)):
        assert len(before) == len(after), path
        for index, (a, b) in enumerate(zip(before, after)):
            assert_same(a, b, f"{path}[{index}]")
    elif isinstance(before, torch.Tensor):
        assert torch.equal(before, after), path
    elif isinstance(before, np.ndarray):
        np.testing.assert_array_equal(before, after, err_msg=path)
    elif isinstance(before, Callback):
        assert_same(vars(before), vars(after), path + ".__dict__")
    else:
        assert before == after, path


class FailAtEpoch(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, run, record):
        if record["epoch"] - run.epochs.start + 1 == self.epoch:
            raise RuntimeError("a callback failed")


@pytest.fixture
def fitted(data):
    z, images = data
    return HalfUNetRegressor(**FAST).fit(z, images)


@pytest.mark.parametrize(
    "change, call, error",
    [
        ({}, lambda m, z, y: m.fit(np.c_[z, z], y[:-1]), "same number of samples"),
        ({"warm_start": True}, lambda m, z, y: m.fit(np.c_[z, z], y), "features"),
        ({"callbacks": [FailAtEpoch(2)]}, lambda m, z, y: m.fit(z, y), "a callback failed"),
        ({"callbacks": [FailAtEpoch(2)], "warm_start": True}, lambda m, z, y: m.fit(z, y), "a callback failed"),
        ({"callbacks": [FailAtEpoch(1)]}, lambda m, z, y: m.partial_fit(z, y), "a callback failed"),
        ({"lr": 1e6, "latent_dim": 512}, lambda m, z, y: m.fit(z, y), "Training diverged"),
    ],
)
def test_a_fit_that_raises_leaves_the_fitted_estimator_as_it_was(data, fitted, change, call, error):
    z, images = data
    before = copy.deepcopy(vars(fitted.set_params(**change)))
    predictions = fitted.predict(z)
    with pytest.raises((ValueError, RuntimeError), match=error):
        call(fitted, z, images)
    assert_same(before, vars(fitted))
    np.testing.assert_array_equal(fitted.predict(z), predictions)


def test_a_first_fit_that_raises_leaves_an_unfitted_estimator(data):
    z, images = data
    model = HalfUNetRegressor(**FAST, callbacks=[FailAtEpoch(1)])
    before = copy.deepcopy(vars(model))
    with pytest.raises(RuntimeError, match="a callback failed"):
        model.fit(z, images)
    assert_same(before, vars(model))
    assert not any(name.endswith("_") for name in vars(model))


# ------------------------------------------------ refused before training, naming the argument
def no_training(monkeypatch):
    monkeypatch.setattr("cebra_halfunet.training.Trainer.fit", lambda *a, **k: pytest.fail("trained"))


class Uncopyable(Callback):
    def __deepcopy__(self, memo):
        raise RuntimeError("cannot be copied")


@pytest.mark.parametrize(
    "params, make_y, error, match",
    [
        ({"checkpoint_path": "missing-folder/run.safetensors"}, None, ValueError, "checkpoint_path=.*its folder .* does not exist"),
        ({"checkpoint_path": "."}, None, ValueError, "checkpoint_path='.' is a folder"),
        ({"callbacks": [object()]}, None, TypeError, "callbacks must be cebra_halfunet.callbacks.Callback objects, got object"),
        ({"callbacks": [Uncopyable()]}, None, TypeError, "callbacks must be copyable"),
        ({}, lambda y: y.astype(np.longdouble), TypeError, "y must be float64 or narrower"),
        ({"X": "float128"}, None, TypeError, "X must be float64 or narrower"),
        ({}, lambda y: y.astype(np.float64) * 1e-50, ValueError, "y holds values in .* float32 .* rescale y"),
        ({}, lambda y: y.astype(np.float64) * 1e-300, ValueError, "y holds values in .* float32 .* rescale y"),
        ({}, lambda y: y[0, 0, 0, 0], ValueError, "y must be an array with one entry per sample, got a scalar"),
        ({}, lambda y: [[1.0, 2.0]] * 30 + [[1.0]] * 30, ValueError, "y must be an array of equal-sized samples"),
    ],
)
def test_bad_input_is_refused_before_training_naming_the_argument(data, monkeypatch, params, make_y, error, match):
    z, images = data
    no_training(monkeypatch)
    if params.pop("X", None) == "float128":
        z = z.astype(np.longdouble)
    with pytest.raises(error, match=match):
        HalfUNetRegressor(**FAST, **params).fit(z, images if make_y is None else make_y(images))


def test_sparse_targets_and_huge_or_ragged_embeddings_are_refused(data, monkeypatch):
    scipy_sparse = pytest.importorskip("scipy.sparse")
    z, images = data
    no_training(monkeypatch)
    with pytest.raises(TypeError, match="y must be a dense array, got a sparse csr_matrix"):
        HalfUNetRegressor(**FAST).fit(z, scipy_sparse.csr_matrix(images.reshape(60, -1)))
    with pytest.raises(ValueError, match=r"X holds values up to 3.11e\+30: beyond 1e\+18.*Standardise X"):
        HalfUNetRegressor(**FAST).fit(z * 1e30, images)
    with pytest.raises(ValueError, match="setting an array element with a sequence|inhomogeneous"):
        HalfUNetRegressor(**FAST).fit([[1.0, 2.0]] * 30 + [[1.0]] * 30, images)


def test_views_with_reversed_rows_and_tensors_that_require_grad_are_read_as_they_are(data, fitted):
    z, images = data
    reference = HalfUNetRegressor(**FAST).fit(z[::-1].copy(), images[::-1].copy())
    reversed_view = HalfUNetRegressor(**FAST).fit(z[::-1], images[::-1])
    np.testing.assert_array_equal(reversed_view.predict(z[::-1]), reference.predict(z[::-1].copy()))
    with_grad = torch.from_numpy(z).requires_grad_(True)
    np.testing.assert_array_equal(fitted.predict(with_grad), fitted.predict(z))
    assert HalfUNetRegressor(**FAST).fit(with_grad, images).n_features_in_ == z.shape[1]


# -------------------------------------------------------------- scores and metrics
def test_score_and_scorers_refuse_what_r2_score_refuses(data, fitted):
    from cebra_halfunet import ssim_scorer

    z, images = data
    nan_images = images.copy()
    nan_images[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="y contains NaN or infinity"):
        fitted.score(z, nan_images)
    with pytest.raises(ValueError, match="y contains NaN or infinity"):
        ssim_scorer(fitted, z, nan_images)
    with pytest.raises(ValueError, match="X and y must have the same number of samples, got 59 and 60"):
        fitted.score(z[:-1], images)
    with pytest.raises(ValueError, match=r"sample_weight must have one weight per sample \(60\)"):
        fitted.score(z, images, sample_weight=np.ones(3))
    with pytest.raises(ValueError, match="sample_weight must be finite and non-negative, with at least one weight above 0"):
        fitted.score(z, images, sample_weight=np.zeros(60))
    assert fitted.score(z, images, sample_weight=np.ones(60)) == pytest.approx(fitted.score(z, images))


def test_metrics_refuse_non_finite_empty_or_unscaled_input(data):
    from cebra_halfunet import metrics

    _, images = data
    broken = images.copy()
    broken[3, 0, 2, 2] = np.inf
    for metric in (metrics.pixel_correlation, metrics.identification_accuracy, metrics.pooled_r2):
        with pytest.raises(ValueError, match="y_pred contains NaN or infinity"):
            metric(images, broken)
    for metric in (metrics.structural_similarity, metrics.peak_signal_noise_ratio):
        with pytest.raises(ValueError, match="y_pred contains NaN or infinity"):
            metric(images, broken, data_range=1.0)
        with pytest.raises(ValueError, match="data_range must be the positive span"):
            metric(images, images, data_range=None)
    with pytest.raises(ValueError, match="at least one"):
        metrics.pooled_r2(images[:0], images[:0])


@pytest.mark.parametrize(
    "change, name",
    [({"latent_dim": 32}, "latent_dim"), ({"ensemble_size": 2}, "ensemble_size"), ({"body": "large"}, "body"),
     ({"loss": "bce"}, "loss"), ({"output_shape": (16, 8)}, "output_shape"), ({"target_layout": "channels_last"}, "target_layout")],
)
def test_continuing_a_fit_with_another_structure_is_refused_naming_the_parameter(data, fitted, tmp_path, change, name):
    z, images = data
    before = copy.deepcopy(vars(fitted))
    fitted.set_params(**change)
    for attempt in (lambda: fitted.set_params(warm_start=True).fit(z, images), lambda: fitted.partial_fit(z, images),
                    lambda: fitted.save(tmp_path / "decoder")):
        with pytest.raises(ValueError, match=f"{name}=.* does not describe the fitted decoder"):
            attempt()
    assert_same({k: v for k, v in before.items() if k.endswith("_")}, {k: v for k, v in vars(fitted).items() if k.endswith("_")})
    if name in ("latent_dim", "ensemble_size", "body", "loss"):  # a new fit of the new structure is fine
        fitted.set_params(warm_start=False).fit(z, images if name != "loss" else (images > 0.5).astype(np.float32))


def test_read_only_and_dataframe_embeddings_train_without_warnings(data):
    import warnings

    z, images = data
    frozen = z.copy()
    frozen.setflags(write=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*not writable.*")
        model = HalfUNetRegressor(**FAST).fit(frozen, images)
        model.predict(frozen)
        try:
            import pandas
        except ImportError:
            return
        HalfUNetRegressor(**FAST).fit(pandas.DataFrame(z), images).predict(pandas.DataFrame(z))
