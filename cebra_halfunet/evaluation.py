"""A decoder's evaluation that a paper can report: per-frame scores with block-bootstrap
intervals, baselines on the same embeddings, and controls refitted without the neural signal.

:func:`evaluate_decoder` scores a fitted (or fits an unfitted) estimator or Pipeline on held-out
frames and returns a :class:`DecoderReport`, which prints as a table.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields

import numpy as np
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from ._checks import check_count, check_positive_int
from .metrics import (
    check_frame_index,
    final_regressor,
    frame_matches,
    per_image_correlation,
    per_image_ssim,
    window_chance,
)
from .targets import as_array

#: Columns of the report.
METRICS = ("pixel corr", "SSIM", "2-way id", "window acc")


@dataclass(frozen=True)
class DecoderReport:
    """Scores of a decoder, its baselines and its controls on the same held-out frames.

    Attributes
    ----------
    rows : tuple of str
        The decoder, the baselines, the controls and, when frame numbers of the training
        samples were given, the CEBRA paper's frame-number decoding.
    metrics : tuple of str
        ``METRICS``: pixel correlation, SSIM, 2-way identification, window accuracy.
    per_frame : ndarray ``(n_rows, n_metrics, n_test)``
        Score of every test sample (NaN where a row has no such score).
    mean, low, high : ndarray ``(n_rows, n_metrics)``
        Mean over the test samples and its 95% moving-block-bootstrap interval.
    chance : ndarray ``(n_metrics,)``
        Chance level (NaN where there is none: pixel correlation and SSIM).
    window : int
        Window of the window accuracy, in frames.
    block_length : int
        Bootstrap block length, in test samples.
    shifts : ndarray of int
        Circular shifts (in training samples) of the targets in the shift controls.
    frame_index : ndarray of int ``(n_test,)``
        Frame number of each test sample: stretches of consecutive numbers are the
        stretches of the movie the test set holds.
    """

    rows: tuple
    metrics: tuple
    per_frame: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    chance: np.ndarray
    window: int
    block_length: int
    shifts: np.ndarray
    frame_index: np.ndarray

    def to_dict(self) -> dict[str, np.ndarray]:
        """Every field as a NumPy array."""
        return {field.name: np.asarray(getattr(self, field.name)) for field in fields(self)}

    def __str__(self) -> str:
        width = max(len(row) for row in (*self.rows, "chance")) + 2
        header = [f"window acc (±{self.window} frames)" if m == "window acc" else m for m in self.metrics]
        lines = [f"{'':<{width}}" + "".join(f"{name:>25}" for name in header)]
        for row, mean, low, high in zip(self.rows, self.mean, self.low, self.high):
            cells = ("—" if np.isnan(m) else f"{m:.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi in zip(mean, low, high))
            lines.append(f"{row:<{width}}" + "".join(f"{cell:>25}" for cell in cells))
        lines.append(f"{'chance':<{width}}" + "".join(f"{'—' if np.isnan(c) else f'{c:.3f}':>25}" for c in self.chance))
        lines.append(f"Means over {self.per_frame.shape[-1]} test samples [95% block-bootstrap interval, blocks of "
                     f"{self.block_length} samples].")
        return "\n".join(lines)


def _mean_correlation(images, first: np.ndarray, second: np.ndarray) -> float:
    """Mean pixel correlation of the image pairs ``(images[first[k]], images[second[k]])``,
    read in chunks."""
    chunk = 256
    return float(np.mean(np.concatenate([
        per_image_correlation(np.asarray(images[first[s : s + chunk]]), np.asarray(images[second[s : s + chunk]]))
        for s in range(0, len(first), chunk)
    ])))


def decorrelation(images, random_state=None) -> tuple[int, float]:
    """How far apart (in samples) frames stop resembling each other.

    Returns ``(lag, threshold)``: ``threshold`` lies 1/e of the way from the mean pixel
    correlation of unrelated frames (1,000 random pairs) to 1 (identical frames), and ``lag``
    is the smallest lag whose mean correlation of frames that far apart is at most
    ``threshold``, found by doubling then bisection (assumes it falls with the lag).
    """
    n = len(images)
    rng = check_random_state(random_state)
    unrelated = _mean_correlation(images, rng.randint(0, n, 1000), rng.randint(0, n, 1000))
    threshold = unrelated + (1 - unrelated) / np.e
    index = np.arange(n)

    def correlated(lag):
        return _mean_correlation(images, index[:-lag], index[lag:]) > threshold

    high = 1
    while high < n // 2 and correlated(high):
        high *= 2
    low = high // 2  # correlated at low (or low = 0), not at high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if correlated(middle) else (low, middle)
    return min(high, n - 1), threshold


def _control_shifts(images, n_shifts: int, rng) -> np.ndarray:
    """``n_shifts`` circular shifts of the training targets ``images``, drawn at random between
    their decorrelation lag and ``n - lag``, each kept only if the shifted frames correlate with
    the originals no more than the threshold of :func:`decorrelation` (a shift by a whole repeat
    of the movie does not pass)."""
    n = len(images)
    lag, threshold = decorrelation(images, rng)
    index, shifts = np.arange(n), []
    for _ in range(20 * n_shifts):
        if len(shifts) == n_shifts or n < 2 * lag + 1:
            break
        shift = int(rng.randint(lag, n - lag + 1))
        if _mean_correlation(images, index, np.roll(index, -shift)) <= threshold:
            shifts.append(shift)
    if len(shifts) < n_shifts:
        raise ValueError(
            f"No circular shift of the {n} training targets decorrelates them from themselves (decorrelation "
            f"lag {lag} samples): the training set is too short for the shift control."
        )
    return np.asarray(shifts, dtype=np.int64)


def block_bootstrap(values: np.ndarray, block_length: int, n_bootstrap: int = 1000, random_state=None):
    """95% moving-block-bootstrap interval of the mean over the last axis of ``values``.

    Each resample joins ``ceil(n / block_length)`` blocks of consecutive samples starting at
    random places, so that the autocorrelation within a block is kept. Returns ``(low, high)``,
    each of the shape of ``values`` without its last axis.
    """
    n = values.shape[-1]
    block_length = min(block_length, n)
    rng = check_random_state(random_state)
    starts = rng.randint(0, n - block_length + 1, size=(n_bootstrap, -(-n // block_length)))
    cumulative = np.concatenate([np.zeros((*values.shape[:-1], 1)), np.cumsum(values, axis=-1)], axis=-1)
    block_sums = cumulative[..., block_length:] - cumulative[..., : n - block_length + 1]
    means = block_sums[..., starts].sum(-1) / (starts.shape[1] * block_length)
    return np.percentile(means, 2.5, axis=-1), np.percentile(means, 97.5, axis=-1)


def _is_fitted(estimator) -> bool:
    try:
        check_is_fitted(estimator)
    except NotFittedError:
        return False
    return True


def evaluate_decoder(
    estimator,
    X_train,
    y_train,
    X_test,
    y_test,
    *,
    frame_index=None,
    frame_index_train=None,
    window: int = 30,
    baselines: dict | None = None,
    n_shuffles: int = 1,
    block_length: int | None = None,
    n_bootstrap: int = 1000,
    random_state=None,
) -> DecoderReport:
    """Score a decoder on held-out frames next to baselines and controls, with intervals.

    Rows of the report, all scored on ``(X_test, y_test)``:

    - the estimator (used as it is when fitted, else a clone fitted on the training data);
    - ``baselines`` on the same embeddings (the Pipeline's steps before the decoder, or
      ``X`` itself for a decoder alone);
    - controls, ``n_shuffles`` refits each of a clone of the whole estimator after the
      neural signal is removed: "shuffled in time" permutes the rows of ``X_train`` (neural
      data before CEBRA, or the embeddings for a decoder alone); "targets shifted" rolls
      ``y_train`` by a shift longer than the targets' autocorrelation and not aligned with a
      repeat of the movie (:func:`decorrelation`). Their per-frame scores are averaged over
      the refits. Each refit costs one fit of the estimator.
    - with ``frame_index_train``: the CEBRA paper's decoding, ``cebra.KNNDecoder`` (3 nearest
      neighbours, cosine) from the embedding to the frame number, scored as window accuracy.
      It can only name frames it was trained on: on frames held out of training it scores
      only where the window reaches into training frames (near the ends of held-out stretches).

    Columns (:data:`METRICS`): pixel correlation, SSIM, 2-way identification and window
    accuracy (see :mod:`cebra_halfunet.metrics`; chance 0.5 and :func:`window_chance`).
    Predictions are clipped to the range of the training targets before scoring. Intervals
    are 95% moving-block-bootstrap intervals over the test samples.

    Parameters
    ----------
    estimator : HalfUNetRegressor or Pipeline ending in one
    X_train, y_train, X_test, y_test : arrays
        Training and held-out data in the forms the estimator takes; the test samples in
        time order.
    frame_index, frame_index_train : array of int, optional
        Stimulus frame number of each test / training sample (repeats of the movie share
        numbers). ``frame_index=None``: the test samples are frames ``0 .. N-1``.
    window : int, default 30
        Window accuracy's window in frames: the CEBRA paper's 1 s at 30 frames/s.
    baselines : dict of name -> callable, optional
        ``decode(z_train, images_train, z_test) -> images_test`` as in
        :mod:`cebra_halfunet.baselines`; default: mean image, ridge and kNN.
    n_shuffles : int, default 1
        Refits per control; 0 leaves the controls out.
    block_length : int, optional
        Bootstrap block length in test samples. Default: the decorrelation lag of the test
        frames (:func:`decorrelation`), the lag after which frames stop resembling each other
        and so per-frame scores stop moving together.
    n_bootstrap : int, default 1000
    random_state : int, RandomState or None
        Seeds the controls' shuffles and shifts and the bootstrap.

    Returns
    -------
    DecoderReport
    """
    data = _checked_data(X_train, y_train, X_test, y_test, frame_index, frame_index_train)
    window = check_count(window, "window", " (frames)")
    n_shuffles, n_bootstrap = check_count(n_shuffles, "n_shuffles"), check_positive_int(n_bootstrap, "n_bootstrap")
    if block_length is not None:
        check_positive_int(block_length, "block_length")
    rng = check_random_state(random_state)
    estimator = estimator if _is_fitted(estimator) else clone(estimator).fit(data.X_train, data.y_train)
    scorer = _FrameScorer(final_regressor(estimator), data, window)
    rows = _decoder_rows(estimator, scorer, data, baselines)
    shifts = _control_shifts(scorer.images_train, n_shuffles, rng) if n_shuffles else np.zeros(0, dtype=np.int64)
    rows |= _control_rows(estimator, scorer, data, n_shuffles, shifts, rng)
    if data.frames_train is not None:
        rows["kNN frame number (CEBRA paper)"] = _frame_number_row(estimator, data, window)
    per_frame = np.stack(list(rows.values()))
    block_length = block_length or decorrelation(scorer.images_test, rng)[0]
    low, high = block_bootstrap(per_frame, block_length, n_bootstrap, rng)
    return DecoderReport(
        rows=tuple(rows), metrics=METRICS, per_frame=per_frame, mean=per_frame.mean(axis=-1), low=low, high=high,
        chance=np.array([np.nan, np.nan, 0.5, window_chance(len(data.y_test), window, data.frames)]),
        window=window, block_length=int(block_length), shifts=shifts, frame_index=data.frames,
    )


@dataclass(frozen=True)
class _EvaluationData:
    """The checked inputs of :func:`evaluate_decoder`."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    frames: np.ndarray  # frame number of each test sample
    frames_train: np.ndarray | None


def _checked_data(X_train, y_train, X_test, y_test, frame_index, frame_index_train) -> _EvaluationData:
    """The arrays, each checked (numbers, matching lengths, frame numbers), named in errors."""
    named = zip((X_train, y_train, X_test, y_test), ("X_train", "y_train", "X_test", "y_test"))
    X_train, y_train, X_test, y_test = (as_array(a, name) for a, name in named)
    for X, y, part in ((X_train, y_train, "train"), (X_test, y_test, "test")):
        if len(X) != len(y):
            raise ValueError(f"X_{part} and y_{part} must have the same number of samples, got {len(X)} and {len(y)}.")
    frames_train = None
    if frame_index_train is not None:
        if frame_index is None:
            raise ValueError("frame_index_train needs frame_index (the test samples' frame numbers) too.")
        frames_train = check_frame_index(frame_index_train, len(y_train))
    return _EvaluationData(X_train, y_train, X_test, y_test, check_frame_index(frame_index, len(y_test)), frames_train)


class _FrameScorer:
    """Per-frame scores ``(n_metrics, n_test)`` of predicted test images, clipped to the
    training targets' range first."""

    def __init__(self, regressor, data: _EvaluationData, window: int):
        self.target_format, self.data_range, self.window = regressor.target_format_, regressor.data_range_, window
        self.images_train = self.target_format.to_images(data.y_train)
        self.images_test = self.target_format.to_images(data.y_test)
        self.low, self.high = float(np.min(self.images_train)), float(np.max(self.images_train))
        self.frames = data.frames

    def __call__(self, prediction) -> np.ndarray:
        prediction = np.clip(np.asarray(prediction, dtype=np.float32), self.low, self.high)
        matches = frame_matches(self.images_test, prediction, self.frames, self.window)
        return np.stack([
            per_image_correlation(self.images_test, prediction),
            per_image_ssim(self.images_test, prediction, data_range=self.data_range),
            matches.identification(2),
            matches.window_hits,
        ])

    def of(self, estimator, X_test) -> np.ndarray:
        """The scores of an estimator's predictions."""
        return self(self.target_format.to_images(estimator.predict(X_test)))


def _embed(estimator):
    """The steps before the decoder (the embedding), or the identity for a decoder alone."""
    return estimator[:-1].transform if hasattr(estimator, "steps") and len(estimator.steps) > 1 else np.asarray


def _decoder_rows(estimator, scorer: _FrameScorer, data: _EvaluationData, baselines: dict | None) -> dict:
    """The decoder's row, then the baselines' on the same embeddings."""
    from .baselines import mean_image, nearest_neighbours, ridge

    if baselines is None:
        baselines = {"mean image": mean_image, "ridge": ridge, "kNN": nearest_neighbours}
    rows = {type(final_regressor(estimator)).__name__: scorer.of(estimator, data.X_test)}
    z_train, z_test = _embed(estimator)(data.X_train), _embed(estimator)(data.X_test)
    train_images = np.asarray(scorer.images_train, dtype=np.float32)
    for name, decode in baselines.items():
        rows[name] = scorer(decode(z_train, train_images, z_test))
    return rows


def _control_rows(estimator, scorer: _FrameScorer, data: _EvaluationData, n_shuffles: int, shifts, rng) -> dict:
    """The controls, each the mean scores of refits of the whole estimator without the signal."""
    if not n_shuffles:
        return {}

    def refit(X, y) -> np.ndarray:
        return scorer.of(clone(estimator).fit(X, y), data.X_test)

    X, y = data.X_train, data.y_train
    return {
        "control: neural data shuffled in time": np.mean([refit(X[rng.permutation(len(X))], y) for _ in range(n_shuffles)], axis=0),
        "control: targets circularly shifted": np.mean([refit(X, np.roll(y, shift, axis=0)) for shift in shifts], axis=0),
    }


def _frame_number_row(estimator, data: _EvaluationData, window: int) -> np.ndarray:
    """The CEBRA paper's decoding of the frame number (``cebra.KNNDecoder``), as window hits."""
    import cebra

    embed = _embed(estimator)
    with warnings.catch_warnings():  # one class per frame is the point here
        warnings.filterwarnings("ignore", "The number of unique classes", UserWarning)
        predicted = cebra.KNNDecoder().fit(embed(data.X_train), data.frames_train).predict(embed(data.X_test))
    hits = (np.abs(np.asarray(predicted) - data.frames) <= window).astype(np.float64)
    return np.stack([*np.full((3, len(data.frames)), np.nan), hits])
