"""Offline data for demos and tests: a generated movie and a simulated neural population.

Nothing is downloaded. :func:`make_moving_blobs` renders a movie of soft blobs drifting
along smooth random paths and a population of neurons tuned to the blobs' positions,
with Poisson spike counts per frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._checks import check_output_shape, check_positive_int


@dataclass(frozen=True)
class MovieRecording:
    """A movie and the neural responses to it.

    Attributes
    ----------
    frames : ndarray, float32, ``(T, C, H, W)``
        Movie frames in [0, 1].
    neural : ndarray, float32, ``(T, n_neurons)``
        Spike counts per frame.
    latents : ndarray, float32, ``(T, n_latents)``
        The variables that generated each frame (blob positions), for reference.
    """

    frames: np.ndarray
    neural: np.ndarray
    latents: np.ndarray


def _smooth_paths(rng: np.random.Generator, n_frames: int, n_paths: int, smoothness: int) -> np.ndarray:
    """Stationary smooth paths in [0, 1], ``(T, n_paths)``: low-pass filtered white noise.

    Stationary (unlike a random walk), so a held-out stretch at the end of the movie
    visits the same positions as the training part, in new combinations.
    """
    noise = rng.normal(size=(n_frames + 2 * smoothness, n_paths))
    kernel = np.hanning(2 * smoothness + 1)
    smooth = np.stack([np.convolve(noise[:, i], kernel, mode="valid") for i in range(n_paths)], axis=1)
    smooth /= smooth.std(axis=0)
    return 1 / (1 + np.exp(-1.5 * smooth[:n_frames]))


def make_moving_blobs(
    n_frames: int = 2000,
    output_shape: tuple[int, int] = (64, 128),
    channels: int = 1,
    n_blobs: int = 3,
    n_neurons: int = 120,
    seed: int = 0,
) -> MovieRecording:
    """Generate a movie of drifting blobs and neurons tuned to the blob positions.

    Each blob's centre follows a smooth path across the frame; frames are the sum of
    Gaussian blobs (per-blob colour for ``channels=3``) clipped to [0, 1]. Each neuron has
    a Gaussian tuning curve (place field) over one blob's position; counts are Poisson
    with a peak rate of 8 and a baseline of 0.2 spikes per frame.
    """
    n_frames = check_positive_int(n_frames, "n_frames")
    height, width = check_output_shape(output_shape)
    channels = check_positive_int(channels, "channels")
    rng = np.random.default_rng(seed)
    positions = _smooth_paths(rng, n_frames, 2 * n_blobs, smoothness=10)
    positions = positions.reshape(n_frames, n_blobs, 2)
    yy, xx = np.mgrid[0:height, 0:width]
    yy, xx = yy / max(height - 1, 1), xx / max(width - 1, 1)
    radius = 0.12
    colours = rng.uniform(0.4, 1.0, size=(n_blobs, channels))
    frames = np.zeros((n_frames, channels, height, width), dtype=np.float32)
    for blob in range(n_blobs):
        cy, cx = positions[:, blob, 0, None, None], positions[:, blob, 1, None, None]
        bump = np.exp(-((yy - cy) ** 2 + ((xx - cx) * width / height) ** 2) / (2 * radius**2))
        frames += bump[:, None] * colours[blob][None, :, None, None]
    np.clip(frames, 0, 1, out=frames)

    preferred_blob = rng.integers(0, n_blobs, size=n_neurons)
    centres = rng.uniform(0, 1, size=(n_neurons, 2))
    distance = ((positions[:, preferred_blob] - centres[None]) ** 2).sum(-1)
    rates = 0.2 + 8 * np.exp(-distance / (2 * 0.15**2))
    neural = rng.poisson(rates).astype(np.float32)
    return MovieRecording(frames, neural, positions.reshape(n_frames, -1).astype(np.float32))
