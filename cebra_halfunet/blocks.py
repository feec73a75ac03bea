"""Small network blocks, one idea each, used by the decoder bodies.

Every block maps ``(B, C, H, W)`` feature maps; the blocks that take the latent vector
``z`` of shape ``(B, latent_dim)`` re-inject it at their scale.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NEGATIVE_SLOPE = 0.2


def activation() -> nn.Module:
    """The hidden activation of both bodies (LeakyReLU, as in ESRGAN)."""
    return nn.LeakyReLU(NEGATIVE_SLOPE)


def _he_init(layer: nn.Module) -> nn.Module:
    """He initialisation for the LeakyReLU gain and zero bias, so signals keep their scale
    through the stack (PyTorch's default shrinks them about 2.5x per layer)."""
    nn.init.kaiming_uniform_(layer.weight, a=NEGATIVE_SLOPE)
    nn.init.zeros_(layer.bias)
    return layer


def conv3x3(in_channels: int, out_channels: int, size: tuple[int, int] | None = None) -> nn.Conv2d:
    """A size-preserving 3x3 convolution, He-initialised.

    Given the map ``size``, a side of one pixel gets a kernel of 1 on that axis: the
    outer taps would only ever see padding and never learn.
    """
    kernel = (3, 3) if size is None else tuple(1 if side == 1 else 3 for side in size)
    return _he_init(nn.Conv2d(in_channels, out_channels, kernel_size=kernel, padding=tuple(k // 2 for k in kernel)))


def linear(in_features: int, out_features: int) -> nn.Linear:
    """A linear layer, He-initialised."""
    return _he_init(nn.Linear(in_features, out_features))


class FiLM(nn.Module):
    """Feature-wise modulation by the latent vector: ``x * (1 + gamma(z)) + beta(z)``.

    This is how the decoder-only nets feed the latent vector in again at every scale
    (the decoder-only meaning of a U-Net skip connection). It starts as the identity.
    """

    def __init__(self, latent_dim: int, channels: int):
        super().__init__()
        self.to_scale_shift = nn.Linear(latent_dim, 2 * channels)
        nn.init.zeros_(self.to_scale_shift.weight)
        nn.init.zeros_(self.to_scale_shift.bias)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        scale, shift = self.to_scale_shift(z)[:, :, None, None].chunk(2, dim=1)
        return x * (1 + scale) + shift


class LatentToMap(nn.Module):
    """Projects the latent vector ``(B, latent_dim)`` to a ``(B, C, h, w)`` map."""

    def __init__(self, latent_dim: int, channels: int, size: tuple[int, int]):
        super().__init__()
        self.channels, self.size = channels, tuple(size)
        self.linear = linear(latent_dim, channels * size[0] * size[1])
        self.act = activation()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.act(self.linear(z).view(z.shape[0], self.channels, *self.size))


class ResizeConvUp(nn.Module):
    """Resize to an exact size, then convolve (no transposed-convolution checkerboards).

    Followed by FiLM with the latent vector and a residual 3x3 convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, latent_dim: int, size: tuple[int, int]):
        super().__init__()
        self.size = tuple(size)
        self.conv = conv3x3(in_channels, out_channels)
        self.film = FiLM(latent_dim, out_channels)
        self.refine = conv3x3(out_channels, out_channels)
        self.act = activation()

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=self.size, mode="nearest")
        x = self.act(self.film(self.conv(x), z))
        return x + self.act(self.refine(x))


def icnr_(weight: torch.Tensor, scale: int = 2) -> torch.Tensor:
    """ICNR initialisation (Aitken et al. 2017) of a conv weight that feeds PixelShuffle.

    Each group of ``scale**2`` output channels that PixelShuffle spreads over one
    ``scale x scale`` patch gets the same kernel, so that the shuffled output starts as
    a nearest-neighbour upsampling: no checkerboard at initialisation.
    """
    out_channels = weight.shape[0] // scale**2
    sub_kernel = torch.empty(out_channels, *weight.shape[1:])
    nn.init.kaiming_uniform_(sub_kernel, a=NEGATIVE_SLOPE)
    with torch.no_grad():
        weight.copy_(sub_kernel.repeat_interleave(scale**2, dim=0))
    return weight


class PixelShuffleUp(nn.Module):
    """Sub-pixel x2 upsampling (3x3 conv + PixelShuffle) with ICNR, cropped to an exact size.

    ``size`` is at most twice the input size on each side; the crop removes the extra
    row or column that an odd target size leaves, it never interpolates.
    """

    def __init__(self, in_channels: int, out_channels: int, size: tuple[int, int]):
        super().__init__()
        self.size = tuple(size)
        self.conv = conv3x3(in_channels, 4 * out_channels)
        icnr_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))[:, :, : self.size[0], : self.size[1]]


class ChannelAttention(nn.Module):
    """RCAN-style channel attention: squeeze (global mean), excite (two 1x1 convs), rescale.

    The excitation uses LeakyReLU rather than RCAN's ReLU: with few hidden units a ReLU
    can start dead for every input, and then its weights never learn.
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.excite = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, kernel_size=1),
            activation(),
            nn.Conv2d(hidden, channels, kernel_size=1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.excite(x)


class ResidualChannelAttentionBlock(nn.Module):
    """RCAB: conv, activation, conv, channel attention, plus the input."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            conv3x3(channels, channels), activation(), conv3x3(channels, channels), ChannelAttention(channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResidualDenseBlock(nn.Module):
    """ESRGAN's dense block: five 3x3 convs, each seeing all earlier maps, scaled residual."""

    def __init__(self, channels: int, growth: int = 32, residual_scale: float = 0.2):
        super().__init__()
        self.residual_scale = residual_scale
        self.convs = nn.ModuleList(conv3x3(channels + i * growth, growth) for i in range(4))
        self.fuse = conv3x3(channels + 4 * growth, channels)
        self.act = activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in self.convs:
            features.append(self.act(conv(torch.cat(features, dim=1))))
        return x + self.residual_scale * self.fuse(torch.cat(features, dim=1))


class RRDB(nn.Module):
    """Residual-in-residual dense block (Wang et al. 2018): three dense blocks, scaled residual."""

    def __init__(self, channels: int, growth: int = 32, residual_scale: float = 0.2):
        super().__init__()
        self.residual_scale = residual_scale
        self.blocks = nn.Sequential(*(ResidualDenseBlock(channels, growth, residual_scale) for _ in range(3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.residual_scale * self.blocks(x)


class HighFrequencyHead(nn.Module):
    """Edge head: predicts detail that is high-pass filtered before it joins the main output.

    Subtracting the 3x3 local mean leaves only what a blur removes, so the head adds edges
    and texture without shifting the image's brightness.
    """

    def __init__(self, in_channels: int, out_channels: int, size: tuple[int, int] | None = None):
        super().__init__()
        self.body = nn.Sequential(
            conv3x3(in_channels, in_channels, size), activation(), conv3x3(in_channels, out_channels, size)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        detail = self.body(x)
        return detail - F.avg_pool2d(detail, 3, stride=1, padding=1, count_include_pad=False)


def scale_init_(module: nn.Module, factor: float) -> nn.Module:
    """Multiply a layer's initial weights by ``factor`` (to set the output scale at init)."""
    with torch.no_grad():
        module.weight.mul_(factor)
    return module


def halving_sizes(output_shape: tuple[int, int], min_side: int = 4) -> list[tuple[int, int]]:
    """Map sizes from the coarsest to ``output_shape``, each level half the next (rounded up).

    Levels are added while both sides of the coarsest map stay at least ``min_side``, so a
    3x3 kernel never sees a map so small that its outer taps get no gradient.
    ``(128, 256)`` gives ``[(4, 8), (8, 16), ..., (128, 256)]``; ``(37, 61)`` gives
    ``[(5, 8), (10, 16), (19, 31), (37, 61)]``.
    """
    sizes = [tuple(output_shape)]
    while min(math.ceil(side / 2) for side in sizes[-1]) >= min_side:
        sizes.append(tuple(math.ceil(side / 2) for side in sizes[-1]))
    return sizes[::-1]
