"""Training losses on image batches ``(B, C, H, W)`` and the SSIM they share with the metrics.

``"mse"`` gives smooth, blurry means; ``"l1"`` sharper edges; ``"bce"`` is for binary images
(the network then outputs logits); ``"ssim"`` rewards local structure; ``"l1_ssim"`` mixes
0.84 (1 - SSIM) + 0.16 L1, the mix Zhao et al. (2017, IEEE TCI) found best for restoration.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

#: SSIM constants and window of Wang et al. (2004): 11x11 Gaussian, sigma 1.5.
SSIM_K1, SSIM_K2, SSIM_WINDOW, SSIM_SIGMA = 0.01, 0.03, 11, 1.5
L1_SSIM_WEIGHT = 0.84


def _gaussian_kernel(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    coords = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def _odd_at_most(limit: int, size: int) -> int:
    size = min(size, limit)
    return size if size % 2 else size - 1


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float) -> torch.Tensor:
    """Mean structural similarity per image, ``(B,)``, of images ``(B, C, H, W)``.

    Gaussian-weighted statistics (population covariance) over the valid region, averaged
    over channels and pixels; the window shrinks to the largest odd size that fits small
    images. Matches ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
    use_sample_covariance=False)`` up to float rounding.
    """
    channels, height, width = x.shape[1:]
    kernel_h = _gaussian_kernel(_odd_at_most(SSIM_WINDOW, height), SSIM_SIGMA, x)
    kernel_w = _gaussian_kernel(_odd_at_most(SSIM_WINDOW, width), SSIM_SIGMA, x)
    weight_h = kernel_h.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    weight_w = kernel_w.view(1, 1, 1, -1).expand(channels, 1, 1, -1)

    def local_mean(t):
        return F.conv2d(F.conv2d(t, weight_h, groups=channels), weight_w, groups=channels)

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x**2
    var_y = local_mean(y * y) - mu_y**2
    cov = local_mean(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2, 3))


def _ssim_loss(data_range):
    return lambda pred, target: 1 - ssim(pred, target, data_range).mean()


def _l1_ssim_loss(data_range):
    def loss(pred, target):
        structure = 1 - ssim(pred, target, data_range).mean()
        return L1_SSIM_WEIGHT * structure + (1 - L1_SSIM_WEIGHT) * F.l1_loss(pred, target) / data_range

    return loss


_LOSSES = {
    "mse": lambda data_range: F.mse_loss,
    "l1": lambda data_range: F.l1_loss,
    "bce": lambda data_range: F.binary_cross_entropy_with_logits,
    "ssim": _ssim_loss,
    "l1_ssim": _l1_ssim_loss,
}

LOSS_NAMES = tuple(_LOSSES)


def per_member(loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``loss`` for ensembles: predictions ``(K, B, C, H, W)`` of ``K`` members against targets
    ``(B, C, H, W)`` score the mean of the members' losses; a plain batch ``(B, C, H, W)``
    (the ensemble's mean, in eval mode) is scored as it is."""

    def member_mean(pred, target):
        if pred.dim() == target.dim() + 1:
            return torch.stack([loss(member_pred, target) for member_pred in pred]).mean()
        return loss(pred, target)

    return member_mean


def make_loss(name: str, data_range: float = 1.0) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Loss ``f(pred, target) -> scalar`` (mean over the batch) by name.

    ``data_range`` is the span of target values (1 for images in [0, 1]); it sets SSIM's
    constants and puts L1 on SSIM's scale in ``"l1_ssim"``.
    """
    if name not in _LOSSES:
        raise ValueError(f"loss must be one of {sorted(_LOSSES)}, got {name!r}.")
    return _LOSSES[name](data_range)
