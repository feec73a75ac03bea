"""Image targets: the forms ``fit`` accepts, and the way back for ``predict``.

Targets come as ``(N, H, W)``, ``(N, C, H, W)``, channels-last ``(N, H, W, C)`` or flat
``(N, C*H*W)`` (what a Pipeline after ``cebra.CEBRA`` delivers; flattened ``(N, H*W*C)``
with ``target_layout="channels_last"``) with ``output_shape``; a 1-d ``(N,)`` target is
one value per sample. Internally they are ``(N, C, H, W)`` views of the caller's array: no
copy is made (channels-last data are a permuted view, and each batch is permuted as it is
read), uint8 frames stay uint8 until a batch is on the compute device.

The layout rule for a 4-d ``y`` (:func:`is_channels_last`) and the value rules
(:meth:`TargetFormat.with_values`: uint8 0/1 masks, probabilities for ``"bce"``, the range
predictions are clipped to) are decided once, in ``fit``, and kept in the fitted
:class:`TargetFormat`.

Targets larger than memory (a NumPy memmap, or any array-like with ``shape``, ``dtype``,
``__len__`` and ``__getitem__``: an HDF5 dataset, a zarr array) are read batch by batch
through :class:`DiskImages`, never loaded whole.
"""

from __future__ import annotations

import math
import mmap
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .splits import frame_digests

#: Rows read at a time when scanning the targets (bounds temporary memory).
_CHUNK = 1024


def _is_lazy(data) -> bool:
    """An array-like read on demand (HDF5 dataset, zarr array), not an in-memory array."""
    lazy = all(hasattr(data, name) for name in ("shape", "dtype", "__len__", "__getitem__"))
    return lazy and not isinstance(data, (np.ndarray, torch.Tensor, list, tuple))


def as_array(data, name: str) -> np.ndarray:
    """View ``data`` (NumPy array, memmap, CPU or CUDA tensor, nested list) as an ndarray.

    Arrays and memmaps are returned as they are, without a copy (but for views with
    reversed axes, copied in order); array-likes read on demand (h5py, zarr) too, after a
    check of their dtype. Object arrays are refused, even of numbers: convert them yourself,
    so that a ``None`` or a string is not read as a value; so are sparse matrices, scalars,
    ragged lists and float types wider than float64.
    """
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    elif hasattr(data, "toarray") and hasattr(data, "nnz"):  # scipy.sparse, without importing it
        raise TypeError(f"{name} must be a dense array, got a sparse {type(data).__name__}: pass {name}.toarray().")
    elif _is_lazy(data):
        _check_dtype(np.dtype(data.dtype), name)
        return data
    try:
        array = data if isinstance(data, np.ndarray) else np.asarray(data)
    except ValueError as error:  # ragged nested lists
        raise ValueError(f"{name} must be an array of equal-sized samples: {error}") from None
    if array.ndim == 0:
        raise ValueError(f"{name} must be an array with one entry per sample, got a scalar {array!r}.")
    if array.dtype == object:
        held = "None (a missing value)" if any(value is None for value in array.flat) else "Python objects"
        raise TypeError(
            f"{name} must hold real numbers (bool, integer or float), got dtype object holding {held} "
            f"(Unknown label type): convert it to a numeric array, e.g. np.asarray({name}, dtype=np.float32)."
        )
    _check_dtype(array.dtype, name)
    return np.ascontiguousarray(array) if any(stride < 0 for stride in array.strides) else array


def _check_dtype(dtype: np.dtype, name: str) -> None:
    """A TypeError naming ``name`` unless ``dtype`` is bool, an integer or a float of at most 64 bits."""
    if dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers (bool, integer or float), got dtype {dtype}.")
    if dtype.kind == "f" and dtype.itemsize > 8:
        raise TypeError(f"{name} must be float64 or narrower, got {dtype}: convert it with {name}.astype(np.float64).")


#: Channel counts of images (gray, RGB, RGBA): a 4-d ``y`` whose last axis has one of these
#: sizes, and whose second axis has not, is channels-last.
COLOUR_CHANNELS = (1, 3, 4)

#: Values of ``target_layout``.
LAYOUTS = ("auto", "channels_first", "channels_last")


def is_channels_last(shape: tuple[int, ...], output_channels=None, output_shape=None, layout: str = "auto") -> bool:
    """Whether a 4-d ``y`` of ``shape`` is ``(N, H, W, C)`` rather than ``(N, C, H, W)``.

    ``layout`` other than ``"auto"`` says it outright. Otherwise ``output_channels`` and
    ``output_shape`` settle it when only one reading agrees with them; failing that, a
    last axis of 1, 3 or 4 with a second axis that is not means channels-last, a second
    axis of 1, 3 or 4 (or neither) channels-first, and both raise a ValueError that says
    how to state the layout.
    """
    if layout != "auto":
        return layout == "channels_last"

    def agrees(channels: int, image: tuple) -> bool:
        return output_channels in (None, channels) and (output_shape is None or tuple(output_shape) == image)

    first, last = agrees(shape[1], tuple(shape[2:])), agrees(shape[3], tuple(shape[1:3]))
    if first != last:
        return last
    colour_first, colour_last = shape[1] in COLOUR_CHANNELS, shape[3] in COLOUR_CHANNELS
    if colour_first and colour_last:
        raise ValueError(
            f"y of shape {tuple(shape)} reads as channels-first (N, C, H, W) and as channels-last (N, H, W, C): "
            "state the layout with target_layout='channels_first' or 'channels_last' "
            "(or output_channels / output_shape where they tell the two apart)."
        )
    return colour_last and not colour_first


@dataclass(frozen=True)
class TargetFormat:
    """How the targets given to ``fit`` look (layout) and how their values are read.

    Attributes
    ----------
    ndim : int
        Rank of ``y`` in ``fit``: 1, 2 (flat), 3 ``(N, H, W)`` or 4.
    channels : int
    shape : (int, int)
        Image ``(H, W)``.
    dtype : numpy.dtype
        dtype of ``y`` in ``fit``. uint8 is read as 0-255 images (predicted back as uint8);
        other integer and bool targets are predicted as float32, floats as their own dtype.
    channels_last : bool
        ``y`` is ``(N, H, W, C)`` (4-d) or a flattened ``(N, H*W*C)`` (2-d); predictions
        come back in the same layout.
    binary : bool
        uint8 targets holding only 0 and 1: a mask, read as 0/1 (not 0 and 1/255) and
        predicted as float32 in [0, 1], as bool targets are.
    probabilities : bool
        Predictions are probabilities (loss ``"bce"``): float, whatever the target dtype
        (float32 for uint8, integer and bool targets), in [0, 1].
    value_range : (float, float) or None
        Smallest and largest training target, in stored units: what predictions are
        clipped to. None in formats read from files saved before it was kept.
    """

    ndim: int
    channels: int
    shape: tuple[int, int]
    dtype: np.dtype
    channels_last: bool = False
    binary: bool = False
    probabilities: bool = False
    value_range: tuple[float, float] | None = None

    @classmethod
    def infer(cls, y: np.ndarray, output_shape=None, output_channels=None, layout: str = "auto") -> TargetFormat:
        """Work out the image layout of ``y`` given the estimator's parameters (the value
        rules come after the scan of the values, :meth:`with_values`)."""
        ndim, channels_last = len(y.shape), False
        if ndim == 4:
            channels_last = is_channels_last(y.shape, output_channels, output_shape, layout)
            channels, shape = (y.shape[3], tuple(y.shape[1:3])) if channels_last else (y.shape[1], tuple(y.shape[2:]))
        elif ndim == 3:
            channels, shape = 1, tuple(y.shape[1:])
        elif ndim in (1, 2):
            size = 1 if ndim == 1 else y.shape[1]
            channels_last = ndim == 2 and layout == "channels_last"
            if output_shape is not None:
                pixels = output_shape[0] * output_shape[1]
                channels = output_channels if output_channels is not None else size // pixels
                if channels * pixels != size:
                    expected = f"{output_channels} x {pixels}" if output_channels else f"a multiple of {pixels}"
                    raise ValueError(
                        f"y has {size} values per sample, which does not fit output_shape={tuple(output_shape)}: "
                        f"expected {expected} (channels x H x W)."
                    )
                shape = tuple(output_shape)
            else:
                channels = output_channels if output_channels is not None else 1
                if size % channels:
                    raise ValueError(f"y has {size} values per sample, not a multiple of output_channels={channels}.")
                shape = (1, size // channels)
                form = "1-d (one value per sample, not an image)" if ndim == 1 else f"flat ({size} values per sample)"
                warnings.warn(
                    f"y is {form} and output_shape is not set: each sample is decoded "
                    f"as one row of pixels (a 1 x {size // channels} image), slowly and without the spatial "
                    "structure of images. Pass output_shape=(H, W) for flattened images.",
                    UserWarning,
                    stacklevel=5,
                )
        else:
            raise ValueError(
                f"y must have shape (N, H, W), (N, C, H, W), (N, H, W, C) or flattened (N, C*H*W), "
                f"got an array of rank {ndim}."
            )
        if output_shape is not None and tuple(output_shape) != shape:
            raise ValueError(f"y has images of size {shape}, but output_shape={tuple(output_shape)}.")
        if output_channels is not None and output_channels != channels:
            raise ValueError(f"Expected targets with output_channels={output_channels} channels, got {channels}.")
        return cls(ndim, int(channels), tuple(int(s) for s in shape), np.dtype(y.dtype), channels_last)

    def with_values(self, scan: TargetScan, probabilities: bool = False) -> TargetFormat:
        """This layout with the value rules for the scanned targets: uint8 whose largest
        value is 1 (all 0 and 1) is a mask; ``probabilities`` for ``"bce"``; the range."""
        binary = self.dtype == np.uint8 and scan.high <= 1
        return replace(self, binary=binary, probabilities=probabilities, value_range=(scan.low, scan.high))

    @property
    def form(self) -> tuple:
        """Rank, channels, image shape, dtype and layout: what must stay the same between
        ``fit`` and the ``partial_fit`` that continues it."""
        return self.ndim, self.channels, self.shape, self.dtype, self.channels_last

    def form_difference(self, other: TargetFormat) -> str:
        """In words, how the form of ``other`` differs from this one (``""``: it does not)."""
        names = ("rank", "channels", "image size", "dtype", "channels-last")
        return "; ".join(f"{name} {theirs} instead of {ours}" for name, ours, theirs in zip(names, self.form, other.form) if ours != theirs)

    def widened(self, scan: TargetScan) -> TargetFormat:
        """These rules, continued on the scanned targets (same layout): the range grows to
        take them in. Raises if a mask meets values above 1."""
        if self.binary and scan.high > 1:
            raise ValueError(f"y holds values up to {scan.high:g}, but the decoder was fitted on a 0/1 mask.")
        low, high = self.value_range or (scan.low, scan.high)
        return replace(self, value_range=(min(low, scan.low), max(high, scan.high)))

    def to_json(self) -> dict:
        """JSON-serialisable form (decoder files)."""
        return {
            "ndim": self.ndim, "channels": self.channels, "shape": list(self.shape), "dtype": self.dtype.str,
            "channels_last": self.channels_last, "binary": self.binary, "probabilities": self.probabilities,
            "value_range": None if self.value_range is None else list(self.value_range),
        }

    @classmethod
    def from_json(cls, values: dict) -> TargetFormat:
        """Inverse of :meth:`to_json`; formats from files saved before the layout and value
        rules were kept read as channels-first, without them (as those decoders predicted)."""
        dtype = np.dtype(values["dtype"])
        if dtype.kind not in "biuf":
            raise ValueError(f"target dtype must be bool, integer or float, got {dtype}.")
        value_range = values.get("value_range")
        return cls(
            int(values["ndim"]), int(values["channels"]), tuple(int(s) for s in values["shape"]), dtype,
            bool(values.get("channels_last", False)), bool(values.get("binary", False)),
            bool(values.get("probabilities", False)), None if value_range is None else tuple(map(float, value_range)),
        )

    @property
    def value_scale(self) -> float:
        """Factor from stored values to the [0, 1]-like units the network learns (1/255 for
        uint8 images, 1 for masks and everything else)."""
        return 1 / 255 if self.dtype == np.uint8 and not self.binary else 1.0

    @property
    def data_range(self) -> float:
        """Span of the values, as SSIM and PSNR take it: 255 for uint8 images, 1 for
        targets in [0, 1] (masks included) and constant ones, otherwise max - min (a 12-bit
        camera's frames in uint16 span their 0-4095 counts, not 0-65535)."""
        if self.value_scale != 1.0:
            return 255.0
        low, high = self.value_range
        return 1.0 if (0 <= low and high <= 1) or high == low else high - low

    @property
    def output_dtype(self) -> np.dtype:
        """dtype of ``predict``'s result."""
        if self.dtype.kind == "f":
            return self.dtype
        if self.dtype == np.uint8 and not (self.binary or self.probabilities):
            return self.dtype
        return np.dtype(np.float32)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample in the form ``fit`` received."""
        image = (self.channels, *self.shape)
        stored = (*self.shape, self.channels) if self.channels_last else image
        return {4: stored, 3: image[1:], 2: (int(np.prod(image)),), 1: ()}[self.ndim]

    def check(self, y: np.ndarray, name: str = "y") -> None:
        """Raise unless ``y`` has the per-sample shape seen in ``fit``."""
        if y.shape[1:] != self.sample_shape:
            raise ValueError(f"{name} must have samples of shape {self.sample_shape} as in fit, got {y.shape[1:]}.")

    def to_images(self, y: np.ndarray) -> np.ndarray | DiskImages:
        """``(N, C, H, W)`` view of ``y``: a reshaped (for channels-last, permuted) view, no
        copy for contiguous arrays, or :class:`DiskImages` for memmaps and array-likes, which
        are read batch by batch. Writing into the view of an array writes into the array
        (``predict`` fills its result that way)."""
        self.check(y)
        if isinstance(y, np.memmap) or _is_lazy(y):
            return DiskImages(y, self)
        return self.image_view(y)

    def image_view(self, rows: np.ndarray) -> np.ndarray:
        """``(n, C, H, W)`` view of ``n`` samples ``(n, *sample_shape)``."""
        if self.channels_last:
            return np.moveaxis(rows.reshape(len(rows), *self.shape, self.channels), -1, 1)
        return rows.reshape(len(rows), self.channels, *self.shape)

    def to_tensor(self, images: np.ndarray | DiskImages) -> torch.Tensor | DiskImages:
        """Tensor sharing memory with ``images`` where it can: uint8 and float32 stay as they
        are, channels-last views keep their strides (batches are permuted as they are
        indexed). :class:`DiskImages` stay as they are (indexing them gives tensors)."""
        if isinstance(images, DiskImages):
            return images
        images = _compact(images)
        if min(images.strides, default=0) < 0:  # torch cannot share memory with reversed axes
            images = np.ascontiguousarray(images)
        with warnings.catch_warnings():  # read-only memmaps: the tensor is only ever read
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(images)

    def encode_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """Stored target batch -> float32 in network units."""
        batch = batch.float()
        return batch * self.value_scale if self.value_scale != 1.0 else batch

    def decode_batch(self, batch: torch.Tensor, clip: bool = False) -> torch.Tensor:
        """Network output batch (float32, after the sigmoid for probabilities) -> values in
        ``output_dtype``, in the units of ``fit``'s ``y`` (probabilities: in [0, 1]).
        ``clip``: to ``value_range`` (when known)."""
        clip = clip and self.value_range is not None
        low, high = self.value_range if clip else (-math.inf, math.inf)
        if self.output_dtype == np.uint8:
            return (batch * 255).round_().clamp_(max(low, 0), min(high, 255)).to(torch.uint8)
        batch = batch.to(getattr(torch, self.output_dtype.name))
        return batch.clamp_(low * self.value_scale, high * self.value_scale) if clip else batch


def _compact(images: np.ndarray) -> np.ndarray:
    """Targets as training batches hold them: uint8 and float32 as they are, others as float32."""
    return images if images.dtype in (np.uint8, np.float32) else images.astype(np.float32)


class DiskImages:
    """Targets stored out of memory (memmap, HDF5, zarr, ...) seen as ``(N, C, H, W)`` images.

    Slicing with a ``slice`` gives a lazy view (like a tensor); indexing with a tensor or
    array of row indices reads those rows and returns a tensor, uint8 and float32 as
    stored, other dtypes as float32. Rows are read as runs of consecutive indices (one
    slice each), so any ``__getitem__`` that takes slices will do; after each read, the
    pages of a memmap are released from the process's resident memory, which stays small
    whatever the size of the file.
    """

    def __init__(self, data, target_format: TargetFormat, start: int = 0, stop: int | None = None):
        self.data, self.format = data, target_format
        self.start, self.stop = start, len(data) if stop is None else stop
        self.dtype = np.dtype(data.dtype)
        self.shape = (self.stop - self.start, target_format.channels, *target_format.shape)

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise ValueError("DiskImages slices must be contiguous.")
            return DiskImages(self.data, self.format, self.start + start, self.start + max(start, stop))
        return torch.from_numpy(_compact(self.read_rows(np.asarray(index))))

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of this view as an ``(n, C, H, W)`` ndarray."""
        return self.read_rows(np.arange(start, min(stop, len(self))))

    def read_rows(self, index: np.ndarray) -> np.ndarray:
        """The rows at ``index`` (increasing) as an ``(n, C, H, W)`` ndarray."""
        breaks = np.flatnonzero(np.diff(index) != 1) + 1
        runs = np.split(index, breaks) if len(index) else []
        rows = [np.asarray(self.data[self.start + run[0] : self.start + run[-1] + 1]) for run in runs]
        self._release()
        rows = np.concatenate(rows) if rows else np.empty((0, *self.format.sample_shape), self.dtype)
        return self.format.image_view(rows)

    def _release(self) -> None:
        """Unmap the memmap pages read so far (they stay in the page cache, not in RSS).
        Not for copy-on-write memmaps (mode "c"), whose changes live only in those pages."""
        mapping = getattr(self.data, "_mmap", None)
        if mapping is not None and getattr(self.data, "mode", None) != "c" and hasattr(mmap, "MADV_DONTNEED"):
            mapping.madvise(mmap.MADV_DONTNEED)


def _chunks(images: np.ndarray | DiskImages):
    """Consecutive blocks of at most ``_CHUNK`` samples (views of in-memory arrays)."""
    for start in range(0, len(images), _CHUNK):
        yield images.read(start, start + _CHUNK) if isinstance(images, DiskImages) else images[start : start + _CHUNK]


@dataclass
class TargetScan:
    """Facts about the targets gathered in one chunked pass (:func:`scan_targets`).

    Every per-frame fact is gathered in :meth:`add`, chunk by chunk: add a field and a
    line there to learn something more about the targets in the same read.

    Attributes
    ----------
    low, high : float
        Smallest and largest value, in stored units (NaN or infinity if present).
    total, squares : ndarray ``(C, H, W)``, float64
        Sum and sum of squares of each pixel over all frames, in stored units.
    left_out_total, left_out_squares : ndarray ``(C, H, W)``, float64
        The same over the frames set aside from training (:meth:`leave_out`).
    digests : list of ndarray ``S16``
        Each chunk's frame digests (:func:`~cebra_halfunet.splits.frame_digests`);
        concatenated by :attr:`frame_digests`.
    n_frames, n_left_out : int
    """

    low: float
    high: float
    total: np.ndarray
    squares: np.ndarray
    left_out_total: np.ndarray
    left_out_squares: np.ndarray
    digests: list = field(default_factory=list)
    n_frames: int = 0
    n_left_out: int = 0

    @classmethod
    def empty(cls, frame_shape: tuple[int, ...]) -> TargetScan:
        zeros = lambda: np.zeros(frame_shape, dtype=np.float64)  # noqa: E731
        return cls(np.inf, -np.inf, zeros(), zeros(), zeros(), zeros())

    def add(self, chunk: np.ndarray) -> None:
        """Take in a chunk of frames ``(n, C, H, W)``."""
        self.low, self.high = min(self.low, float(chunk.min())), max(self.high, float(chunk.max()))
        values = chunk.astype(np.float64)
        self.total += values.sum(axis=0)
        self.squares += np.square(values).sum(axis=0)
        self.digests.append(frame_digests(chunk))
        self.n_frames += len(chunk)

    @property
    def frame_digests(self) -> np.ndarray:
        """Digest of each frame's stored bytes, ``(N,)`` ``S16``: equal frames, equal digests."""
        return np.concatenate(self.digests) if self.digests else np.zeros(0, dtype="S16")

    def leave_out(self, images: np.ndarray | DiskImages, rows: np.ndarray) -> None:
        """Set the frames at ``rows`` (bool ``(N,)``: validation and gap rows) aside from the
        moments, reading only those rows again."""
        index = np.flatnonzero(rows)
        for start in range(0, len(index), _CHUNK):
            part = index[start : start + _CHUNK]
            values = (images.read_rows(part) if isinstance(images, DiskImages) else images[part]).astype(np.float64)
            self.left_out_total += values.sum(axis=0)
            self.left_out_squares += np.square(values).sum(axis=0)
        self.n_left_out += len(index)

    def moments(self, value_scale: float = 1.0) -> tuple[np.ndarray, float]:
        """Mean image ``(C, H, W)`` (float32) and the standard deviation of all pixels
        around it, over the training frames (those set aside subtracted from the totals),
        in units of ``value_scale`` times the stored values."""
        count = self.n_frames - self.n_left_out
        mean = (self.total - self.left_out_total) * value_scale / count
        mean_square = (self.squares - self.left_out_squares) * value_scale**2 / count
        variance = max(float((mean_square - mean**2).mean()), 0.0)
        return mean.astype(np.float32), float(np.sqrt(variance))


def scan_targets(images: np.ndarray | DiskImages, name: str = "y") -> TargetScan:
    """One chunked pass over the targets ``(N, C, H, W)`` (in memory or on disk): range,
    moments, frame digests; raises if they hold NaN or infinity.

    A NaN or an infinity anywhere makes the minimum or the maximum non-finite, so the
    range and the finiteness check come from the same pass as the moments.
    """
    scan = TargetScan.empty(images.shape[1:])
    for chunk in _chunks(images):
        scan.add(chunk)
    if not (np.isfinite(scan.low) and np.isfinite(scan.high)):
        raise ValueError(f"{name} contains NaN or infinity.")
    _check_float32_range(scan.low, scan.high, name)
    return scan


#: The smallest and the largest magnitude of values the network computes with (float32).
FLOAT32_TINY, FLOAT32_MAX = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)


def _check_float32_range(low: float, high: float, name: str) -> None:
    """A ValueError naming ``name`` for values that float32, in which the network computes,
    cannot tell apart or hold: a span below its smallest normal number, or beyond its largest."""
    span, largest = high - low, max(abs(low), abs(high))
    if largest > FLOAT32_MAX / 16 or 0 < span < 1e6 * FLOAT32_TINY:
        raise ValueError(
            f"{name} holds values in [{low:.3g}, {high:.3g}], which the network, computing in float32 (normal numbers "
            f"{FLOAT32_TINY:.2g} to {FLOAT32_MAX:.2g}), cannot resolve: rescale {name}, e.g. to [0, 1]."
        )
