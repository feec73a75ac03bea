"""Identification and window accuracy, their scorers, and evaluate_decoder's report."""

from itertools import combinations

import numpy as np
import pytest
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.utils.validation import check_is_fitted

from cebra_halfunet import (
    DecoderReport,
    HalfUNetRegressor,
    evaluate_decoder,
    identification_scorer,
    window_accuracy_scorer,
)
from cebra_halfunet import metrics
from cebra_halfunet.baselines import mean_image

from .conftest import make_images
from cebra_halfunet.evaluation import _control_shifts, block_bootstrap, decorrelation
from cebra_halfunet.metrics import (
    FrameMatches,
    frame_matches,
    identification_accuracy,
    window_accuracy,
    window_chance,
)

EXACT = 1e-12  # the n-way expectation goes through log-gamma: exact up to float rounding


def frames(n=30, shape=(1, 4, 6), seed=0):
    """``n`` distinct random frames."""
    return np.random.default_rng(seed).random((n, *shape))


@pytest.mark.parametrize("n_way", [2, 5, 30, None])
def test_identical_frames_are_all_identified(n_way):
    y = frames()
    assert identification_accuracy(y, y.copy(), n_way=n_way) == pytest.approx(1.0, abs=EXACT)
    assert window_accuracy(y, y.copy(), window=0) == 1.0


def test_constant_predictions_score_exactly_chance():
    y = frames()
    constant = np.full_like(y, 0.3)
    for n_way, chance in [(2, 1 / 2), (5, 1 / 5), (30, 1 / 30), (None, 1 / 30)]:
        assert identification_accuracy(y, constant, n_way=n_way) == pytest.approx(chance, abs=EXACT)
    for window in (0, 3, 10):
        assert window_accuracy(y, constant, window) == pytest.approx(window_chance(30, window), abs=EXACT)
    same = np.broadcast_to(frames(n=1, seed=5), y.shape)  # one image for every sample, as the mean image
    for n_way, chance in [(2, 1 / 2), (5, 1 / 5), (None, 1 / 30)]:
        assert identification_accuracy(y, same, n_way=n_way) == pytest.approx(chance, abs=EXACT)
    assert window_chance(30, 3) == pytest.approx(sum(min(i + 3, 29) - max(i - 3, 0) + 1 for i in range(30)) / 30**2)


@pytest.mark.parametrize("n_way", [2, 7, None])
def test_permuted_predictions_score_chance_over_all_pairings(n_way):
    """Each of the N cyclic shifts pairs reconstructions with other frames; over all N of them
    every (reconstruction, true frame) pairing occurs once, so the mean is chance exactly."""
    y = frames(n=24)
    scores = [identification_accuracy(y, np.roll(y, k, axis=0), n_way=n_way) for k in range(24)]
    assert np.mean(scores) == pytest.approx(1 / (n_way or 24), abs=EXACT)
    assert scores[0] == pytest.approx(1.0) and max(scores[1:]) < 1


def test_nway_is_the_exact_expectation_over_distractor_sets():
    """Against enumeration of every set of n-1 distractors, ties broken as a fair lottery."""
    b, t, total = 9, 3, 16  # below, tied, distractors: 4 correlate better than the own frame
    labels = ["below"] * b + ["tied"] * t + ["above"] * (total - b - t)
    matches = FrameMatches(np.array([b]), np.array([t]), np.array([total]))
    for n_way in (2, 3, 6, 13, 17):
        outcomes = [0.0 if "above" in drawn else 1 / (1 + drawn.count("tied"))
                    for drawn in combinations(labels, n_way - 1)]
        assert matches.identification(n_way)[0] == pytest.approx(np.mean(outcomes), abs=EXACT)
    assert matches.identification(None)[0] == 0.0
    assert FrameMatches(np.array([5]), np.array([2]), np.array([7])).identification(None)[0] == pytest.approx(1 / 3)
    assert matches.identification(2)[0] == pytest.approx((b + t / 2) / total)  # ties count half


def test_a_shift_by_k_frames_is_inside_a_window_of_k_and_outside_k_minus_1():
    y, k = frames(n=40), 3
    shifted = np.roll(y, -k, axis=0)  # reconstruction i shows frame i + k (the last k wrap around)
    assert window_accuracy(y, shifted, window=k) == pytest.approx((40 - k) / 40)
    assert window_accuracy(y, shifted, window=k - 1) == 0.0


def test_repeated_frames_with_frame_index():
    movie = frames(n=10)
    y = np.repeat(movie, 3, axis=0)  # three repeats of each frame, side by side
    frame_index = np.repeat(np.arange(10), 3)
    assert identification_accuracy(y, y.copy(), frame_index=frame_index) == pytest.approx(1.0, abs=EXACT)
    assert identification_accuracy(y, y.copy(), n_way=10, frame_index=frame_index) == pytest.approx(1.0, abs=EXACT)
    # without frame_index the two copies are distractors that tie with the own frame
    assert identification_accuracy(y, y.copy()) == pytest.approx((27 + 2 / 2) / 29)
    assert window_accuracy(y, y.copy(), 0, frame_index=frame_index) == 1.0
    assert window_accuracy(y, y.copy(), 0) == pytest.approx(1 / 3)  # the point shared by the three copies
    with pytest.raises(ValueError, match="n_way=29 needs 28 distractor frames per image, but an image has only 27"):
        identification_accuracy(y, y, n_way=29, frame_index=frame_index)


def test_windows_do_not_reach_across_separate_stretches():
    y = frames(n=20)
    frame_index = np.concatenate([np.arange(10), np.arange(100, 110)])  # two stretches of the movie
    prediction = y.copy()
    prediction[9] = y[10]  # the end of the first stretch reconstructed as the start of the second
    assert window_accuracy(y, prediction, 1) == 1.0  # neighbours as samples
    assert window_accuracy(y, prediction, 1, frame_index=frame_index) == pytest.approx(19 / 20)
    assert window_accuracy(y, prediction, 91, frame_index=frame_index) == 1.0


def test_forms_chunks_and_inputs_untouched(monkeypatch):
    y = frames(n=23, shape=(2, 3, 4))
    prediction = y + np.random.default_rng(1).normal(scale=0.5, size=y.shape)
    before = prediction.copy()
    scores = (identification_accuracy(y, prediction), window_accuracy(y, prediction, 2))
    np.testing.assert_array_equal(prediction, before)
    flat = (identification_accuracy(y.reshape(23, -1), prediction.reshape(23, -1)),
            window_accuracy(y.reshape(23, -1), prediction.reshape(23, -1), 2))
    assert flat == pytest.approx(scores)
    matches = frame_matches(y, prediction, window=2)
    monkeypatch.setattr(metrics, "_CHUNK", 5)  # 5 x 5 blocks: every boundary case
    chunked = frame_matches(y, prediction, window=2)
    for name in ("below", "tied", "distractors", "window_hits"):
        np.testing.assert_array_equal(getattr(chunked, name), getattr(matches, name))
    # against the full correlation matrix
    correlation = np.corrcoef(prediction.reshape(23, -1), y.reshape(23, -1))[:23, 23:]
    np.testing.assert_array_equal(matches.below, (correlation < np.diag(correlation)[:, None]).sum(1))


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda y: identification_accuracy(y, y[:5]), ValueError, "same number of images"),
        (lambda y: identification_accuracy(y, y, n_way=1), ValueError, "n_way"),
        (lambda y: identification_accuracy(y, y, n_way=31), ValueError, "n_way=31 needs 30"),
        (lambda y: window_accuracy(y, y, -1), ValueError, "window"),
        (lambda y: window_accuracy(y, y, None), ValueError, "window"),
        (lambda y: window_accuracy(y, y, 2, frame_index=np.arange(5)), ValueError, "frame_index"),
        (lambda y: window_accuracy(y, y, 2, frame_index=np.linspace(0, 1, 30)), TypeError, "frame_index"),
        (lambda y: identification_accuracy(y, y, frame_index=np.zeros(30, int)), ValueError, "distractor"),
    ],
)
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call(frames())


def tiny_decoder(**kwargs):
    return HalfUNetRegressor(latent_dim=8, ensemble_size=1, max_epochs=1, random_state=0, **kwargs)


def test_scorers_in_grid_search_and_cross_validation(data):
    z, y = data
    grid = GridSearchCV(tiny_decoder(), {"loss": ["l1", "mse"]}, cv=KFold(2),
                        scoring={"id": identification_scorer, "window": window_accuracy_scorer(3)}, refit="id")
    grid.fit(z, y)
    for key in ("mean_test_id", "mean_test_window"):
        assert np.all((grid.cv_results_[key] >= 0) & (grid.cv_results_[key] <= 1))
    prediction = grid.best_estimator_.predict(z)
    assert identification_scorer(grid.best_estimator_, z, y) == identification_accuracy(y, prediction)
    assert window_accuracy_scorer(3)(grid.best_estimator_, z, y) == window_accuracy(y, prediction, 3)
    flat = y.reshape(len(y), -1)  # as in a Pipeline after CEBRA
    scores = cross_val_score(tiny_decoder(output_shape=(8, 16)), z, flat, cv=KFold(2), scoring=identification_scorer)
    assert scores.shape == (2,) and np.all((0 <= scores) & (scores <= 1))
    assert repr(window_accuracy_scorer(3)) == "ImageScorer(window_accuracy, window=3)"
    with pytest.raises(ValueError, match="window"):
        window_accuracy_scorer(-2)


class Recorder(TransformerMixin, BaseEstimator):
    """Pipeline step that records the data of every fit (in a class attribute: clones share it)."""

    fits = []

    def fit(self, X, y=None):
        Recorder.fits.append((np.array(X), np.array(y)))
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X):
        return X


def test_controls_refit_clones_that_never_see_the_unshuffled_data(data):
    z, y = data
    Recorder.fits = []
    pipeline = make_pipeline(Recorder(), tiny_decoder())
    report = evaluate_decoder(pipeline, z[:40], y[:40], z[40:], y[40:], window=2, baselines={"mean image": mean_image},
                              n_shuffles=2, random_state=0)
    with pytest.raises(Exception, match="not fitted"):
        check_is_fitted(pipeline)  # fitted as a clone, the caller's object untouched
    (X0, y0), *controls = Recorder.fits
    np.testing.assert_array_equal(X0, z[:40])
    np.testing.assert_array_equal(y0, y[:40])
    assert len(controls) == 4 and len(report.shifts) == 2
    for X, target in controls:
        assert not (np.array_equal(X, z[:40]) and np.array_equal(target, y[:40]))
    for X, target in controls[:2]:  # neural data (here the embeddings) shuffled in time, targets as they are
        assert not np.array_equal(X, z[:40])
        np.testing.assert_array_equal(np.sort(X, axis=0), np.sort(z[:40], axis=0))
        np.testing.assert_array_equal(target, y[:40])
    for (X, target), shift in zip(controls[2:], report.shifts):  # targets circularly shifted
        np.testing.assert_array_equal(X, z[:40])
        np.testing.assert_array_equal(target, np.roll(y[:40], shift, axis=0))
        assert 0 < shift < 40

    # a fitted estimator is scored as it is; only the controls refit
    Recorder.fits = []
    fitted = make_pipeline(Recorder(), tiny_decoder()).fit(z[:40], y[:40])
    weights = [p.detach().clone() for p in fitted[-1].module_.parameters()]
    again = evaluate_decoder(fitted, z[:40], y[:40], z[40:], y[40:], window=2, baselines={}, n_shuffles=1,
                             random_state=0)
    assert len(Recorder.fits) == 1 + 2
    np.testing.assert_array_equal(again.per_frame[0], evaluate_decoder(fitted, z[:40], y[:40], z[40:], y[40:], window=2,
                                                                       baselines={}, n_shuffles=0).per_frame[0])
    for before, after in zip(weights, fitted[-1].module_.parameters()):
        assert np.array_equal(before.numpy(), after.detach().numpy())


def test_report_rows_intervals_and_dict(data):
    z, y = data
    decoder = tiny_decoder().fit(z[:40], y[:40])
    frame_index = np.arange(40, 60)
    report = evaluate_decoder(decoder, z[:40], y[:40], z[40:], y[40:], frame_index=frame_index, window=3,
                              baselines={"mean image": mean_image}, n_shuffles=0, block_length=4, random_state=0)
    assert isinstance(report, DecoderReport)
    assert report.rows == ("HalfUNetRegressor", "mean image")
    assert report.metrics == ("pixel corr", "SSIM", "2-way id", "window acc")
    assert report.per_frame.shape == (2, 4, 20) and report.block_length == 4
    np.testing.assert_allclose(report.mean, report.per_frame.mean(-1))
    assert np.all(report.low <= report.mean + 1e-12) and np.all(report.mean <= report.high + 1e-12)
    prediction = decoder.predict(z[40:])
    assert report.mean[0, 2] == pytest.approx(identification_accuracy(y[40:], np.clip(prediction, 0, 1)))
    np.testing.assert_array_equal(report.chance[2:], [0.5, window_chance(20, 3, frame_index)])
    assert np.isnan(report.chance[:2]).all()
    as_dict = report.to_dict()
    assert set(as_dict) >= {"rows", "per_frame", "mean", "low", "high", "chance"}
    assert all(isinstance(value, np.ndarray) for value in as_dict.values())
    text = str(report)
    assert "HalfUNetRegressor" in text and "chance" in text and "±3 frames" in text and "blocks of 4" in text


def test_cebra_paper_frame_decoding_row():
    """kNN from the embedding to the frame number, trained on one repeat and tested on another."""
    rng = np.random.default_rng(0)
    movie = frames(n=30, shape=(1, 8, 16))
    position = np.stack([np.cos(np.arange(30) / 5), np.sin(np.arange(30) / 5)], axis=1)
    z_train, z_test = (np.float32(position + rng.normal(scale=0.01, size=position.shape)) for _ in range(2))
    decoder = tiny_decoder().fit(z_train, movie)
    report = evaluate_decoder(decoder, z_train, movie, z_test, movie, frame_index=np.arange(30),
                              frame_index_train=np.arange(30), window=2, baselines={}, n_shuffles=0, block_length=3)
    assert report.rows[-1] == "kNN frame number (CEBRA paper)"
    assert np.isnan(report.per_frame[-1, :3]).all() and report.mean[-1, 3] == 1.0
    with pytest.raises(ValueError, match="frame_index_train needs frame_index"):
        evaluate_decoder(decoder, z_train, movie, z_test, movie, frame_index_train=np.arange(30), n_shuffles=0)


def test_block_bootstrap_and_decorrelation():
    values = np.stack([np.full(50, 0.7), np.random.default_rng(0).random(50)])
    low, high = block_bootstrap(values, 5, random_state=0)
    assert low[0] == pytest.approx(0.7) and high[0] == pytest.approx(0.7) and low[1] < values[1].mean() < high[1]
    low, high = block_bootstrap(values, 50, random_state=0)  # one block: every resample is the data
    np.testing.assert_allclose([low, high], [values.mean(1)] * 2)
    movie = np.repeat(frames(n=60), 10, axis=0)  # each frame held for 10 samples
    lag, threshold = decorrelation(movie, random_state=0)
    assert lag == 7  # frames 7 apart are the same in 3 of 10 pairs: below 1/e
    assert 0.3 < threshold < 0.45


def test_shift_control_avoids_repeats_of_the_movie():
    movie = np.repeat(frames(n=40), 3, axis=0)
    y = np.concatenate([movie, movie])  # two repeats one after the other: a shift of 120 realigns them
    shifts = _control_shifts(y, 10, np.random.RandomState(0))
    lag = decorrelation(y, 0)[0]
    assert len(shifts) == 10 and all(min(s % 120, 120 - s % 120) >= lag for s in shifts)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"n_shuffles": -1}, ValueError, "n_shuffles"),
        ({"n_bootstrap": 0}, ValueError, "n_bootstrap"),
        ({"block_length": 0}, ValueError, "block_length"),
        ({"window": -3}, ValueError, "window"),
        ({"frame_index": np.arange(5)}, ValueError, "frame_index"),
    ],
)
def test_evaluate_decoder_bad_arguments_before_fitting(data, kwargs, error, match):
    z, y = data
    Recorder.fits = []
    with pytest.raises(error, match=match):
        evaluate_decoder(make_pipeline(Recorder(), tiny_decoder()), z[:40], y[:40], z[40:], y[40:], **kwargs)
    assert Recorder.fits == []
    with pytest.raises(ValueError, match="X_test and y_test"):
        evaluate_decoder(tiny_decoder(), z[:40], y[:40], z[40:], y[41:])


def test_the_mlp_baseline_learns_and_is_seeded():
    """cebra's mlp_decoding as cebra runs it (raw targets, 20 epochs) does not get past the mean
    image; on centred targets, for longer, it decodes (and the same seed gives the same images)."""
    from cebra.integrations.decoders import mlp_decoding

    from cebra_halfunet.baselines import _cebra_decoder, mean_image, mlp
    from cebra_halfunet.metrics import pixel_correlation

    z, images = make_images(400, (8, 16))
    train, test = slice(0, 300), slice(300, 400)
    prediction = mlp(z[train], images[train], z[test])
    np.testing.assert_array_equal(prediction, mlp(z[train], images[train], z[test]))
    as_cebra_runs_it = _cebra_decoder(mlp_decoding, z[train], images[train], z[test], device="cpu", model_type="TwoLayersMLP")
    mean = pixel_correlation(images[test], mean_image(z[train], images[train], z[test]))
    assert pixel_correlation(images[test], prediction) > max(0.2, mean + 0.1, pixel_correlation(images[test], as_cebra_runs_it) + 0.1)


def test_identification_is_a_probability_with_repeats():
    images = np.random.default_rng(0).random((12, 8, 16))
    frames = np.repeat(np.arange(6), 2)
    for frame_index in (frames, None):
        per_image = metrics.frame_matches(images, images, frame_index).identification(2)
        assert per_image.max() <= 1.0 and metrics.identification_accuracy(images, images, frame_index=frame_index) == pytest.approx(1.0)
