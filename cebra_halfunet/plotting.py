"""Figures (matplotlib, imported on first use): reconstructions, learning curves and per-frame scores."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from ._checks import check_output_shape
from .targets import COLOUR_CHANNELS


def _as_images(images, name: str, output_shape) -> np.ndarray:
    """Float ``(N, C, H, W)`` copy of images in any form ``fit`` accepts: ``(N, H, W)``,
    ``(N, C, H, W)``, channels-last ``(N, H, W, C)``, or flat ``(N, C*H*W)`` with
    ``output_shape``."""
    images = np.asarray(images, dtype=np.float64)
    if images.ndim == 2:
        if output_shape is None:
            raise ValueError(f"{name} is flat {images.shape}: pass output_shape=(H, W) to show it as images.")
        height, width = check_output_shape(output_shape)
        if images.shape[1] % (height * width):
            raise ValueError(f"{name} has {images.shape[1]} values per image, not a multiple of {height} x {width}.")
        return images.reshape(len(images), -1, height, width)
    if images.ndim == 3:
        return images[:, None]
    if images.ndim == 4:
        channels_last = images.shape[-1] in COLOUR_CHANNELS and images.shape[1] not in COLOUR_CHANNELS
        return np.moveaxis(images, -1, 1) if channels_last else images
    raise ValueError(f"{name} must be (N, H, W), (N, C, H, W), (N, H, W, C) or flat (N, C*H*W), got shape {images.shape}.")


def _displayable(image: np.ndarray, low: float, high: float) -> tuple[np.ndarray, str | None]:
    """``(C, H, W)`` image -> values in [0, 1] (``low`` and ``high`` mapped to 0 and 1) as
    ``imshow`` takes them, and the colour map: gray for one channel (or the mean of a
    channel count that is not a colour image), RGB(A) for 3 and 4."""
    image = np.clip((image - low) / max(high - low, np.finfo(float).tiny), 0, 1)
    if image.shape[0] in (3, 4):
        return np.moveaxis(image, 0, -1), None
    return image.mean(axis=0), "gray"


def plot_reconstructions(
    originals, reconstructions, n_images: int = 5, indices=None, titles=("Original", "Reconstructed"), output_shape=None
):
    """Originals (top row) above reconstructions (bottom row).

    Both rows are shown on the originals' value range (min to max of the shown originals),
    so 0-255 frames, [0, 1] frames and reconstructions that overshoot are all shown alike.

    Parameters
    ----------
    originals, reconstructions : array ``(N, H, W)``, ``(N, C, H, W)``, ``(N, H, W, C)`` or ``(N, C*H*W)``
        Any form ``fit`` accepts; a last axis of 1, 3 or 4 (and a second axis that is not)
        is read as channels-last.
    n_images : int
        Number of columns, evenly spaced over ``N`` unless ``indices`` is given.
    indices : sequence of int, optional
    output_shape : (int, int), optional
        Image ``(H, W)`` of flat arrays, as given to ``HalfUNetRegressor`` for flat ``y``.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    if len(originals) != len(reconstructions):
        raise ValueError(f"originals and reconstructions differ in length: {len(originals)} vs {len(reconstructions)}.")
    if indices is None:
        indices = np.linspace(0, len(originals) - 1, min(n_images, len(originals))).round().astype(int)
    rows = [_as_images(np.stack([np.asarray(images[index]) for index in indices]), name, output_shape)
            for images, name in ((originals, "originals"), (reconstructions, "reconstructions"))]
    if rows[0].shape != rows[1].shape:
        raise ValueError(f"originals and reconstructions differ in shape: {rows[0].shape[1:]} vs {rows[1].shape[1:]}.")
    low, high = rows[0].min(), rows[0].max()
    height, width = rows[0].shape[-2:]
    fig, axes = plt.subplots(2, len(indices), figsize=(3 * len(indices), 3 * 2 * height / width + 0.6), squeeze=False)
    for column, index in enumerate(indices):
        for row, (images, title) in enumerate(zip(rows, titles)):
            image, cmap = _displayable(images[column], low, high)
            axes[row, column].imshow(image, cmap=cmap, vmin=0, vmax=1)
            axes[row, column].set_title(f"{title} {index}", fontsize=9)
            axes[row, column].axis("off")
    fig.tight_layout()
    return fig


def plot_learning_curve(history, loss_name: str | None = None):
    """Training and validation loss per epoch, measured alike (see ``history_``).

    ``history``: a fitted ``HalfUNetRegressor`` (its ``history_``; the y axis is labelled
    with its loss; an unfitted one raises ``NotFittedError``) or the list of dicts, with
    ``loss_name`` for the label. Returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if isinstance(history, BaseEstimator):
        check_is_fitted(history, "history_")
        loss_name = loss_name or history.loss
        history = history.history_
    epochs = [record["epoch"] for record in history]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(epochs, [record["train_loss"] for record in history], label="training rows")
    valid = [(record["epoch"], record["valid_loss"]) for record in history if record["valid_loss"] is not None]
    if valid:
        ax.plot(*zip(*valid), label="validation rows")
        best = min(valid, key=lambda pair: pair[1])
        ax.axvline(best[0], color="gray", linestyle=":", label=f"best epoch {best[0]}")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"{loss_name} loss" if loss_name else "loss")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_frame_scores(report, metrics=("pixel corr", "2-way id"), rows=None):
    """Per-frame scores of a :class:`~cebra_halfunet.DecoderReport` over the test samples,
    one panel per metric, one line per row (running mean over the report's bootstrap block),
    with the chance level dashed where there is one.

    ``rows``: names of the report's rows to draw; default all. Returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt

    rows = report.rows if rows is None else rows
    kernel = np.ones(report.block_length) / report.block_length
    fig, axes = plt.subplots(len(metrics), 1, figsize=(9, 2.6 * len(metrics)), sharex=True, squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        column = report.metrics.index(metric)
        for row in rows:
            values = report.per_frame[report.rows.index(row), column]
            if not np.isnan(values).all():
                ax.plot(np.convolve(values, kernel, mode="same"), label=row, linewidth=1)
        if not np.isnan(report.chance[column]):
            ax.axhline(report.chance[column], color="gray", linestyle="--", label="chance")
        ax.set_ylabel(metric if metric != "window acc" else f"within ±{report.window} frames")
    axes[-1, 0].set_xlabel(f"test sample (time order; running mean over {report.block_length})")
    axes[0, 0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig
