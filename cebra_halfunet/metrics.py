"""Image-quality and identification metrics, and the scikit-learn scorers built on them.

SSIM and PSNR take image batches ``(N, C, H, W)``; pixel correlation, identification and
window accuracy take images in any form the estimator's targets come in (``(N, H, W)``,
``(N, C, H, W)`` or flat ``(N, C*H*W)``). Each returns the mean over images (the
``per_image_*`` functions and :func:`frame_matches` give the values per image); all run in
chunks of images, so memory stays bounded for any ``N``. The scorers
(``scoring=ssim_scorer`` in ``GridSearchCV`` or ``cross_val_score``) take targets in any
form that the fitted :class:`HalfUNetRegressor` accepted, flattened ones inside a Pipeline
included.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

from ._checks import check_count
from .losses import ssim
from .targets import as_array

_CHUNK = 256


def _chunks(y_true: np.ndarray, y_pred: np.ndarray):
    """Float64 tensors of both, ``_CHUNK`` images at a time, after the checks of :func:`_check_images`."""
    _check_images(y_true, y_pred)
    for start in range(0, len(y_true), _CHUNK):
        yield (torch.from_numpy(np.asarray(a[start : start + _CHUNK], dtype=np.float64)) for a in (y_true, y_pred))


def _check_images(y_true, y_pred) -> None:
    """Raise unless both are image batches ``(N, C, H, W)`` of one shape, N >= 1, all finite."""
    y_true, y_pred = as_array(y_true, "y_true"), as_array(y_pred, "y_pred")
    if y_true.shape != y_pred.shape or y_true.ndim != 4 or len(y_true) == 0:
        raise ValueError(
            f"y_true and y_pred must be image batches (N, C, H, W) of one shape, N >= 1, got {y_true.shape} and {y_pred.shape}."
        )
    check_finite_images(y_true, "y_true")
    check_finite_images(y_pred, "y_pred")


def in_memory(data, name: str) -> np.ndarray:
    """``data`` as an in-memory ndarray (targets on disk, h5py or zarr, are read whole: a score
    holds the predictions in memory anyway)."""
    data = as_array(data, name)
    return data if isinstance(data, np.ndarray) else np.asarray(data[:])


def check_finite_images(images, name: str) -> None:
    """A ValueError naming ``name`` if the images hold NaN or infinity (checked in chunks)."""
    for start, stop in _spans(len(images)):
        if not np.isfinite(np.asarray(images[start:stop], dtype=np.float64)).all():
            raise ValueError(f"{name} contains NaN or infinity.")


def _check_data_range(data_range) -> float:
    """``data_range`` as a float; a ValueError naming it unless it is a positive finite number."""
    if isinstance(data_range, bool) or not isinstance(data_range, numbers.Real) or not 0 < data_range < np.inf:
        raise ValueError(f"data_range must be the positive span of the image values (e.g. 1.0 or 255), got {data_range!r}.")
    return float(data_range)


def per_image_ssim(y_true: np.ndarray, y_pred: np.ndarray, *, data_range: float) -> np.ndarray:
    """SSIM (Wang et al. 2004; Gaussian window 11, sigma 1.5) of each image, ``(N,)``."""
    data_range = _check_data_range(data_range)
    return np.concatenate([ssim(a, b, data_range).numpy() for a, b in _chunks(y_true, y_pred)])


def structural_similarity(y_true: np.ndarray, y_pred: np.ndarray, *, data_range: float) -> float:
    """Mean SSIM (Wang et al. 2004; Gaussian window 11, sigma 1.5) over images."""
    return float(np.mean(per_image_ssim(y_true, y_pred, data_range=data_range)))


def peak_signal_noise_ratio(y_true: np.ndarray, y_pred: np.ndarray, *, data_range: float) -> float:
    """Mean over images of PSNR = 10 log10(data_range^2 / MSE), in dB (inf if identical)."""
    data_range = _check_data_range(data_range)
    mse = np.concatenate([(a - b).square().mean(dim=(1, 2, 3)).numpy() for a, b in _chunks(y_true, y_pred)])
    with np.errstate(divide="ignore"):
        return float(np.mean(10 * np.log10(data_range**2 / mse)))


def _spans(n: int):
    """``(start, stop)`` of consecutive chunks of ``n`` rows."""
    return ((start, min(start + _CHUNK, n)) for start in range(0, n, _CHUNK))


def _standardized(images, start: int, stop: int) -> np.ndarray:
    """Images ``start:stop`` flattened, centred and scaled to unit norm, float64 ``(rows, pixels)``
    (a copy). A constant image becomes zeros: it correlates 0 with everything."""
    rows = np.array(images[start:stop], dtype=np.float64).reshape(stop - start, -1)
    rows -= rows.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.divide(rows, norm, out=np.zeros_like(rows), where=norm > 0)


def _check_pair(y_true, y_pred) -> int:
    """Number of images; raise unless both hold the same number of finite images of the same size."""
    if not (hasattr(y_true, "shape") and hasattr(y_pred, "shape")):
        raise TypeError(f"y_true and y_pred must be arrays, got {type(y_true).__name__} and {type(y_pred).__name__}.")
    sizes = [int(np.prod(shape[1:])) if len(shape) > 1 else 0 for shape in (y_true.shape, y_pred.shape)]
    if len(y_true) != len(y_pred) or sizes[0] != sizes[1] or sizes[0] == 0 or len(y_true) == 0:
        raise ValueError(
            f"y_true and y_pred must hold the same number of images (at least one) of the same size, "
            f"got shapes {y_true.shape} and {y_pred.shape}."
        )
    check_finite_images(y_true, "y_true")
    check_finite_images(y_pred, "y_pred")
    return len(y_true)


def per_image_correlation(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Pearson correlation between the pixels of each true and predicted image, ``(N,)``.

    A constant image (no variance) counts as a correlation of 0.
    """
    n = _check_pair(y_true, y_pred)
    return np.concatenate([(_standardized(y_true, *span) * _standardized(y_pred, *span)).sum(1) for span in _spans(n)])


def pixel_correlation(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean over images of the Pearson correlation between true and predicted pixels.

    A constant image (no variance) counts as a correlation of 0.
    """
    return float(np.mean(per_image_correlation(y_true, y_pred)))


def reconstruction_scores(y_true: np.ndarray, y_pred: np.ndarray, *, data_range: float) -> tuple[float, float, float]:
    """``(SSIM, PSNR in dB, pixel correlation)``, each the mean over frames."""
    return (
        structural_similarity(y_true, y_pred, data_range=data_range),
        peak_signal_noise_ratio(y_true, y_pred, data_range=data_range),
        pixel_correlation(y_true, y_pred),
    )


def pooled_r2(y_true: np.ndarray, y_pred: np.ndarray, sample_weight=None) -> float:
    """R² pooled over all outputs: 1 - sum of squared errors / sum of squares about the
    per-output mean, both summed over samples and outputs (pixels).

    Equal to ``sklearn.metrics.r2_score(..., multioutput="variance_weighted")``: pixels
    that never change (a constant background) count for nothing, instead of each counting
    as a perfect or a zero score as in the uniform average. Computed in chunks. Raises a
    ValueError for empty, mismatched or non-finite inputs and for weights that are not one
    non-negative number per sample, summing above 0 (where ``r2_score`` raises, or returns NaN).
    """
    y_true, y_pred = (in_memory(a, name) for a, name in ((y_true, "y_true"), (y_pred, "y_pred")))
    y_true, y_pred = (a.reshape(len(a), -1) if a.ndim == 1 else a for a in (y_true, y_pred))  # one output per sample
    n = _check_pair(y_true, y_pred)
    weights = np.ones(n) if sample_weight is None else _check_sample_weight(sample_weight, n)
    flat_true, flat_pred = y_true.reshape(n, -1), y_pred.reshape(n, -1)
    mean = np.zeros(flat_true.shape[1])
    for start in range(0, n, _CHUNK):
        mean += weights[start : start + _CHUNK] @ flat_true[start : start + _CHUNK].astype(np.float64)
    mean /= weights.sum()
    residual = total = 0.0
    for start in range(0, n, _CHUNK):
        w = weights[start : start + _CHUNK, None]
        chunk = flat_true[start : start + _CHUNK].astype(np.float64)
        residual += float((w * (chunk - flat_pred[start : start + _CHUNK]) ** 2).sum())
        total += float((w * (chunk - mean) ** 2).sum())
    if total == 0:
        return 1.0 if residual == 0 else 0.0
    return 1 - residual / total


def _check_sample_weight(sample_weight, n: int) -> np.ndarray:
    """Float64 weights ``(n,)``; a ValueError naming ``sample_weight`` unless one finite,
    non-negative weight per sample, not all zero."""
    weights = np.asarray(as_array(sample_weight, "sample_weight"), dtype=np.float64)
    if weights.shape != (n,):
        raise ValueError(f"sample_weight must have one weight per sample ({n}), got shape {weights.shape}.")
    if not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() == 0:
        raise ValueError("sample_weight must be finite and non-negative, with at least one weight above 0.")
    return weights


# ------------------------------------------------------------- identification
#: Correlations closer than this count as ties. They are float32 products of unit vectors, whose
#: rounding depends on where a pair falls in the matrix product: copies of one frame need not
#: give bit-equal values.
_TIE = 1e-5


def check_frame_index(frame_index, n: int) -> np.ndarray:
    """``frame_index`` checked as ``n`` integer frame numbers, or ``0 .. n-1`` when ``None``."""
    if frame_index is None:
        return np.arange(n)
    frames = as_array(frame_index, "frame_index")
    if frames.ndim != 1 or len(frames) != n:
        raise ValueError(f"frame_index must be one frame number per image, shape ({n},), got shape {frames.shape}.")
    if frames.dtype.kind not in "iu":
        raise TypeError(f"frame_index must hold integer frame numbers, got dtype {frames.dtype}.")
    return frames.astype(np.int64)


def window_chance(n_samples: int, window: int, frame_index=None) -> float:
    """Chance level of :func:`window_accuracy`: the mean over images of the fraction of the
    ``n_samples`` candidates whose frame lies within ``window`` frames of the true one, about
    ``(2 * window + 1) / n_frames`` (less at the ends of each stretch)."""
    frames = np.sort(check_frame_index(frame_index, n_samples))
    window = check_count(window, "window", " (frames)")
    near = np.searchsorted(frames, frames + window, side="right") - np.searchsorted(frames, frames - window, side="left")
    return float(near.mean() / n_samples)


def _binomial_ratio(a: np.ndarray, k: np.ndarray, total: np.ndarray) -> np.ndarray:
    """``C(a, k) / C(total, k)`` elementwise (0 where ``a < k``), through log-gamma."""
    a, k, total = (np.asarray(v, dtype=np.float64) for v in np.broadcast_arrays(a, k, total))
    valid = a >= k
    a = np.where(valid, a, k)
    log = torch.lgamma(torch.from_numpy(np.stack([a + 1, total - k + 1, a - k + 1, total + 1]))).numpy()
    return np.where(valid, np.exp(log[0] + log[1] - log[2] - log[3]), 0.0)


@dataclass(frozen=True)
class FrameMatches:
    """How each reconstruction compares with the candidate frames, from :func:`frame_matches`.

    Attributes
    ----------
    below, tied : ndarray of int, ``(N,)``
        Distractor frames that reconstruction ``i`` correlates with less than with its own
        frame / equally (within 1e-5).
    distractors : ndarray of int, ``(N,)``
        Candidate frames that are not copies of its own (another ``frame_index``).
    window_hits : ndarray of float, ``(N,)``, or None
        Fraction of its best-correlated frames (one, but for ties) within ``window`` frames of
        the true one; ``None`` when no window was given.
    """

    below: np.ndarray
    tied: np.ndarray
    distractors: np.ndarray
    window_hits: np.ndarray | None = None

    def identification(self, n_way: int | None = 2) -> np.ndarray:
        """Per-image n-way identification, ``(N,)``: the probability that the image's own frame
        correlates best among itself and ``n_way - 1`` distractors drawn at random without
        replacement, ties broken at random. ``n_way=None``: among all distractors."""
        if n_way is not None and (isinstance(n_way, bool) or not isinstance(n_way, numbers.Integral) or n_way < 2):
            raise ValueError(f"n_way must be an integer >= 2 or None (all frames), got {n_way!r}.")
        fewest = int(self.distractors.min())
        if fewest == 0 or (n_way is not None and n_way - 1 > fewest):
            raise ValueError(
                f"n_way={n_way} needs {'at least one' if n_way is None else n_way - 1} distractor frames per image, "
                f"but an image has only {fewest} (frames that are not copies of its own)."
            )
        m = self.distractors if n_way is None else n_way - 1  # distractors drawn
        # Ties broken at random put the own frame above U of its t ties, U uniform on 0..t; it wins
        # when all m draws come from the b + U frames below it: C(b + U, m) / C(M, m). The mean over
        # U sums by the hockey-stick identity to [C(b+t+1, m+1) - C(b, m+1)] / ((t+1) C(M, m)).
        b, t, total = self.below, self.tied, self.distractors
        wins = _binomial_ratio(b + t + 1, m + 1, total + 1) - _binomial_ratio(b, m + 1, total + 1)
        # a probability: clipped against the rounding of the log-gamma arithmetic (1 + 3e-13 otherwise)
        return np.clip((total + 1) / ((m + 1) * (t + 1)) * wins, 0.0, 1.0)


def frame_matches(y_true, y_pred, frame_index=None, window: int | None = None) -> FrameMatches:
    """Compare every reconstruction ``y_pred[i]`` with every true frame ``y_true[j]`` by pixel
    correlation (float32), in chunks of 256 x N correlations: no N x N matrix is held, and the
    standardized true frames take the memory of ``y_true`` as float32.

    Parameters
    ----------
    y_true, y_pred : array ``(N, ...)``
        True frames and reconstructions, image-shaped or flat, the same size per image.
    frame_index : array of int ``(N,)``, optional
        Stimulus frame number of each image. Images with the true frame's number are not
        distractors; windows are measured in frame numbers. ``None``: ``0 .. N-1``.
    window : int, optional
        Compute ``window_hits`` for this window (in frames).
    """
    y_true, y_pred = as_array(y_true, "y_true"), as_array(y_pred, "y_pred")
    n = _check_pair(y_true, y_pred)
    frames = check_frame_index(frame_index, n)
    window = None if window is None else check_count(window, "window", " (frames)")
    candidates = np.empty((n, int(np.prod(y_true.shape[1:]))), dtype=np.float32)
    for start, stop in _spans(n):
        candidates[start:stop] = _standardized(y_true, start, stop)
    below, tied = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    hits = None if window is None else np.empty(n)
    for start, stop in _spans(n):
        correlation = _standardized(y_pred, start, stop).astype(np.float32) @ candidates.T
        rows = np.arange(start, stop)
        own = correlation[rows - start, rows][:, None]
        distractor = frames[None, :] != frames[rows, None]
        below[rows] = (distractor & (correlation < own - _TIE)).sum(1)
        tied[rows] = (distractor & (np.abs(correlation - own) <= _TIE)).sum(1)
        if window is not None:
            best = correlation >= correlation.max(axis=1, keepdims=True) - _TIE
            near = np.abs(frames[None, :] - frames[rows, None]) <= window
            hits[rows] = (best & near).sum(1) / best.sum(1)
    _, inverse, counts = np.unique(frames, return_inverse=True, return_counts=True)
    return FrameMatches(below, tied, n - counts[inverse], hits)


def identification_accuracy(y_true, y_pred, n_way: int | None = 2, frame_index=None) -> float:
    """Mean n-way identification of reconstructions by pixel correlation (as in MindEye).

    Reconstruction ``i`` is compared with its own frame ``y_true[i]`` and with ``n_way - 1``
    distractors drawn from the other frames of ``y_true``; it counts as identified when it
    correlates best with its own. The score is the exact expectation over all draws of
    distractors, computed from ranks (deterministic, no sampling); ties count as a coin toss
    (half, for 2-way). ``n_way=None``: top-1 among all frames.

    Chance is ``1 / n_way`` (0.5 for 2-way); for ``n_way=None`` it is ``1 / (distractors + 1)``,
    ``1 / n_frames`` for distinct frames. A prediction that ignores the input (the same
    image for every sample, such as the mean image) scores exactly chance for distinct frames.

    Parameters
    ----------
    y_true, y_pred : array ``(N, ...)``
        True frames and reconstructions, ``(N, H, W)``, ``(N, C, H, W)`` or flat.
    n_way : int >= 2 or None, default 2
    frame_index : array of int ``(N,)``, optional
        Stimulus frame number of each image: copies of the true frame (repeats of the movie)
        are not distractors; every image of another frame is one (a frame shown in every
        repeat is drawn as often as each repeat). ``None``: every image is its own frame.
    """
    return float(np.mean(frame_matches(y_true, y_pred, frame_index).identification(n_way)))


def window_accuracy(y_true, y_pred, window: int, frame_index=None) -> float:
    """Fraction of reconstructions whose best-correlated frame lies within ``window`` frames of
    the true one, as the CEBRA paper scores movie decoding (1 s at 30 Hz: ``window=30``).

    The candidates are all frames of ``y_true``; ties for best share the point. Chance is
    :func:`window_chance`, about ``(2 * window + 1) / n_frames``; constant predictions score
    exactly chance.

    Parameters
    ----------
    y_true, y_pred : array ``(N, ...)``
        True frames and reconstructions, ``(N, H, W)``, ``(N, C, H, W)`` or flat.
    window : int
        In frames; ``0`` asks for the exact frame (or a copy of it).
    frame_index : array of int ``(N,)``, optional
        Stimulus frame number of each image; distances are in frame numbers, so copies of
        the true frame count as hits and a window never reaches across a gap between
        separate stretches of the movie. ``None``: ``0 .. N-1``, one stretch.
    """
    if window is None:
        raise ValueError("window must be a non-negative integer (frames), got None.")
    return float(np.mean(frame_matches(y_true, y_pred, frame_index, window).window_hits))


def final_regressor(estimator):
    """The HalfUNetRegressor at the end of ``estimator`` (itself, or a Pipeline's last step)."""
    while hasattr(estimator, "steps"):
        estimator = estimator.steps[-1][1]
    check_is_fitted(estimator, "target_format_")
    return estimator


class ImageScorer:
    """Scorer ``scorer(estimator, X, y) -> float`` for ``scoring=`` (higher is better).

    Predicts ``X``, brings ``y`` and the prediction to images with the fitted target
    format, and applies ``metric`` with ``kwargs``; ``data_range`` comes from the fitted
    targets.
    """

    def __init__(self, metric, uses_data_range: bool = True, **kwargs):
        self.metric, self.uses_data_range, self.kwargs = metric, uses_data_range, kwargs

    def __call__(self, estimator, X, y) -> float:
        regressor = final_regressor(estimator)
        y = in_memory(y, "y")
        check_finite_images(y, "y")
        images_true = regressor.target_format_.to_images(y)
        images_pred = regressor.target_format_.to_images(estimator.predict(X))
        kwargs = {"data_range": regressor.data_range_} if self.uses_data_range else {}
        return self.metric(images_true, images_pred, **kwargs, **self.kwargs)

    def __repr__(self) -> str:
        return f"ImageScorer({', '.join([self.metric.__name__, *(f'{k}={v!r}' for k, v in self.kwargs.items())])})"


#: Mean SSIM of the predictions, Gaussian-weighted windows (11 pixels, sigma 1.5) as Wang et al.
#: 2004 compute it: like skimage's ``structural_similarity(..., gaussian_weights=True,
#: sigma=1.5, use_sample_covariance=False)``, not skimage's default (uniform 7x7 windows).
ssim_scorer = ImageScorer(structural_similarity)
psnr_scorer = ImageScorer(peak_signal_noise_ratio)
correlation_scorer = ImageScorer(pixel_correlation, uses_data_range=False)
#: 2-way identification by pixel correlation (chance 0.5). A scorer sees no ``frame_index``: in
#: cross-validation, repeats of a frame in one test fold count as distractors.
identification_scorer = ImageScorer(identification_accuracy, uses_data_range=False)


def window_accuracy_scorer(window: int) -> ImageScorer:
    """Scorer of :func:`window_accuracy` within ``window`` frames (samples of the test fold in
    time order; no ``frame_index``)."""
    return ImageScorer(window_accuracy, uses_data_range=False, window=check_count(window, "window", " (frames)"))
