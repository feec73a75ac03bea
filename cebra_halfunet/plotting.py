"""Figures (matplotlib, imported on first use): reconstructions, learning curves and per-frame scores."""

from __future__ import annotations

import numpy as np


def _as_displayable(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """``(C, H, W)`` or ``(H, W)`` image -> what ``imshow`` takes, and its colour map."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    if image.ndim == 3:
        image = np.moveaxis(image, 0, -1)
        if image.dtype != np.uint8:
            image = np.clip(image, 0, 1)
        return image, None
    return image, "gray"


def plot_reconstructions(originals, reconstructions, n_images: int = 5, indices=None, titles=("Original", "Reconstructed")):
    """Originals (top row) above reconstructions (bottom row).

    Parameters
    ----------
    originals, reconstructions : array ``(N, C, H, W)`` or ``(N, H, W)``
    n_images : int
        Number of columns, evenly spaced over ``N`` unless ``indices`` is given.
    indices : sequence of int, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    if len(originals) != len(reconstructions):
        raise ValueError(f"originals and reconstructions differ in length: {len(originals)} vs {len(reconstructions)}.")
    if indices is None:
        indices = np.linspace(0, len(originals) - 1, min(n_images, len(originals))).round().astype(int)
    height, width = np.asarray(originals[0]).shape[-2:]
    fig, axes = plt.subplots(2, len(indices), figsize=(3 * len(indices), 3 * 2 * height / width + 0.6), squeeze=False)
    low = min(float(np.min(originals[i])) for i in indices)
    high = max(float(np.max(originals[i])) for i in indices)
    for column, index in enumerate(indices):
        for row, (images, title) in enumerate(zip((originals, reconstructions), titles)):
            image, cmap = _as_displayable(images[index])
            axes[row, column].imshow(image, cmap=cmap, vmin=low, vmax=high)
            axes[row, column].set_title(f"{title} {index}", fontsize=9)
            axes[row, column].axis("off")
    fig.tight_layout()
    return fig


def plot_learning_curve(history):
    """Train and validation loss per epoch.

    ``history``: a fitted ``HalfUNetRegressor`` (its ``history_``) or the list of dicts.
    Returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt

    history = getattr(history, "history_", history)
    epochs = [record["epoch"] for record in history]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(epochs, [record["train_loss"] for record in history], label="train")
    valid = [(record["epoch"], record["valid_loss"]) for record in history if record["valid_loss"] is not None]
    if valid:
        ax.plot(*zip(*valid), label="validation")
        best = min(valid, key=lambda pair: pair[1])
        ax.axvline(best[0], color="gray", linestyle=":", label=f"best epoch {best[0]}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
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
