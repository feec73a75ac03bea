"""The decoder networks: embedding ``(B, input_dim)`` -> images ``(B, C, H, W)``.

Outputs are always channels-first, also for one channel: ``(B, 1, H, W)``, never
``(B, H, W)``. Squeezing the channel axis (as the original guide's decoder did) makes the
output rank depend on a hyper-parameter and breaks code written for RGB.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ._checks import check_choice, check_output_shape, check_positive_int
from .blocks import (
    RRDB,
    ChannelAttention,
    FiLM,
    HighFrequencyHead,
    LatentToMap,
    PixelShuffleUp,
    ResidualChannelAttentionBlock,
    ResizeConvUp,
    activation,
    conv3x3,
    halving_sizes,
    linear,
    scale_init_,
)

#: ``latent_dim`` from which :class:`HalfUNetDecoder` with ``body="auto"`` uses the large body.
LARGE_LATENT_DIM = 1024

#: Values of ``body``: "light" is :class:`UNetDecoderOnly`, "large" :class:`ComplexLargeUNetDecoderOnly`,
#: "auto" the large one from ``LARGE_LATENT_DIM`` up (the original guide's rule).
BODIES = ("auto", "light", "large")

#: Output activations by name. Use ``"identity"`` (raw logits) when training with BCE.
OUTPUT_ACTIVATIONS = {"identity": nn.Identity, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}

#: Initial scale of the last convolution: outputs start with a standard deviation of
#: 0.01-0.1 for unit-norm inputs, below the spread of images scaled to [0, 1], so that
#: training starts near the target mean rather than ~100x off it.
HEAD_INIT_SCALE = 0.1


def check_batch(x: torch.Tensor, width: int, name: str) -> None:
    """Raise if ``x`` is not a floating ``(B, width)`` tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (batch, {width}), got {type(x).__name__}.")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}; convert it with .float().")
    if x.ndim != 2 or x.shape[1] != width:
        raise ValueError(f"{name} must have shape (batch, {width}), got {tuple(x.shape)}.")


class _LevelDecoder(nn.Module):
    """Common frame of both bodies: latent -> base map -> stages -> head -> activation.

    Subclasses build ``self.base`` (latent to the coarsest map), ``self.stages`` (modules
    called as ``stage(x, z)``, each ending one level finer) and ``self.head``.
    """

    def __init__(self, latent_dim, output_channels, output_shape, output_activation, gradient_checkpointing):
        super().__init__()
        self.latent_dim = check_positive_int(latent_dim, "latent_dim")
        self.output_channels = check_positive_int(output_channels, "output_channels")
        self.output_shape = check_output_shape(output_shape)
        check_choice(output_activation, OUTPUT_ACTIVATIONS, "output_activation")
        self.output_activation = OUTPUT_ACTIVATIONS[output_activation]()
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.sizes = halving_sizes(self.output_shape)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Decode ``z`` of shape ``(B, latent_dim)`` into ``(B, output_channels, H, W)``."""
        check_batch(z, self.latent_dim, "z")
        x = self.base(z)
        save_memory = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for stage in self.stages:
            x = checkpoint(stage, x, z, use_reentrant=False) if save_memory else stage(x, z)
        return self.output_activation(self.head(x))


def _level_widths(n_levels: int, base_channels: int, max_channels: int) -> list[int]:
    """Channels at level ``l`` (0 = output resolution): doubling per halving, capped."""
    return [min(max_channels, base_channels * 2 ** max(level - 1, 0)) for level in range(n_levels + 1)]


class UNetDecoderOnly(_LevelDecoder):
    """Light decoder: latent -> small map -> resize-conv stages with FiLM at every scale.

    Parameters
    ----------
    latent_dim : int
        Width of the latent vector ``z`` the forward pass takes, ``(B, latent_dim)``.
    output_channels : int
        1 for gray, 3 for RGB.
    output_shape : (int, int)
        Exact output ``(H, W)``; any size, not only powers of two. A side of one pixel
        (flat targets) is allowed; there, kernels shrink to 1 along that side.
    output_activation : {"identity", "sigmoid", "tanh"}
    gradient_checkpointing : bool
        Recompute each stage in the backward pass instead of storing it: same outputs and
        gradients, less memory.
    base_channels, max_channels : int
        Channels at half the output resolution, doubled per coarser level up to the cap.

    Notes
    -----
    Stages resize (nearest) then convolve, as Odena et al. (2016) advise against
    checkerboards. Nothing runs at full resolution but the output itself: an
    ICNR-initialised sub-pixel convolution maps the half-resolution features to
    ``output_shape`` (cropped, never interpolated). A full-resolution 3x3 convolution
    with one output channel was a third of the training time on CPU; this keeps the
    body near 0.35 GFLOPs per 64x128 image.
    """

    def __init__(
        self,
        latent_dim: int,
        output_channels: int = 1,
        output_shape: tuple[int, int] = (128, 256),
        *,
        output_activation: str = "identity",
        gradient_checkpointing: bool = False,
        base_channels: int = 32,
        max_channels: int = 256,
    ):
        super().__init__(latent_dim, output_channels, output_shape, output_activation, gradient_checkpointing)
        n_levels = len(self.sizes) - 1
        widths = _level_widths(n_levels, base_channels, max_channels)
        widths[0] = widths[min(1, n_levels)]
        self.base = LatentToMap(self.latent_dim, widths[n_levels], self.sizes[0])
        self.stages = nn.ModuleList(
            ResizeConvUp(widths[level + 1], widths[level], self.latent_dim, self.sizes[n_levels - level])
            for level in range(n_levels - 1, 0, -1)
        )
        if n_levels == 0:
            self.head = scale_init_(conv3x3(widths[0], self.output_channels, self.output_shape), HEAD_INIT_SCALE)
        else:
            self.head = PixelShuffleUp(widths[0], self.output_channels, self.output_shape)
            scale_init_(self.head.conv, HEAD_INIT_SCALE)


class _LargeLevel(nn.Module):
    """One level of the large body: feature block, FiLM with the latent, then x2 upsampling."""

    def __init__(self, block: nn.Module, channels: int, latent_dim: int, up: nn.Module):
        super().__init__()
        self.block, self.film, self.up = block, FiLM(latent_dim, channels), up

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.up(self.film(self.block(x), z))


class _MainPlusEdgeHead(nn.Module):
    """Output = 3x3 convolution of the features + high-frequency (edge) head."""

    def __init__(self, in_channels: int, out_channels: int, size: tuple[int, int]):
        super().__init__()
        self.main = scale_init_(conv3x3(in_channels, out_channels, size), HEAD_INIT_SCALE)
        self.edge = HighFrequencyHead(in_channels, out_channels, size)
        scale_init_(self.edge.body[-1], HEAD_INIT_SCALE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + self.edge(x)


class ComplexLargeUNetDecoderOnly(_LevelDecoder):
    """Large decoder: RRDB and channel attention, PixelShuffle upsampling, an edge head.

    Each level runs a feature block, is modulated by the latent vector (FiLM) and is
    upsampled x2 by an ICNR-initialised PixelShuffle convolution, cropped to the exact next
    size. Coarse levels (at most ``rrdb_max_pixels`` pixels) use an RRDB followed by channel
    attention; finer levels use a residual channel-attention block (RCAB), which costs a
    fraction of an RRDB where maps are large. The output is a 3x3 convolution plus a
    high-pass filtered edge head.

    Parameters are those of :class:`UNetDecoderOnly`, plus ``rrdb_max_pixels``.
    """

    def __init__(
        self,
        latent_dim: int,
        output_channels: int = 1,
        output_shape: tuple[int, int] = (128, 256),
        *,
        output_activation: str = "identity",
        gradient_checkpointing: bool = False,
        base_channels: int = 32,
        max_channels: int = 128,
        rrdb_max_pixels: int = 256,
    ):
        super().__init__(latent_dim, output_channels, output_shape, output_activation, gradient_checkpointing)
        n_levels = len(self.sizes) - 1
        widths = _level_widths(n_levels, base_channels, max_channels)
        widths[0] = max(base_channels // 2, 1)
        self.base = LatentToMap(self.latent_dim, widths[n_levels], self.sizes[0])
        stages = []
        for step, size in enumerate(self.sizes[:-1]):
            level, channels = n_levels - step, widths[n_levels - step]
            if size[0] * size[1] <= rrdb_max_pixels:
                block = nn.Sequential(RRDB(channels), ChannelAttention(channels))
            else:
                block = ResidualChannelAttentionBlock(channels)
            up = nn.Sequential(PixelShuffleUp(channels, widths[level - 1], self.sizes[step + 1]), activation())
            stages.append(_LargeLevel(block, channels, self.latent_dim, up))
        self.stages = nn.ModuleList(stages)
        size = self.output_shape
        self.head = nn.Sequential(
            conv3x3(widths[0], widths[0], size), activation(), _MainPlusEdgeHead(widths[0], self.output_channels, size)
        )


class HalfUNetDecoder(nn.Module):
    """Decode CEBRA embeddings into images with a light or a large body.

    The embedding is first mapped to a latent vector (linear layer + activation); the body
    decodes that vector: :class:`UNetDecoderOnly` (``body="light"``) or
    :class:`ComplexLargeUNetDecoderOnly` (``body="large"``); ``body="auto"`` takes the
    light one when ``latent_dim < 1024`` and the large one from 1024 up.

    Parameters
    ----------
    input_dim : int
        Embedding width ``D``; the forward pass takes a float tensor ``(B, D)``.
    output_channels : int, default 1
        1 for gray, 3 for RGB.
    output_shape : (int, int), default (128, 256)
        Exact image size ``(H, W)``, any positive sides.
    latent_dim : int or None, default None
        Internal latent width; ``None`` means ``input_dim``.
    output_activation : {"identity", "sigmoid", "tanh"}, default "identity"
        Applied to the output; keep ``"identity"`` (logits) when training with BCE on logits.
    gradient_checkpointing : bool, default False
        Trade compute for memory; outputs and gradients are unchanged.
    body : {"auto", "light", "large"}, default "auto"
        The body (see above); ``is_large`` says which one was built.

    Returns
    -------
    The forward pass returns ``(B, output_channels, H, W)``, channels-first even for one
    channel.
    """

    def __init__(
        self,
        input_dim: int,
        output_channels: int = 1,
        output_shape: tuple[int, int] = (128, 256),
        latent_dim: int | None = None,
        *,
        output_activation: str = "identity",
        gradient_checkpointing: bool = False,
        body: str = "auto",
    ):
        super().__init__()
        self.input_dim = check_positive_int(input_dim, "input_dim")
        self.latent_dim = self.input_dim if latent_dim is None else check_positive_int(latent_dim, "latent_dim")
        check_choice(body, BODIES, "body")
        self.is_large = body == "large" or (body == "auto" and self.latent_dim >= LARGE_LATENT_DIM)
        body = ComplexLargeUNetDecoderOnly if self.is_large else UNetDecoderOnly
        self.to_latent = nn.Sequential(linear(self.input_dim, self.latent_dim), activation())
        self.body = body(
            self.latent_dim,
            output_channels,
            output_shape,
            output_activation=output_activation,
            gradient_checkpointing=gradient_checkpointing,
        )

    @property
    def output_shape(self) -> tuple[int, int]:
        return self.body.output_shape

    @property
    def output_channels(self) -> int:
        return self.body.output_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Decode embeddings ``(B, input_dim)`` into images ``(B, output_channels, H, W)``."""
        check_batch(x, self.input_dim, "x")
        return self.body(self.to_latent(x))


class DecoderEnsemble(nn.Module):
    """Decoders trained side by side, each from its own initialisation; predicts their mean.

    Each member is fitted to the targets on its own (a deep ensemble, Lakshminarayanan et
    al. 2017). What a member learned by chance (from its initialisation) differs between
    members and averages out; what the data teach them all stays.

    Parameters
    ----------
    members : iterable of nn.Module
        Decoders of one input and output shape, ``(B, D) -> (B, C, H, W)``.

    Returns
    -------
    In training mode the forward pass returns every member's output, ``(K, B, C, H, W)``
    for ``K`` members, to be scored member by member
    (:func:`~cebra_halfunet.losses.per_member`); in eval mode their mean, ``(B, C, H, W)``.
    """

    def __init__(self, members):
        super().__init__()
        self.members = nn.ModuleList(members)
        if not self.members:
            raise ValueError("members must hold at least one decoder, got none.")

    @property
    def output_shape(self) -> tuple[int, int]:
        return self.members[0].output_shape

    @property
    def output_channels(self) -> int:
        return self.members[0].output_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = torch.stack([member(x) for member in self.members])
        return outputs if self.training else outputs.mean(dim=0)


class ImageOutput(nn.Module):
    """Maps the decoder's output to target units: ``offset + scale * decoder(x)``.

    ``offset`` is the training mean image (or its logit for BCE) and ``scale`` the pixel
    standard deviation, so the decoder starts at the mean image and learns deviations.
    """

    def __init__(self, decoder: nn.Module, offset: np.ndarray, scale: float):
        super().__init__()
        self.decoder = decoder
        self.register_buffer("offset", torch.as_tensor(offset, dtype=torch.float32)[None])
        self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.offset + self.scale * self.decoder(x)
