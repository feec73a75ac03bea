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
    originals, reconstructions, n_images: int = 5, indices=None, titles=("Original", "Reconstructed"), output_shape=None,
    frame_index=None,
):
    """Originals (top row) above reconstructions (bottom row), each column titled by the
    frame it shows (``frame_index``) or, without it, by the sample's index.

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
    frame_index : array of int ``(N,)``, optional
        The stimulus frame number of each sample (the movie's frame, what a reader looks up).

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
    labels = [f"frame {frame_index[index]}" for index in indices] if frame_index is not None else [f"sample {i}" for i in indices]
    fig, axes = plt.subplots(2, len(indices), figsize=(3 * len(indices), 3 * 2 * height / width + 0.6), squeeze=False)
    for column, label in enumerate(labels):
        for row, (images, title) in enumerate(zip(rows, titles)):
            image, cmap = _displayable(images[column], low, high)
            axes[row, column].imshow(image, cmap=cmap, vmin=0, vmax=1)
            axes[row, column].set_title(f"{title}, {label}", fontsize=9)
            axes[row, column].axis("off")
    fig.tight_layout()
    return fig


def plot_learning_curve(history, loss_name: str | None = None):
    """The losses at each evaluation, measured alike (see ``history_``): the pilot's (its
    training rows and the held-out frames it is judged on; shaded) and the decoder's (its
    training rows and the held-out frames, which it trains too; the decay shaded), the
    validation SSIM on a second axis where it was measured, and the best epoch marked.

    ``history``: a fitted ``HalfUNetRegressor`` (its ``history_``; the y axis is labelled
    with its loss and the best epoch is its ``best_epoch_``; an unfitted one raises
    ``NotFittedError``) or the list of dicts, with ``loss_name`` for the label. Returns the
    matplotlib figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    best = None
    if isinstance(history, BaseEstimator):
        check_is_fitted(history, "history_")
        loss_name, best = loss_name or history.loss, history.best_epoch_
        history = history.history_
    fig, ax = plt.subplots(figsize=(6, 4.4))
    pilot = [record for record in history if record.get("phase") == "pilot"]
    decoder = [record for record in history if record.get("phase") != "pilot"]
    lines = [
        (pilot, "train_loss", "pilot: training rows", "C0", ":"), (pilot, "valid_loss", "pilot: held-out frames", "C1", ":"),
        (decoder, "train_loss", "decoder: training rows", "C0", "-"), (decoder, "valid_loss", "decoder: X_val", "C1", "-"),
        (decoder, "held_out_loss", "decoder: held-out frames, trained", "C2", "-"),
    ]
    for records, key, label, color, style in lines:
        points = [(record["epoch"], record[key]) for record in records if record.get(key) is not None]
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3, color=color, linestyle=style, label=label)
    scores = [(record["epoch"], record["valid_score"]) for record in history if record.get("valid_score") is not None]
    if scores:
        right = ax.twinx()
        right.plot(*zip(*scores), marker="s", markersize=3, color="C3", linestyle="--", label="validation SSIM")
        right.set_ylabel("validation SSIM", color="C3")
    if best is None and scores:
        best = max(scores, key=lambda pair: pair[1])[0]
    elif best is None:
        valid = [(record["epoch"], record["valid_loss"]) for record in history if record.get("valid_loss") is not None]
        best = min(valid, key=lambda pair: pair[1])[0] if valid else None
    if best is not None:
        ax.axvline(best, color="gray", linestyle=":", label=f"best epoch {best}")
    for records, label, alpha in ((pilot, "pilot: one decoder, frames held out", 0.08),
                                  ([r for r in decoder if r.get("phase") == "decay"], "decay", 0.18)):
        if records:
            ax.axvspan(records[0]["epoch"] - 0.5, records[-1]["epoch"] + 0.5, color="gray", alpha=alpha, label=label)
    epochs = [record["epoch"] for record in history] or [1]
    ax.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)  # one epoch is a point, not an empty axis
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"{loss_name} loss" if loss_name else "loss")
    handles, labels = ax.get_legend_handles_labels()
    if scores:
        more = right.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=3)
    fig.tight_layout(rect=(0, 0.06 * (1 + (len(labels) - 1) // 3), 1, 1))
    return fig


def stretches(frame_index) -> list[slice]:
    """The samples of each stretch of the movie: runs of consecutive samples whose frame
    numbers rise by 0 (repeats side by side) or 1; any other step starts a new stretch."""
    frames = np.asarray(frame_index)
    breaks = np.flatnonzero(~np.isin(np.diff(frames), (0, 1))) + 1
    edges = [0, *breaks.tolist(), len(frames)]
    return [slice(start, stop) for start, stop in zip(edges[:-1], edges[1:])]


def running_mean(values, length: int, frame_index=None) -> np.ndarray:
    """Mean of ``values`` over the ``length`` samples around each (from ``(length - 1) // 2``
    before to ``length // 2`` after; fewer at the ends of a stretch: the mean of the samples
    there, no padding), never across stretches of
    ``frame_index`` (:func:`stretches`); NaN where every value is NaN."""
    values = np.asarray(values, dtype=np.float64)
    result = np.full(len(values), np.nan)
    for part in stretches(np.arange(len(values)) if frame_index is None else frame_index):
        chunk = values[part]
        known = ~np.isnan(chunk)
        sums, counts = (np.concatenate([[0.0], np.cumsum(a)]) for a in (np.where(known, chunk, 0.0), known))
        centre = np.arange(len(chunk))
        low, high = np.clip(centre - (length - 1) // 2, 0, None), np.clip(centre + length // 2 + 1, None, len(chunk))
        total, count = sums[high] - sums[low], counts[high] - counts[low]
        result[part] = np.divide(total, count, out=np.full(len(chunk), np.nan), where=count > 0)
    return result


def plot_frame_scores(report, metrics=("pixel corr", "2-way id"), rows=None, constant_rows=("mean image",)):
    """Per-frame scores of a :class:`~cebra_halfunet.DecoderReport` over the test samples,
    one panel per metric, one line per row: the running mean over the report's bootstrap
    block, within each stretch of the movie (:func:`running_mean`), with a gap between
    stretches; the chance level dashed where there is one; one legend for all panels.

    ``rows``: names of the report's rows to draw; default all. ``constant_rows``: rows whose
    prediction ignores the input (the training-mean image), drawn as their mean (dotted):
    their per-frame scores follow the frames, not any decoding. Returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt

    rows = report.rows if rows is None else rows
    parts = stretches(report.frame_index)
    fig, axes = plt.subplots(len(metrics), 1, figsize=(9, 2.6 * len(metrics) + 0.8), sharex=True, squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        column = report.metrics.index(metric)
        for index, row in enumerate(rows):
            values = report.per_frame[report.rows.index(row), column]
            color = f"C{index}"
            if np.isnan(values).all():
                continue
            if row in constant_rows:
                ax.axhline(np.nanmean(values), color=color, linestyle=":", label=f"{row} (its mean)")
                continue
            smooth = running_mean(values, report.block_length, report.frame_index)
            for number, part in enumerate(parts):
                ax.plot(np.arange(len(values))[part], smooth[part], color=color, linewidth=1, label=row if number == 0 else None)
        for part in parts[1:]:
            ax.axvline(part.start - 0.5, color="0.85", linewidth=0.8)
        if not np.isnan(report.chance[column]):
            ax.axhline(report.chance[column], color="gray", linestyle="--", label="chance")
        ax.set_ylabel(metric if metric != "window acc" else f"within ±{report.window} frames")
    axes[-1, 0].set_xlabel(
        f"test sample (time order; {len(parts)} stretch(es) of the movie, thin lines between them; "
        f"running mean over {report.block_length})"
    )
    handles = {}
    for ax in axes[:, 0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(4, len(handles)), fontsize=7)
    fig.tight_layout(rect=(0, 0.04 + 0.02 * (len(handles) // 4), 1, 1))
    return fig
