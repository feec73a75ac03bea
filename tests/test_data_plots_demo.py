import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from matplotlib.figure import Figure

from cebra_halfunet import HalfUNetRegressor
from cebra_halfunet.datasets import make_moving_blobs
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

    scores = main(["--size", "8", "16", "--frames", "200", "--epochs", "2", "--cebra-iterations", "5",
                   "--latent-dim", "16", "--device", "cpu", "--out", str(tmp_path)])
    assert set(scores) >= {"mean image", "HalfUNetRegressor"}
    assert all(np.isfinite(values).all() for values in scores.values())
    assert (tmp_path / "reconstruction_results.png").exists() and (tmp_path / "learning_curve.png").exists()
    assert "SSIM" in capsys.readouterr().out
