"""CUDA out-of-memory, simulated on the CPU by raising the same error class: fit says what
to change and releases memory so a search goes on; predict halves its batch."""

import gc

import numpy as np
import pytest
import torch
from sklearn.exceptions import FitFailedWarning
from sklearn.model_selection import GridSearchCV

from cebra_halfunet import HalfUNetRegressor
from cebra_halfunet.networks import HalfUNetDecoder
from cebra_halfunet.training import WeightAverage

FAST = dict(latent_dim=16, max_epochs=2, batch_size=16, random_state=0)


@pytest.fixture
def memory_limit(monkeypatch):
    """Make the decoder raise CUDA's OutOfMemoryError for batches above a settable size,
    and record the calls that release GPU memory and what of a fit was still alive at each
    (an optimizer, averaged weights: memory a release on the GPU could not free)."""
    limit = {"batch": None, "released": 0, "alive": []}
    forward = HalfUNetDecoder.forward

    def limited(self, x):
        if limit["batch"] is not None and len(x) > limit["batch"]:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(self, x)

    def release():
        limit["released"] += 1
        gc.collect()
        limit["alive"].append([type(o).__name__ for o in gc.get_objects() if issubclass(type(o), (torch.optim.Optimizer, WeightAverage))])

    monkeypatch.setattr(HalfUNetDecoder, "forward", limited)
    for module in ["training", "estimator"]:
        monkeypatch.setattr(f"cebra_halfunet.{module}.release_device_memory", release, raising=False)
    return limit


def test_fit_out_of_memory_says_what_to_change_and_releases_memory(data, memory_limit):
    z, images = data
    memory_limit["batch"] = 8
    model = HalfUNetRegressor(**FAST)
    with pytest.raises(torch.cuda.OutOfMemoryError) as caught:
        model.fit(z, images)
    message = str(caught.value)
    for advice in ["batch_size (now 16)", "latent_dim (now 16", "1x8x16", "gradient_checkpointing=True", "released"]:
        assert advice in message
    assert caught.value.__context__ is None  # the failed batch's tensors are not kept alive by the traceback
    assert memory_limit["released"] == 2  # after the failed batch, then after the fit's state is dropped
    assert memory_limit["alive"][-1] == []
    assert not hasattr(model, "module_")  # as it was before the fit: unfitted
    memory_limit["batch"] = None
    model.fit(z, images)
    weights = {name: value.clone() for name, value in model.module_.state_dict().items()}
    memory_limit["batch"] = 8
    with pytest.raises(torch.cuda.OutOfMemoryError):
        model.fit(z, images)
    assert all(p.device.type == "cpu" for p in model.module_.parameters())  # the fitted decoder, on the CPU, as it was
    assert all(torch.equal(value, weights[name]) for name, value in model.module_.state_dict().items())


@pytest.mark.filterwarnings("ignore:One or more of the test scores are non-finite")
def test_grid_search_goes_on_past_a_setting_that_runs_out_of_memory(data, memory_limit):
    z, images = data
    memory_limit["batch"] = 8
    search = GridSearchCV(HalfUNetRegressor(**FAST), {"batch_size": [8, 16]}, cv=2, error_score=np.nan)
    with pytest.warns(FitFailedWarning, match="ran out of GPU memory during fit"):
        search.fit(z, images)
    assert search.best_params_ == {"batch_size": 8}
    assert np.isnan(search.cv_results_["mean_test_score"][1])


def test_predict_halves_the_batch_until_it_fits(data, memory_limit):
    z, images = data
    model = HalfUNetRegressor(**FAST).fit(z, images)
    expected = model.predict(z)
    memory_limit["batch"] = 5
    with pytest.warns(RuntimeWarning, match="batch_size=8") as warned:
        prediction = model.predict(z)
    assert [str(w.message).split("=")[-1] for w in warned] == ["8.", "4."]
    np.testing.assert_allclose(prediction, expected, atol=1e-6)
    assert memory_limit["released"] == 2


def test_predict_that_fails_one_sample_at_a_time_says_to_use_the_cpu(data, memory_limit):
    z, images = data
    model = HalfUNetRegressor(**FAST).fit(z, images)
    memory_limit["batch"] = 0
    with pytest.warns(RuntimeWarning), pytest.raises(torch.cuda.OutOfMemoryError, match="device='cpu'") as caught:
        model.predict(z)
    assert caught.value.__context__ is None
    assert memory_limit["released"] == 7  # batches of 16, 8, 4, 2, 1; the error; the module back on the CPU
