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


# ------------------------------------------------------------ natural movie + V1
#: Photographs bundled with scikit-image (no download): a portrait, a street scene, a cat, a cup,
#: a rocket on its pad, coins. Fine textures (grass, star fields) are left out: mouse V1 does not
#: resolve them, so no decoder could reconstruct them.
PHOTOGRAPHS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "coins")


def load_photographs(names=PHOTOGRAPHS, rgb: bool = False) -> list[np.ndarray]:
    """Photographs shipped inside scikit-image, as float32 ``(C, h, w)`` in [0, 1].

    Gray photographs are repeated over three channels for ``rgb``; colour ones are turned
    into luminance (ITU-R 601) otherwise.
    """
    try:
        from skimage import data as images
    except ImportError as error:
        raise ImportError(
            "The natural movie is made of the photographs bundled with scikit-image: "
            "pip install 'cebra-halfunet[demo]' (or scikit-image)."
        ) from error
    photographs = []
    for name in names:
        photo = getattr(images, name)().astype(np.float32) / 255.0
        if photo.ndim == 2:
            photo = np.repeat(photo[None], 3 if rgb else 1, axis=0)
        else:
            photo = photo[..., :3].transpose(2, 0, 1)
            if not rgb:
                photo = np.tensordot(np.array([0.299, 0.587, 0.114], dtype=np.float32), photo, axes=1)[None]
        photographs.append(photo)
    return photographs


def _resize(photo: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Antialiased bilinear resize of ``(C, h, w)`` to ``(C, *size)``."""
    import torch

    resized = torch.nn.functional.interpolate(torch.from_numpy(photo)[None], size=size, mode="bilinear", antialias=True)
    return resized[0].clamp_(0, 1).numpy()


@dataclass(frozen=True)
class V1Recording:
    """A natural movie, a simulated V1 population's responses to it, and a train/test split.

    Attributes
    ----------
    frames : ndarray, float32, ``(T, C, H, W)``
        Movie frames in [0, 1] (C = 1 gray, 3 RGB).
    neural : ndarray, float32, ``(R, T, n_neurons)``
        Spike counts per frame in each of ``R`` repeats of the movie.
    is_test : ndarray, bool, ``(T,)``
        Frames in the held-out stretches.
    is_train : ndarray, bool, ``(T,)``
        Training frames: neither held out nor within ``gap`` frames of a held-out stretch.
    photo : ndarray, int, ``(T,)``
        Index into ``photographs`` of the photograph each frame shows.
    photographs : tuple of str
        Names of the scikit-image photographs.
    cell_type : ndarray of str, ``(n_neurons,)``
        ``"simple"`` or ``"complex"``.
    """

    frames: np.ndarray
    neural: np.ndarray
    is_test: np.ndarray
    is_train: np.ndarray
    photo: np.ndarray
    photographs: tuple
    cell_type: np.ndarray

    def train_test_split(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Single-trial samples ``X_train, y_train, X_test, y_test``.

        ``X`` ``(T_part * R, n_neurons)`` are the responses frame by frame, the ``R``
        repeats of each frame next to each other (not repeat after repeat, as a recording is); ``y`` ``(T_part * R, C, H, W)`` the
        frames shown. Test frames are never in the training part (nor are the ``gap``
        frames around them). A run of consecutive training samples (such as the stretches
        ``HalfUNetRegressor`` holds out for early stopping) shows frames that the rest of
        the training part does not, in any repeat, but for a frame cut at either end.
        """
        parts = []
        for mask in (self.is_train, self.is_test):
            parts.append(self.neural[:, mask].transpose(1, 0, 2).reshape(-1, self.neural.shape[-1]))
            parts.append(self.per_trial(self.frames, mask))
        return tuple(parts)

    def per_trial(self, values: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Per-frame ``values`` ``(T, ...)`` at the frames in ``mask``, laid out like the samples
        of :meth:`train_test_split`: ``(mask.sum() * R, ...)``, each frame's value once per
        repeat. E.g. ``per_trial(photo, is_test)`` labels the test samples with their photograph.
        """
        return np.repeat(values[mask], len(self.neural), axis=0)


def _eye_path(rng, n_frames, n_photos, fixation_frames, pan_speed, switch_probability):
    """Photo index and view position in [0, 1]^2 per frame: fixations with slow pans,
    separated by saccade-like jumps to a random position (and sometimes another photo)."""
    photo = np.empty(n_frames, dtype=np.int64)
    position = np.empty((n_frames, 2))
    current, t = rng.integers(n_photos), 0
    while t < n_frames:
        duration = max(1, int(rng.gamma(4.0, fixation_frames / 4.0)))
        if t and rng.random() < switch_probability:
            current = rng.integers(n_photos)
        start, angle = rng.uniform(0, 1, size=2), rng.uniform(0, 2 * np.pi)
        steps = start + np.arange(duration)[:, None] * pan_speed * np.array([np.sin(angle), np.cos(angle)])
        steps = np.abs((steps + 1) % 2 - 1)  # reflect at the borders
        photo[t : t + duration], position[t : t + duration] = current, steps[: n_frames - t]
        t += duration
    return photo, position


def _gabor_bank(rng, n_neurons, shape, degrees_per_pixel, complex_fraction):
    """Unit-norm Gabor filters ``(n_filters, H*W)`` and, per neuron, the indices of its
    filter(s): one (simple cell) or an even/odd quadrature pair (complex cell)."""
    height, width = shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    is_complex = rng.random(n_neurons) < complex_fraction
    # Niell & Stryker 2008 (mouse V1): preferred spatial frequency 0.02-0.16 cycles/degree,
    # median about 0.04; resolvable frequencies only (at most 0.25 cycles/pixel).
    frequency = np.exp(rng.uniform(np.log(0.02), np.log(0.16), n_neurons)) * degrees_per_pixel
    frequency = np.minimum(frequency, 0.25)
    # Jones & Palmer 1987: spatial-frequency bandwidths of 1-2 octaves; the Gaussian
    # envelope's sigma follows from the bandwidth, elongated 1-2x along the bars.
    octaves = rng.uniform(1.0, 2.0, n_neurons)
    k = np.sqrt(np.log(2) / 2)
    sigma = k * (2**octaves + 1) / (2**octaves - 1) / (np.pi * frequency)
    elongation = rng.uniform(1.0, 2.0, n_neurons)
    orientation, phase = rng.uniform(0, np.pi, n_neurons), rng.uniform(0, 2 * np.pi, n_neurons)
    centre_y, centre_x = rng.uniform(0, height, n_neurons), rng.uniform(0, width, n_neurons)
    filters, members = [], []
    for i in range(n_neurons):
        dy, dx = yy - centre_y[i], xx - centre_x[i]
        across = dx * np.cos(orientation[i]) + dy * np.sin(orientation[i])
        along = -dx * np.sin(orientation[i]) + dy * np.cos(orientation[i])
        envelope = np.exp(-(across**2) / (2 * sigma[i] ** 2) - along**2 / (2 * (elongation[i] * sigma[i]) ** 2))
        phases = (phase[i], phase[i] + np.pi / 2) if is_complex[i] else (phase[i],)
        members.append(list(range(len(filters), len(filters) + len(phases))))
        for value in phases:
            gabor = envelope * np.cos(2 * np.pi * frequency[i] * across + value)
            gabor -= envelope * gabor.sum() / envelope.sum()  # no response to uniform light
            filters.append((gabor / max(np.linalg.norm(gabor), 1e-12)).ravel())
    return np.asarray(filters, dtype=np.float32), members, is_complex


def make_natural_movie_v1(
    n_frames: int = 4000,
    output_shape: tuple[int, int] = (64, 128),
    rgb: bool = False,
    n_neurons: int = 800,
    n_repeats: int = 3,
    frame_rate: float = 15.0,
    field_of_view: float = 120.0,
    complex_fraction: float = 0.5,
    test_fraction: float = 0.2,
    n_test_stretches: int = 4,
    gap: int = 15,
    photographs=PHOTOGRAPHS,
    seed: int = 0,
) -> V1Recording:
    """A movie of real photographs and a simulated mouse V1 population watching it.

    Movie: the view (a window over 60% of a photograph) pans slowly during fixations of
    about 1.5 s (gamma-distributed, mean 22 frames) and jumps like a saccade between them,
    to a random place and, in 30% of the jumps, to another of the scikit-image
    ``photographs``. Frames are antialiased crops at ``output_shape``.

    Neurons: linear-nonlinear-Poisson models of V1. Simple cells (Jones & Palmer 1987)
    filter the frame's contrast with a Gabor and half-square the result (Heeger 1992);
    complex cells sum the squares of a quadrature pair (energy model, Adelson & Bergen
    1985); ``complex_fraction`` of the cells are complex. Receptive-field centres are
    uniform over the frame, orientations and phases uniform, spatial frequencies 0.02-0.16
    cycles/degree (Niell & Stryker 2008) with the frame spanning ``field_of_view`` degrees,
    bandwidths 1-2 octaves. Each neuron's drive is scaled to a spontaneous rate (lognormal,
    median 1 Hz) plus an evoked rate reaching its peak (lognormal, median 15 Hz) at the
    95th percentile of its drive; counts per frame are Poisson with mean rate / frame_rate,
    drawn independently in each of ``n_repeats`` repeats of the movie.

    Length: the default 4000 frames (about 4.5 minutes at 15 frames/s) give a decoder enough
    distinct views of the photographs to learn from; with 1500, ridge on the raw responses
    (``benchmarks/information.py``) and ridge, kNN and HalfUNet on CEBRA embeddings all
    stayed below the mean image on SSIM.

    Split: ``n_test_stretches`` contiguous stretches, ``test_fraction`` of the frames in all,
    spread over the movie, are held out; training frames keep ``gap`` frames away from them.

    Returns
    -------
    V1Recording
        ``frames`` ``(T, C, H, W)``, ``neural`` ``(R, T, n_neurons)``, the split masks and the
        photo shown per frame; ``train_test_split()`` gives single-trial arrays.
    """
    n_frames = check_positive_int(n_frames, "n_frames")
    height, width = check_output_shape(output_shape)
    n_neurons = check_positive_int(n_neurons, "n_neurons")
    n_repeats = check_positive_int(n_repeats, "n_repeats")
    n_test_stretches = check_positive_int(n_test_stretches, "n_test_stretches")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}.")
    if isinstance(gap, bool) or not isinstance(gap, int) or gap < 0:
        raise ValueError(f"gap must be a non-negative integer, got {gap!r}.")
    stretch = int(round(test_fraction * n_frames / n_test_stretches))
    block = n_frames // n_test_stretches
    if stretch < 1 or block - stretch - 2 * gap < 1:
        raise ValueError(
            f"n_frames={n_frames} is too short for {n_test_stretches} test stretches of {test_fraction} "
            f"of the frames with gap={gap}."
        )
    rng = np.random.default_rng(seed)
    photos = load_photographs(photographs, rgb)
    view = 0.6
    scaled = []
    for photo in photos:
        scale = max(height / (view * photo.shape[1]), width / (view * photo.shape[2]))
        scaled.append(_resize(photo, (round(photo.shape[1] * scale), round(photo.shape[2] * scale))))
    photo_index, position = _eye_path(rng, n_frames, len(photos), 22.0, 0.004, 0.3)
    frames = np.empty((n_frames, 3 if rgb else 1, height, width), dtype=np.float32)
    for t in range(n_frames):
        image = scaled[photo_index[t]]
        top = int(round(position[t, 0] * (image.shape[1] - height)))
        left = int(round(position[t, 1] * (image.shape[2] - width)))
        frames[t] = image[:, top : top + height, left : left + width]

    filters, members, is_complex = _gabor_bank(rng, n_neurons, (height, width), field_of_view / width, complex_fraction)
    luminance = frames.mean(axis=1).reshape(n_frames, -1)
    contrast = (luminance - luminance.mean()) / (luminance.std() + 1e-8)
    responses = contrast @ filters.T
    drive = np.stack([np.square(responses[:, m]).sum(1) if is_complex[i] else np.square(np.maximum(responses[:, m[0]], 0))
                      for i, m in enumerate(members)], axis=1)
    drive /= np.percentile(drive, 95, axis=0) + 1e-8
    spontaneous = rng.lognormal(np.log(1.0), 0.5, n_neurons)
    peak = rng.lognormal(np.log(15.0), 0.5, n_neurons)
    rates = (spontaneous + peak * drive) / frame_rate
    neural = rng.poisson(rates, size=(n_repeats, *rates.shape)).astype(np.float32)

    is_test = np.zeros(n_frames, dtype=bool)
    for k in range(n_test_stretches):
        end = (k + 1) * block - gap
        is_test[end - stretch : end] = True
    near_test = np.convolve(is_test, np.ones(2 * gap + 1), mode="same") > 0 if gap else is_test
    return V1Recording(
        frames=frames,
        neural=neural,
        is_test=is_test,
        is_train=~near_test,
        photo=photo_index,
        photographs=tuple(photographs),
        cell_type=np.where(is_complex, "complex", "simple"),
    )
