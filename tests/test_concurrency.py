"""predict from many threads at once: the results of serial calls, the weights untouched."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from cebra_halfunet import HalfUNetRegressor


@pytest.mark.parametrize("precision, channels_last", [("float32", True), ("float32", False), ("bfloat16", True)])
def test_predict_from_many_threads_equals_serial_predict_and_leaves_the_weights(data, precision, channels_last):
    z, images = data
    model = HalfUNetRegressor(latent_dim=16, max_epochs=2, batch_size=16, random_state=0, precision=precision,
                              channels_last=channels_last).fit(z, images)
    weights = {name: value.clone() for name, value in model.module_.state_dict().items()}
    inputs = [z[start : start + 20] for start in range(0, 60, 20)] * 20  # 60 calls, batches of 16 and 4
    serial = [model.predict(x) for x in inputs]
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(model.predict, inputs))
    for expected, got in zip(serial, threaded):
        np.testing.assert_array_equal(got, expected)
    for name, value in model.module_.state_dict().items():
        assert torch.equal(value, weights[name]) and value.is_contiguous(), name
