import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from sklearn.exceptions import NotFittedError

from cebra_halfunet import HalfUNetRegressor
from cebra_halfunet.datasets import make_moving_blobs, make_natural_movie_v1
from cebra_halfunet.plotting import plot_learning_curve, plot_reconstructions


@pytest.mark.parametrize("channels", [1, 3])
def test_generated_recording_shapes_ranges_and_seed(channels):
    data = make_moving_blobs(120, (8, 16), channels=channels, n_neurons=30, seed=3)
    assert data.frames.shape == (120, channels, 8, 16) and data.frames.dtype == np.float32
    assert data.neural.shape == (120, 30) and data.latents.shape == (120, 6)
    assert 0 <= data.frames.min() and data.frames.max() <= 1 and data.frames.std() > 0.05
    assert (data.neural >= 0).all() and np.array_equal(data.neural, np.round(data.neural))
    again = make_moving_blobs(120, (8, 16), channels=channels, n_neurons=30, seed=3)
    np.testing.assert_array_equal(again.frames, data.frames)
    np.testing.assert_array_equal(again.neural, data.neural)
    assert not np.array_equal(make_moving_blobs(120, (8, 16), channels=channels, n_neurons=30, seed=4).frames, data.frames)


def test_generated_paths_are_stationary():
    """The held-out end of the movie covers the positions seen in training."""
    latents = make_moving_blobs(2000, (8, 16), seed=0).latents
    train, test = latents[:1600], latents[1600:]
    assert (test.min(0) >= train.min(0) - 0.05).all() and (test.max(0) <= train.max(0) + 0.05).all()


SMALL = dict(n_frames=400, output_shape=(16, 32), n_neurons=60, n_repeats=2, gap=5)


def runs(mask):
    """(start, stop) of the runs of True in a boolean array."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    return list(zip(edges[::2], edges[1::2]))


@pytest.mark.parametrize("rgb", [False, True])
def test_natural_movie_shapes_ranges_and_seed(rgb):
    data = make_natural_movie_v1(**SMALL, rgb=rgb, seed=1)
    channels = 3 if rgb else 1
    assert data.frames.shape == (400, channels, 16, 32) and data.frames.dtype == np.float32
    assert 0 <= data.frames.min() and data.frames.max() <= 1 and data.frames.std() > 0.05
    assert data.neural.shape == (2, 400, 60) and data.neural.dtype == np.float32
    assert (data.neural >= 0).all() and np.array_equal(data.neural, np.round(data.neural))
    assert set(data.cell_type) == {"simple", "complex"} and data.photo.shape == (400,)
    assert len(set(data.photo)) > 1  # saccades move between photographs
    if rgb:  # colour photographs have channels that differ
        assert np.abs(data.frames[:, 0] - data.frames[:, 2]).max() > 0.1
    again = make_natural_movie_v1(**SMALL, rgb=rgb, seed=1)
    np.testing.assert_array_equal(again.frames, data.frames)
    np.testing.assert_array_equal(again.neural, data.neural)
    other = make_natural_movie_v1(**SMALL, rgb=rgb, seed=2)
    assert not np.array_equal(other.frames, data.frames) and not np.array_equal(other.neural, data.neural)


def test_natural_movie_frames_are_photographs_panned_slowly():
    data = make_natural_movie_v1(**SMALL, seed=0)
    step = np.abs(np.diff(data.frames, axis=0)).mean(axis=(1, 2, 3))
    same_fixation = np.diff(data.photo) == 0
    assert np.median(step[same_fixation]) < 0.5 * np.median(np.abs(data.frames - data.frames.mean(0)).mean(axis=(1, 2, 3)))


def test_natural_movie_split_holds_out_stretches_with_a_gap():
    data = make_natural_movie_v1(**SMALL, test_fraction=0.2, n_test_stretches=4, seed=0)
    stretches = runs(data.is_test)
    assert len(stretches) == 4 and data.is_test.sum() == 80
    assert not (data.is_train & data.is_test).any()
    train_frames = np.flatnonzero(data.is_train)
    for start, stop in stretches:  # no training frame within `gap` of a held-out stretch
        assert not ((train_frames >= start - 5) & (train_frames < stop + 5)).any()
    X_train, y_train, X_test, y_test = data.train_test_split()
    assert X_train.shape == (2 * data.is_train.sum(), 60) and y_train.shape == (2 * data.is_train.sum(), 1, 16, 32)
    assert X_test.shape == (160, 60) and y_test.shape == (160, 1, 16, 32)
    np.testing.assert_array_equal(y_test[::2], data.frames[data.is_test])  # time order, repeats side by side
    np.testing.assert_array_equal(y_test[1::2], data.frames[data.is_test])
    np.testing.assert_array_equal(X_test[1::2], data.neural[1, data.is_test])
    photo_test = data.per_trial(data.photo, data.is_test)  # labels laid out like the samples
    assert photo_test.shape == (160,)
    np.testing.assert_array_equal(photo_test[::2], data.photo[data.is_test])
    np.testing.assert_array_equal(photo_test[1::2], data.photo[data.is_test])
    np.testing.assert_array_equal(data.per_trial(data.frames, data.is_train), y_train)


def test_simulated_v1_responds_to_the_movie():
    """Repeats share the stimulus: each neuron's responses correlate across repeats."""
    data = make_natural_movie_v1(n_frames=600, output_shape=(16, 32), n_neurons=40, n_repeats=2, seed=0)
    first, second = data.neural - data.neural.mean(axis=1, keepdims=True)
    correlation = (first * second).sum(0) / np.sqrt((first**2).sum(0) * (second**2).sum(0) + 1e-12)
    assert np.median(correlation) > 0.1


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"n_frames": 50}, ValueError, "too short"),
        ({"test_fraction": 1.5}, ValueError, "test_fraction"),
        ({"gap": -1}, ValueError, "gap"),
        ({"n_neurons": 0}, ValueError, "n_neurons"),
        ({"output_shape": (16,)}, ValueError, "output_shape"),
        ({"n_repeats": 1.5}, TypeError, "n_repeats"),
    ],
)
def test_natural_movie_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        make_natural_movie_v1(**(SMALL | kwargs))


def test_plots_return_figures_and_save(tmp_path):
    data = make_moving_blobs(60, (8, 16), channels=3, seed=0)
    figure = plot_reconstructions(data.frames, data.frames[::-1], n_images=4)
    assert isinstance(figure, Figure) and len(figure.axes) == 8
    figure.savefig(tmp_path / "grid.png")
    gray = plot_reconstructions(data.frames[:, 0], data.frames[:, 0], indices=[0, 5])
    assert len(gray.axes) == 4
    model = HalfUNetRegressor(latent_dim=8, max_epochs=2, random_state=0).fit(data.latents, data.frames)
    curve = plot_learning_curve(model)
    assert isinstance(curve, Figure)
    curve.savefig(tmp_path / "curve.png")
    assert (tmp_path / "grid.png").stat().st_size > 0 and (tmp_path / "curve.png").stat().st_size > 0
    with pytest.raises(ValueError, match="length"):
        plot_reconstructions(data.frames, data.frames[:3])


def test_demo_runs_end_to_end(tmp_path, capsys):
    from cebra_halfunet.demo import main

    report = main(["--size", "8", "16", "--frames", "200", "--repeats", "2", "--neurons", "40", "--epochs", "2", "--cebra-iterations", "5",
                   "--cebra-temperature", "0.5", "--latent-dim", "16", "--ensemble-size", "2", "--device", "cpu", "--out", str(tmp_path)])
    assert report.rows == ("HalfUNetRegressor", "mean image", "ridge (cebra ridge_decoding)", "kNN (grid over k, metric)",
                           "MLP (cebra mlp_decoding, centred)")
    assert np.isfinite(report.mean).all() and np.all((report.low <= report.mean + 1e-9) & (report.mean <= report.high + 1e-9))
    assert report.window == 15 and report.per_frame.shape[-1] == 80  # 40 held-out frames, 2 repeats
    for name in ("reconstruction_results.png", "learning_curve.png", "frame_scores.png"):
        assert (tmp_path / name).exists()
    out = capsys.readouterr().out
    assert "2-way id" in out and "40 V1 neurons" in out and "CEBRA (temperature 0.5)" in out and "(2 decoders, l1)" in out
    assert "--controls 1" in out  # controls are offered, not run


def test_demo_decodes_with_the_estimators_defaults():
    from cebra_halfunet import HalfUNetRegressor
    from cebra_halfunet.demo import parse_args

    args, defaults = parse_args([]), HalfUNetRegressor()
    assert (args.loss, args.ensemble_size, args.latent_dim) == (defaults.loss, defaults.ensemble_size, defaults.latent_dim)
    assert args.epochs is None  # no epoch cap: the estimator's max_epochs and stop rule


def test_chunked_nearest_neighbours_predict_as_scikit_learn():
    """Predicting in chunks (bounded memory for large k and images) changes no prediction."""
    from sklearn.neighbors import KNeighborsRegressor

    from cebra_halfunet.baselines import ChunkedKNeighborsRegressor

    rng = np.random.default_rng(0)
    z_train, y_train, z_test = rng.normal(size=(300, 4)), rng.random((300, 24)), rng.normal(size=(150, 4))
    chunked = ChunkedKNeighborsRegressor(n_neighbors=20).fit(z_train, y_train)
    assert chunked.chunk < len(z_test) and len(z_test) % chunked.chunk  # several chunks, the last one short
    expected = KNeighborsRegressor(n_neighbors=20).fit(z_train, y_train).predict(z_test)
    np.testing.assert_allclose(chunked.predict(z_test), expected)


def _shown(figure):
    """The arrays that the figure's axes display, row by row."""
    return [axis.get_images()[0].get_array() for axis in figure.axes]


def test_plots_read_every_layout_fit_accepts_on_the_originals_range():
    rng = np.random.default_rng(0)
    frames = rng.uniform(20, 230, size=(6, 3, 8, 16))  # float RGB in 0-255
    reconstructions = frames[::-1] + rng.normal(0, 5, size=frames.shape)
    shown = _shown(plot_reconstructions(frames, reconstructions, indices=[0, 2]))
    low, high = frames[[0, 2]].min(), frames[[0, 2]].max()
    np.testing.assert_allclose(shown[0], np.moveaxis((frames[0] - low) / (high - low), 0, -1))
    np.testing.assert_allclose(shown[2], np.clip(np.moveaxis((reconstructions[0] - low) / (high - low), 0, -1), 0, 1))
    assert 0.2 < np.mean(shown[0]) < 0.8, "0-255 floats are not clipped to white"

    channels_last = np.moveaxis(frames, 1, -1)
    flat = frames.reshape(6, -1)
    uint8 = channels_last.round().astype(np.uint8)
    for images, kwargs in [(channels_last, {}), (flat, {"output_shape": (8, 16)}), (torch.from_numpy(frames), {})]:
        for expected, actual in zip(shown, _shown(plot_reconstructions(images, images, indices=[0, 2], **kwargs))[:2]):
            np.testing.assert_allclose(actual, expected)
    assert _shown(plot_reconstructions(uint8, uint8, indices=[0]))[0].shape == (8, 16, 3)
    gray = _shown(plot_reconstructions(frames[:, 0].reshape(6, -1), frames[:, 0].reshape(6, -1), indices=[1],
                                       output_shape=(8, 16)))
    assert gray[0].shape == (8, 16)
    with pytest.raises(ValueError, match="output_shape"):
        plot_reconstructions(flat, flat)


def test_learning_curve_of_an_unfitted_estimator_says_so():
    with pytest.raises(NotFittedError):
        plot_learning_curve(HalfUNetRegressor())


def test_frame_scores_plot(tmp_path):
    from cebra_halfunet import evaluate_decoder
    from cebra_halfunet.baselines import mean_image
    from cebra_halfunet.plotting import plot_frame_scores

    data = make_moving_blobs(60, (8, 16), seed=0)
    model = HalfUNetRegressor(latent_dim=8, ensemble_size=1, max_epochs=1, random_state=0).fit(data.latents[:40], data.frames[:40])
    report = evaluate_decoder(model, data.latents[:40], data.frames[:40], data.latents[40:], data.frames[40:], window=2,
                              baselines={"mean image": mean_image}, n_shuffles=0, block_length=3)
    figure = plot_frame_scores(report, metrics=("pixel corr", "2-way id", "window acc"))
    assert isinstance(figure, Figure) and len(figure.axes) == 3
    assert len(figure.axes[1].lines) == 3  # the decoder, the mean image (its mean) and the chance line
    figure.savefig(tmp_path / "scores.png")
    assert (tmp_path / "scores.png").stat().st_size > 0


def test_the_running_mean_covers_the_frames_there_are_and_never_crosses_a_gap():
    from cebra_halfunet.plotting import running_mean

    values = np.array([0.2, 0.4, 0.6, 0.8, 1.0, 5.0, 7.0, 9.0])
    frames = np.array([10, 11, 12, 13, 14, 40, 41, 42])  # two stretches of the movie
    smooth = running_mean(values, 3, frames)
    assert smooth[0] == pytest.approx(0.3)  # the mean of the two frames at the edge, not padded with 0
    assert smooth[4] == pytest.approx(0.9) and smooth[5] == pytest.approx(6.0)  # nothing across the gap
    np.testing.assert_allclose(smooth[1:4], [0.4, 0.6, 0.8])
    interleaved = running_mean([1.0, 3.0, 1.0, 3.0], 2, np.array([0, 0, 1, 1]))  # repeats side by side: one stretch
    np.testing.assert_allclose(interleaved, [2.0, 2.0, 2.0, 3.0])
    assert np.isnan(running_mean([np.nan, np.nan], 3)).all()


def frame_report(**changes):
    """A small DecoderReport: a decoder, the mean image and a row scored only as window accuracy."""
    from cebra_halfunet.evaluation import METRICS, DecoderReport

    n = 12
    rng = np.random.default_rng(0)
    per_frame = rng.random((3, 4, n))
    per_frame[2, :3] = np.nan  # the CEBRA paper's frame-number row has window hits only
    fields = dict(rows=("decoder", "mean image", "kNN frame number (CEBRA paper)"), metrics=METRICS, per_frame=per_frame,
                  mean=np.nanmean(per_frame, -1), low=per_frame.min(-1), high=per_frame.max(-1),
                  chance=np.array([np.nan, np.nan, 0.5, 0.2]), window=2, block_length=3, shifts=np.zeros(0, int),
                  frame_index=np.r_[np.arange(100, 106), np.arange(300, 306)])
    return DecoderReport(**(fields | changes))


def test_frame_scores_break_at_stretches_show_constant_rows_flat_and_share_one_legend():
    from cebra_halfunet.plotting import plot_frame_scores

    report = frame_report()
    figure = plot_frame_scores(report, metrics=("pixel corr", "window acc"))
    window_panel = figure.axes[1]
    decoder_lines = [line for line in window_panel.lines if line.get_color() == "C0"]
    assert [len(line.get_xdata()) for line in decoder_lines] == [6, 6]  # one line per stretch, none across the gap
    mean_line = next(line for line in window_panel.lines if line.get_label() == "mean image (its mean)")
    np.testing.assert_allclose(mean_line.get_ydata(), np.mean(report.per_frame[1, 3]))
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert "kNN frame number (CEBRA paper)" in legend and "decoder" in legend and "chance" in legend


def test_a_learning_curve_of_one_epoch_shows_its_point():
    history = [{"epoch": 1, "phase": "decay", "batch_loss": 0.3, "train_loss": 0.2, "valid_loss": None,
                "held_out_loss": 0.25, "duration_s": 1.0}]
    figure = plot_learning_curve(history, "l1")
    ax = figure.axes[0]
    low, high = ax.get_xlim()
    assert low < 1 < high and high - low == pytest.approx(1.0)
    assert [list(line.get_xdata()) for line in ax.lines if line.get_marker() == "o"] == [[1], [1]]


def test_reconstructions_are_titled_by_frame_number():
    frames = np.random.default_rng(0).random((6, 8, 16))
    figure = plot_reconstructions(frames, frames, indices=[0, 4], frame_index=np.arange(200, 206))
    titles = [ax.get_title() for ax in figure.axes]
    assert titles == ["Original, frame 200", "Original, frame 204", "Reconstructed, frame 200", "Reconstructed, frame 204"]


def test_the_learning_curve_keeps_the_pilot_apart_from_the_decoder():
    def record(epoch, phase, train, valid=None, held=None, score=None):
        return {"epoch": epoch, "phase": phase, "batch_loss": train, "train_loss": train, "valid_loss": valid,
                "valid_score": score, "held_out_loss": held, "duration_s": 1.0}

    history = [record(1, "pilot", 0.2, 0.3, score=0.2), record(2, "pilot", 0.1, 0.25, score=0.3),
               record(3, "stable", 0.3, held=0.31), record(4, "decay", 0.2, held=0.21)]
    figure = plot_learning_curve(history, "l1")
    lines = {line.get_label(): list(line.get_xdata()) for axis in figure.axes for line in axis.lines}
    assert lines["pilot: training rows"] == [1, 2] and lines["decoder: training rows"] == [3, 4]
    assert lines["pilot: held-out frames"] == [1, 2] and lines["decoder: held-out frames, trained"] == [3, 4]
    assert lines["validation SSIM"] == [1, 2] and lines["best epoch 2"] == [2, 2]  # the best by SSIM
