"""Image-quality metrics and the scikit-learn scorers built on them.

The metrics take image batches ``(N, C, H, W)`` (NumPy arrays, any real dtype) and
return the mean over images; they run in chunks, so memory stays bounded for any ``N``.
The scorers (``scoring=ssim_scorer`` in ``GridSearchCV`` or ``cross_val_score``) take
targets in any form that the fitted :class:`HalfUNetRegressor` accepted, flattened ones
inside a Pipeline included.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

from .losses import ssim
from .targets import as_array

_CHUNK = 256


def _chunks(y_true: np.ndarray, y_pred: np.ndarray):
    if y_true.shape != y_pred.shape or y_true.ndim != 4:
        raise ValueError(
            f"y_true and y_pred must be image batches (N, C, H, W) of one shape, got {y_true.shape} and {y_pred.shape}."
        )
    for start in range(0, len(y_true), _CHUNK):
        yield (torch.from_numpy(np.asarray(a[start : start + _CHUNK], dtype=np.float64)) for a in (y_true, y_pred))


def structural_similarity(y_true: np.ndarray, y_pred: np.ndarray, *, data_range: float) -> float:
    """Mean SSIM (Wang et al. 2004; Gaussian window 11, sigma 1.5) over images."""
    return float(np.mean(np.concatenate([ssim(a, b, data_range).numpy() for a, b in _chunks(y_true, y_pred)])))


def peak_signal_noise_ratio(y_true: np.ndarray, y_pred: np.ndarray, *, data_range: float) -> float:
    """Mean over images of PSNR = 10 log10(data_range^2 / MSE), in dB (inf if identical)."""
    mse = np.concatenate([(a - b).square().mean(dim=(1, 2, 3)).numpy() for a, b in _chunks(y_true, y_pred)])
    with np.errstate(divide="ignore"):
        return float(np.mean(10 * np.log10(data_range**2 / mse)))


def pixel_correlation(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean over images of the Pearson correlation between true and predicted pixels.

    A constant image (no variance) counts as a correlation of 0.
    """
    values = []
    for a, b in _chunks(y_true, y_pred):
        a, b = a.flatten(1), b.flatten(1)
        a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
        denominator = (a.norm(dim=1) * b.norm(dim=1)).numpy()
        numerator = (a * b).sum(1).numpy()
        values.append(np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0))
    return float(np.mean(np.concatenate(values)))


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
    as a perfect or a zero score as in the uniform average. Computed in chunks.
    """
    n = len(y_true)
    weights = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
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


def final_regressor(estimator):
    """The HalfUNetRegressor at the end of ``estimator`` (itself, or a Pipeline's last step)."""
    while hasattr(estimator, "steps"):
        estimator = estimator.steps[-1][1]
    check_is_fitted(estimator, "target_format_")
    return estimator


class ImageScorer:
    """Scorer ``scorer(estimator, X, y) -> float`` for ``scoring=`` (higher is better).

    Predicts ``X``, brings ``y`` and the prediction to images with the fitted target
    format, and applies ``metric``; ``data_range`` comes from the fitted targets.
    """

    def __init__(self, metric, uses_data_range: bool = True):
        self.metric, self.uses_data_range = metric, uses_data_range

    def __call__(self, estimator, X, y) -> float:
        regressor = final_regressor(estimator)
        images_true = regressor.target_format_.to_images(as_array(y, "y"))
        images_pred = regressor.target_format_.to_images(estimator.predict(X))
        kwargs = {"data_range": regressor.data_range_} if self.uses_data_range else {}
        return self.metric(images_true, images_pred, **kwargs)

    def __repr__(self) -> str:
        return f"ImageScorer({self.metric.__name__})"


ssim_scorer = ImageScorer(structural_similarity)
psnr_scorer = ImageScorer(peak_signal_noise_ratio)
correlation_scorer = ImageScorer(pixel_correlation, uses_data_range=False)
