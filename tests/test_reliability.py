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
        ({"lr": 1e6}, lambda m, z, y: m.fit(z * 1e30, y), "Training diverged"),
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
