"""The optional accelerations give what the default path gives (not timed: see benchmarks/speed.py)."""

import numpy as np
import pytest
import torch

from cebra_halfunet import HalfUNetRegressor

FAST = dict(latent_dim=16, max_epochs=3, batch_size=16, random_state=0, precision="float32")


def test_channels_last_trains_and_predicts_like_the_default(data):
    z, images = data
    default = HalfUNetRegressor(**FAST).fit(z, images)
    fast = HalfUNetRegressor(**FAST, channels_last=True).fit(z, images)
    np.testing.assert_allclose(fast.predict(z), default.predict(z), atol=1e-4)
    assert all(p.is_contiguous() for p in fast.module_.parameters())  # handed back in the standard layout
    np.testing.assert_allclose([r["train_loss"] for r in fast.history_], [r["train_loss"] for r in default.history_], rtol=1e-4)


def test_bfloat16_inference_is_close_to_float32(data):
    z, images = data
    model = HalfUNetRegressor(**FAST).fit(z, images)
    exact = model.predict(z)
    approximate = model.set_params(precision="bfloat16").predict(z)
    assert approximate.dtype == exact.dtype == np.float32
    assert np.abs(approximate - exact).max() < 0.05 and np.abs(approximate - exact).mean() < 0.01
    assert not np.array_equal(approximate, exact)  # it did run in bf16


@pytest.mark.parametrize("loss", ["mse", "l1_ssim"])
def test_bfloat16_training_learns_like_float32(data, loss):
    z, images = data
    exact = HalfUNetRegressor(**FAST, loss=loss, early_stopping=False).fit(z, images)
    fast = HalfUNetRegressor(**(FAST | dict(loss=loss, early_stopping=False, precision="bfloat16"))).fit(z, images)
    assert fast.history_[-1]["train_loss"] < fast.history_[0]["train_loss"]
    np.testing.assert_allclose(fast.history_[-1]["train_loss"], exact.history_[-1]["train_loss"], rtol=0.1)
    assert np.abs(fast.predict(z) - exact.predict(z)).mean() < 0.02
    assert all(p.dtype == torch.float32 for p in fast.module_.parameters())  # weights stay float32
