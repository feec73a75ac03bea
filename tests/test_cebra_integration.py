"""With real cebra.CEBRA models (small, few iterations, CPU)."""

import subprocess
import sys
from pathlib import Path

import cebra
import joblib
import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted
from sklearn.model_selection import GridSearchCV, TimeSeriesSplit, cross_validate
from sklearn.pipeline import make_pipeline

from cebra_halfunet import CEBRAEmbedding, HalfUNetDecoder, HalfUNetRegressor, halfunet_decoding, ssim_scorer
from cebra_halfunet.datasets import make_moving_blobs

SHAPE = (8, 16)


class RecordingCEBRA(cebra.CEBRA):
    """cebra.CEBRA that records the data each fit receives."""

    calls = []

    def fit(self, X, *labels, **kwargs):
        RecordingCEBRA.calls.append((len(X), [np.shape(label) for label in labels]))
        return super().fit(X, *labels, **kwargs)


def small_cebra(cls=cebra.CEBRA, **kwargs):
    params = dict(model_architecture="offset10-model", output_dimension=4, max_iterations=10, batch_size=64,
                  time_offsets=10, device="cpu", verbose=False)
    return cls(**(params | kwargs))


def decoder(**kwargs):
    return HalfUNetRegressor(**(dict(latent_dim=16, max_epochs=2, random_state=0) | kwargs))


@pytest.fixture(scope="module")
def recording():
    data = make_moving_blobs(160, SHAPE, n_neurons=20, seed=0)
    return data.neural, data.frames


@pytest.fixture(autouse=True)
def reset_calls():
    RecordingCEBRA.calls = []


def test_plain_cebra_pipeline_with_flattened_frames(recording):
    neural, frames = recording
    flat = frames.reshape(len(frames), -1)
    pipeline = make_pipeline(small_cebra(), decoder(output_shape=SHAPE)).fit(neural, flat)
    prediction = pipeline.predict(neural[:20])
    assert prediction.shape == (20, 128)
    assert np.isfinite(pipeline.score(neural, flat))


@pytest.mark.parametrize("y_form", ["flat", "images"])
def test_compact_label_step(recording, y_form):
    neural, frames = recording
    y = frames.reshape(len(frames), -1) if y_form == "flat" else frames
    step = CEBRAEmbedding(small_cebra(RecordingCEBRA), label="pca", n_components=5, max_label_pixels=40, random_state=0)
    pipeline = make_pipeline(step, decoder(output_shape=SHAPE if y_form == "flat" else None)).fit(neural, y)
    assert RecordingCEBRA.calls == [(160, [(160, 5)])], "CEBRA learns from the 5-d label, not the pixels"
    assert len(step.label_pixels_) == 40 and step.n_samples_fit_ == 160
    assert pipeline.predict(neural[:20]).shape == (20, *y.shape[1:])  # offset10-model needs >= 10 samples
    assert step.transform(neural).shape == (160, 4)


def test_time_label_ignores_y_and_pca_needs_it(recording):
    neural, frames = recording
    CEBRAEmbedding(small_cebra(RecordingCEBRA), label="time").fit(neural, frames)
    assert RecordingCEBRA.calls == [(160, [])]
    with pytest.raises(ValueError, match="needs y"):
        CEBRAEmbedding(small_cebra(), label="pca").fit(neural)
    with pytest.raises(ValueError, match="label"):
        CEBRAEmbedding(small_cebra(), label="pixels").fit(neural, frames)


@pytest.mark.slow
def test_grid_search_with_time_respecting_split_refits_cebra_per_fold(recording):
    neural, frames = recording
    pipeline = make_pipeline(CEBRAEmbedding(small_cebra(RecordingCEBRA), random_state=0), decoder())
    splitter = TimeSeriesSplit(n_splits=3)
    search = GridSearchCV(
        pipeline,
        {"halfunetregressor__latent_dim": [8, 1024], "halfunetregressor__loss": ["mse", "l1_ssim"],
         "cebraembedding__cebra__output_dimension": [3]},
        cv=splitter,
        scoring=ssim_scorer,
        error_score="raise",
    ).fit(neural, frames)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    train_sizes = [len(train) for train, _ in splitter.split(neural)]
    fold_fits = [n for n, _ in RecordingCEBRA.calls[:-1]]  # the last call is the refit on all data
    assert fold_fits == train_sizes * 4, "CEBRA is refitted on each training fold only"
    assert RecordingCEBRA.calls[-1][0] == 160
    assert search.best_estimator_[0].cebra_.output_dimension == 3


def test_cross_validation_folds_are_contiguous(recording):
    neural, frames = recording
    result = cross_validate(
        make_pipeline(CEBRAEmbedding(small_cebra(), random_state=0), decoder()),
        neural, frames, cv=TimeSeriesSplit(2), return_indices=True, return_estimator=True, error_score="raise",
    )
    for train, test in zip(result["indices"]["train"], result["indices"]["test"]):
        assert train.max() < test.min() and np.all(np.diff(test) == 1)
    assert [fold[0].n_samples_fit_ for fold in result["estimator"]] == [len(t) for t in result["indices"]["train"]]


def test_joblib_round_trip_of_a_fitted_pipeline(recording, tmp_path):
    neural, frames = recording
    pipeline = make_pipeline(CEBRAEmbedding(small_cebra(), random_state=0), decoder()).fit(neural, frames)
    joblib.dump(pipeline, tmp_path / "pipeline.joblib")
    loaded = joblib.load(tmp_path / "pipeline.joblib")
    np.testing.assert_array_equal(loaded.predict(neural), pipeline.predict(neural))
    unfitted = joblib.load(joblib.dump(CEBRAEmbedding(small_cebra()), tmp_path / "unfitted.joblib")[0])
    assert unfitted.get_params()["label"] == "pca"


def test_functional_api_single_session(recording):
    _, frames = recording
    rng = np.random.default_rng(0)
    embedding = torch.from_numpy(rng.normal(size=(160, 6)).astype(np.float32))
    labels = torch.from_numpy(frames)
    train_loss, valid_loss, predictions = halfunet_decoding(
        embedding[:120], embedding[120:], labels[:120], labels[120:],
        num_epochs=2, batch_size=16, device="cpu", output_shape=SHAPE, latent_dim=16, random_state=0,
    )
    assert isinstance(train_loss, float) and isinstance(valid_loss, float) and valid_loss > 0
    assert isinstance(predictions, torch.Tensor) and predictions.shape == (40, 1, *SHAPE)
    three_d = halfunet_decoding(embedding[:120], embedding[120:], labels[:120, 0], labels[120:, 0],
                                num_epochs=1, device="cpu", output_shape=SHAPE, latent_dim=16)[2]
    assert three_d.shape == (40, *SHAPE)


@pytest.mark.parametrize("ensemble_size", [1, 2])
def test_functional_api_valid_loss_is_the_loss_on_validation_data(recording, ensemble_size):
    _, frames = recording
    embedding = np.random.default_rng(1).normal(size=(160, 6)).astype(np.float32)
    _, valid_loss, predictions = halfunet_decoding(
        embedding[:120], embedding[120:], frames[:120], frames[120:], num_epochs=2, device="cpu",
        output_shape=SHAPE, latent_dim=16, loss_fn="mse", ensemble_size=ensemble_size, random_state=0,
    )
    expected = float(((predictions.numpy() - frames[120:]) ** 2).mean())
    assert valid_loss == pytest.approx(expected, rel=1e-3)  # predictions are clipped to the training range, the loss not


class SessionLabel:
    """Stands in for a CEBRA dataset's label object with ``.continuous``."""

    def __init__(self, continuous):
        self.continuous = continuous


def test_functional_api_multi_session(recording):
    _, frames = recording
    rng = np.random.default_rng(0)
    runs = lambda n: [torch.from_numpy(rng.normal(size=(n, 6)).astype(np.float32)) for _ in range(3)]
    embedding_train, embedding_valid = {0: runs(60), 1: runs(60)}, {0: runs(20), 1: runs(20)}
    label_train = {0: torch.from_numpy(frames[:60]), 1: SessionLabel(torch.from_numpy(frames[60:120]))}
    label_valid = {0: frames[120:140], 1: frames[140:160]}
    _, _, predictions = halfunet_decoding(
        embedding_train, embedding_valid, label_train, label_valid,
        num_epochs=1, device="cpu", output_shape=SHAPE, latent_dim=16, n_run=2,
    )
    assert predictions.shape == (40, 1, *SHAPE)
    with pytest.raises(ValueError, match="n_run must be specified"):
        halfunet_decoding(embedding_train, embedding_valid, label_train, label_valid, device="cpu", output_shape=SHAPE)


def test_functional_api_errors(recording, monkeypatch):
    _, frames = recording
    embedding = np.zeros((160, 6), dtype=np.float32)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        halfunet_decoding(embedding[:120], embedding[120:], frames[:120], frames[120:], output_shape=SHAPE)
    with pytest.raises(ValueError, match="output_channels=3"):
        halfunet_decoding(embedding[:120], embedding[120:], frames[:120], frames[120:], device="cpu",
                          output_channels=3, output_shape=SHAPE)
    with pytest.raises(ValueError, match="label_valid"):
        halfunet_decoding(embedding[:120], embedding[120:], frames[:120], frames[120:, :, :4], device="cpu",
                          output_shape=SHAPE)


def test_decoder_is_importable_beside_the_function():
    from cebra_halfunet.decoding import HalfUNetDecoder as FromDecoding

    assert FromDecoding is HalfUNetDecoder


def _poisoned(array, value):
    """Copy of ``array`` with ``value`` in one entry."""
    array = array.copy()
    array.flat[7] = value
    return array


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda args: args | {"label_valid": args["label_valid"][:-1]}, "label_valid must have one sample per row"),
        (lambda args: args | {"embedding_valid": args["embedding_valid"][:, :4]}, "embedding_valid must have the width"),
        (lambda args: args | {"label_valid": _poisoned(args["label_valid"], np.nan)}, "label_valid contains NaN"),
        (lambda args: args | {"label_valid": _poisoned(args["label_valid"], -np.inf)}, "label_valid contains NaN"),
        (lambda args: args | {"embedding_valid": _poisoned(args["embedding_valid"], np.inf)}, "embedding_valid contains NaN"),
        (lambda args: args | {"label_train": args["label_train"][:-1]}, "label_train must have one sample per row"),
        (lambda args: args | {"label_valid": args["label_valid"][:, :, :4]}, "label_valid samples have shape"),
        # the estimator's parameters under the function's names
        (lambda args: args | {"num_epochs": 0}, "num_epochs must be a positive integer"),
        (lambda args: args | {"loss_fn": "l2"}, "loss_fn must be one of"),
        (lambda args: args | {"output_shape": (4, 4)}, "label_train does not fit output_shape"),
    ],
)
def test_functional_api_checks_every_input_before_training(recording, monkeypatch, change, message):
    _, frames = recording
    embedding = np.random.default_rng(0).normal(size=(160, 6)).astype(np.float32)
    monkeypatch.setattr(HalfUNetRegressor, "fit", lambda *args: pytest.fail("trained before checking its inputs"))
    args = dict(embedding_train=embedding[:120], embedding_valid=embedding[120:], label_train=frames[:120],
                label_valid=frames[120:])
    before = {name: value.copy() for name, value in args.items()}
    changed = change(args)
    with pytest.raises(ValueError, match=message):
        halfunet_decoding(**({"device": "cpu", "output_shape": SHAPE} | changed))
    for name, value in args.items():
        np.testing.assert_array_equal(value, before[name])


def test_functional_api_refuses_a_run_that_does_not_exist(recording, monkeypatch):
    _, frames = recording
    monkeypatch.setattr(HalfUNetRegressor, "fit", lambda *args: pytest.fail("trained before checking its inputs"))
    runs = lambda n: [np.zeros((n, 6), dtype=np.float32) for _ in range(2)]
    with pytest.raises(ValueError, match=r"n_run=2 is out of range: embedding_train\[0\] has 2 run"):
        halfunet_decoding({0: runs(60)}, {0: runs(20)}, {0: frames[:60]}, {0: frames[60:80]}, n_run=2,
                          device="cpu", output_shape=SHAPE)


@pytest.mark.parametrize("label", ["pca", "time"])
def test_cebra_embedding_random_state_makes_the_pipeline_reproducible(recording, label):
    neural, frames = recording
    torch_state, numpy_state = torch.random.get_rng_state(), np.random.get_state()
    fits = [make_pipeline(CEBRAEmbedding(small_cebra(), label=label, n_components=4, random_state=0),
                          decoder(ensemble_size=1, max_epochs=1)).fit(neural, frames) for _ in range(2)]
    embeddings = [pipeline[0].transform(neural) for pipeline in fits]
    np.testing.assert_array_equal(embeddings[0], embeddings[1])
    np.testing.assert_array_equal(fits[0].predict(neural), fits[1].predict(neural))
    assert torch.equal(torch.random.get_rng_state(), torch_state), "the caller's torch generator is left alone"
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state))
    other = CEBRAEmbedding(small_cebra(), label=label, n_components=4, random_state=1).fit(neural, frames)
    assert not np.allclose(other.transform(neural), embeddings[0])


def test_plain_cebra_pipeline_persists_with_joblib(recording, tmp_path):
    neural, frames = recording
    flat = frames.reshape(len(frames), -1)
    pipeline = make_pipeline(small_cebra(), decoder(output_shape=SHAPE, ensemble_size=1)).fit(neural, flat)
    path = tmp_path / "pipeline.joblib"
    joblib.dump(pipeline, path)
    expected = pipeline.predict(neural)
    np.testing.assert_array_equal(joblib.load(path).predict(neural), expected)
    # In a fresh process the model classes are made anew: the file must name them so that they are found.
    np.save(tmp_path / "expected.npy", expected)
    np.save(tmp_path / "neural.npy", neural)
    script = (
        "import joblib, numpy as np, sys; folder = sys.argv[1]; "
        "loaded = joblib.load(folder + '/pipeline.joblib'); "
        "np.testing.assert_array_equal(loaded.predict(np.load(folder + '/neural.npy')), np.load(folder + '/expected.npy')); "
        "joblib.dump(loaded, folder + '/again.joblib'); print('identical')"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                            cwd=Path(__file__).parents[1])
    assert result.returncode == 0 and result.stdout.strip() == "identical", result.stderr


def test_a_loaded_embedding_pipeline_saves_again_whatever_was_imported(recording, tmp_path):
    """A CEBRAEmbedding + decoder Pipeline loaded in a fresh process, where cebra_halfunet is
    imported before cebra (by the unpickling itself), dumps again."""
    neural, frames = recording
    pipeline = make_pipeline(CEBRAEmbedding(small_cebra(), random_state=0), decoder(ensemble_size=1)).fit(neural, frames)
    joblib.dump(pipeline, tmp_path / "best.joblib")
    script = (
        "import joblib, sys; folder = sys.argv[1]; p = joblib.load(folder + '/best.joblib'); "
        "joblib.dump(p, folder + '/again.joblib'); joblib.load(folder + '/again.joblib'); print('saved again')"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                            cwd=Path(__file__).parents[1])
    assert result.returncode == 0 and result.stdout.strip() == "saved again", result.stderr


def test_a_pipeline_predicts_fewer_samples_than_the_context_with_a_clear_error(recording):
    neural, frames = recording
    pipeline = make_pipeline(CEBRAEmbedding(small_cebra(), random_state=0), decoder(ensemble_size=1)).fit(neural, frames)
    assert pipeline.predict(neural[:10]).shape == (10, *frames.shape[1:])
    with pytest.raises(ValueError, match=r"X has 3 sample\(s\), fewer than the 10 consecutive samples .*offset10-model"):
        pipeline.predict(neural[:3])


class InterruptedCEBRA(cebra.CEBRA):
    def fit(self, X, *labels, **kwargs):
        raise KeyboardInterrupt


def test_ctrl_c_during_the_cebra_fit_leaves_the_step_unfitted(recording):
    neural, frames = recording
    step = CEBRAEmbedding(small_cebra(InterruptedCEBRA), random_state=0)
    with pytest.raises(KeyboardInterrupt):
        step.fit(neural, frames)
    with pytest.raises(NotFittedError):
        check_is_fitted(step)


def test_cebra_models_pickle_once_a_decoder_is_fitted_when_cebra_came_second():
    """Importing cebra_halfunet does not import cebra; imported first, it registers the
    pickling of CEBRA's models when a decoder is fitted (before a Pipeline is dumped)."""
    script = """
import pickle, sys
import numpy as np, torch
import cebra_halfunet
assert "cebra" not in sys.modules
import cebra
model = cebra.models.init("offset10-model", num_neurons=3, num_units=4, num_output=2)
try:
    pickle.dumps(model)
    raise SystemExit("pickled before registration: the test no longer tests anything")
except pickle.PicklingError:
    pass
cebra_halfunet.HalfUNetRegressor(latent_dim=8, max_epochs=1, ensemble_size=1).fit(
    np.zeros((4, 2), np.float32), np.zeros((4, 8, 16), np.float32))
loaded = pickle.loads(pickle.dumps(model))
assert type(loaded) is type(model)
x = torch.randn(1, 3, 10)
assert torch.equal(loaded(x), model(x))
print("pickled")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert result.returncode == 0 and result.stdout.strip() == "pickled", result.stderr
