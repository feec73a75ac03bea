"""A validation split that no training sample leaks into, for recordings of repeated stimuli.

When a movie is shown several times, the same frame is the target of many samples. A
validation split over samples then holds out frames that the other repeats still train
on, and the validation loss measures memorisation: it keeps falling and early stopping
never fires. Here samples are grouped by the frame they show (bit-identical targets, found
by hashing each frame's stored bytes, or ``groups`` given by the user for repeats that are
not bit-identical) and whole frames are held out, in every repeat, with a gap of
neighbouring frames that neither part gets.

    digests = np.concatenate([frame_digests(chunk) for chunk in chunks_of_targets])
    split = frame_validation_split(frame_ids(digests), validation_fraction=0.1)
    train_rows, valid_rows = split.train, split.held_out
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass

import numpy as np

#: Frames on each side of a held-out stretch that neither part gets (see :func:`frame_validation_split`;
#: fewer where fewer frames are held out). A movie changes slowly: a fixation drawn at a fine
#: resolution is a run of near-copies, not one frame, and a held-out frame with near-copies in
#: training measures memorisation, as an exact copy would. With 3 frames, the validation SSIM on
#: such a movie (the suite's 128x256 condition) kept rising for 6 epochs while the test SSIM fell
#: after the first.
VALIDATION_GAP = 10

#: Stretches the validation frames of a fit are spread over (see :func:`validation_mask`).
VALIDATION_STRETCHES = 10

#: A split whose held-out and gap samples exceed this share of the samples warns.
LARGE_SPLIT = 1 / 3


def validation_mask(n_samples: int, n_valid: int, n_stretches: int = VALIDATION_STRETCHES) -> np.ndarray:
    """Boolean mask ``(n_samples,)`` of ``n_valid`` samples held out for validation.

    Samples are taken to be in time order (a recording). The held-out samples are
    ``min(n_stretches, n_valid)`` runs of consecutive samples, one at the end of each of as
    many equal parts of the recording. Each run is a stretch the training samples do not
    contain, so that neighbouring, correlated frames do not leak into the validation loss;
    spreading the runs keeps every part of the recording in training, where one stretch at
    the end would withhold the last scenes of a movie from the decoder altogether.
    """
    n_runs = max(min(n_stretches, n_valid), 1)
    parts = np.arange(n_runs + 1)
    train_lengths, valid_lengths = np.diff(parts * (n_samples - n_valid) // n_runs), np.diff(parts * n_valid // n_runs)
    pattern = np.stack([np.zeros(n_runs, dtype=bool), np.ones(n_runs, dtype=bool)], axis=1).ravel()
    return np.repeat(pattern, np.stack([train_lengths, valid_lengths], axis=1).ravel())


def frame_digests(rows) -> np.ndarray:
    """A 16-byte BLAKE2b digest of each row's stored bytes, ``(len(rows),)`` of dtype ``S16``.

    ``rows`` is one chunk of the targets (``(n, ...)``, any dtype: NumPy array, memmap slice
    or tensor on the CPU), so that the digests can be gathered in the one scan over the
    targets; concatenate the chunks' digests. Rows are equal exactly when their bytes are
    (so ``0.0`` and ``-0.0`` differ), up to a hash collision (probability about
    ``n**2 / 2**129``).
    """
    rows = np.ascontiguousarray(np.asarray(rows))
    if rows.ndim < 1:
        raise ValueError(f"rows must be a chunk of targets (n, ...), got a {rows.ndim}-d array.")
    flat = rows.reshape(len(rows), -1)
    return np.array([hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat], dtype="S16")


def frame_ids(keys) -> np.ndarray:
    """Frame id of each sample: the index of the first sample with the same key, ``(n,)`` int64.

    ``keys`` ``(n,)``: the digests of :func:`frame_digests`, or any labels that say which
    samples show the same frame (``groups``: frame or trial ids, for repeats that are not
    bit-identical). Ids are in order of first appearance, so ranking them numbers the
    distinct frames in the order the recording first shows them.
    """
    keys = np.asarray(keys)
    if keys.ndim != 1:
        raise ValueError(f"keys must be one-dimensional (one per sample), got shape {keys.shape}.")
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return first[inverse.ravel()].astype(np.int64)


@dataclass(frozen=True)
class ValidationSplit:
    """Which samples train, which validate, and which neither.

    Attributes
    ----------
    held_out : ndarray, bool, ``(n,)``
        Samples whose loss is the validation loss.
    excluded : ndarray, bool, ``(n,)``
        Samples in the gap around held-out frames: in neither part.
    honest : bool
        False when no frame-level split was possible and ``held_out`` is a split over
        samples that shares frames with training (see ``reason``).
    reason : str
        How the split was made, in words (for a fitted attribute or a warning).
    """

    held_out: np.ndarray
    excluded: np.ndarray
    honest: bool
    reason: str

    @classmethod
    def none(cls, n_samples: int, reason: str) -> ValidationSplit:
        """No sample held out (validation on other data, or none)."""
        nothing = np.zeros(n_samples, dtype=bool)
        return cls(nothing, nothing, True, reason)

    @property
    def train(self) -> np.ndarray:
        """Samples to train on while the held-out ones validate, ``(n,)`` bool."""
        return ~(self.held_out | self.excluded)


#: A frame shown in more separate runs of samples than this many times the median frame's
#: (a gray screen between stimuli) recurs: it stays in training, and gaps do not spread through it.
RECURRING = 4


def recurring_frames(ranks: np.ndarray, n_frames: int) -> np.ndarray:
    """Bool per frame (rank): shown in more than :data:`RECURRING` times the median number of
    separate runs of consecutive samples. A movie's frames run once per repeat (or a few
    times, where the eye path returns); a blank between stimuli runs between every two of them."""
    starts = np.r_[True, ranks[1:] != ranks[:-1]]
    runs = np.bincount(ranks[starts], minlength=n_frames)
    return runs > RECURRING * np.median(runs)


def _neighbours_within(frames: np.ndarray, marked: np.ndarray, gap: int, walls: np.ndarray) -> np.ndarray:
    """Frames (ranks) reachable from ``marked`` in at most ``gap`` steps between frames
    shown by consecutive samples, never into (nor through) the ``walls``."""
    before, after = frames[:-1], frames[1:]
    near = marked.copy()
    for _ in range(gap):
        grown = near.copy()
        grown[after[near[before]]] = True
        grown[before[near[after]]] = True
        grown &= ~walls | marked
        if np.array_equal(grown, near):
            break
        near = grown
    return near


def default_gap(n_held: int) -> int:
    """The gap of :func:`frame_validation_split` around ``n_held`` held-out frames:
    :data:`VALIDATION_GAP`, or half of them where they are fewer than twice that (at least 1)."""
    return min(VALIDATION_GAP, max(n_held // 2, 1))


def frame_validation_split(
    ids,
    validation_fraction: float = 0.1,
    *,
    n_stretches: int = VALIDATION_STRETCHES,
    gap: int | None = None,
) -> ValidationSplit:
    """Hold out stretches of frames, all their copies, with a gap of frames around them.

    Parameters
    ----------
    ids : array ``(n,)``
        Frame id per sample, in the samples' order (:func:`frame_ids`; any labels work:
        samples with equal ids show the same frame).
    validation_fraction : float in (0, 1)
        Share of the distinct *frames* held out (rounded up), not of the samples.
    n_stretches : int
        The held-out frames are at most ``n_stretches`` runs of frames consecutive in order
        of first appearance, spread as :func:`validation_mask` spreads them; fewer
        where needed for each run to be at least ``2 * gap`` frames long, so that the gaps
        exclude at most about as many frames as are held out.
    gap : int, optional
        Frames that some sample shows within ``gap`` samples of a sample of a held-out frame
        (in any repeat; neighbours in the order of the samples, so repeat-major, interleaved
        and uneven layouts alike) are excluded from both parts.

    Returns
    -------
    ValidationSplit
        No frame is in both parts, and no two samples within ``gap`` positions of each
        other are one held out, one training. When that leaves either part empty (too few
        distinct frames) the split falls back to :func:`validation_mask` over the
        samples, ``honest=False``, with a ``UserWarning``.
    """
    ids = np.asarray(ids)
    if ids.ndim != 1 or len(ids) < 2:
        raise ValueError(f"ids must be one-dimensional with at least two samples, got shape {ids.shape}.")
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction!r}.")
    if gap is not None and (isinstance(gap, bool) or not isinstance(gap, (int, np.integer)) or gap < 0):
        raise ValueError(f"gap must be a non-negative integer or None, got {gap!r}.")
    ranks = np.unique(frame_ids(ids), return_inverse=True)[1].ravel()  # frames numbered by first appearance
    n_all = int(ranks.max()) + 1
    recurring = recurring_frames(ranks, n_all)
    regular = np.flatnonzero(~recurring)  # in order of first appearance
    n_frames = len(regular)
    # round() first: 0.1 * 60 is 6.000000000000001 in floating point, not 6.
    n_valid = math.ceil(round(validation_fraction * n_frames, 6))
    gap = default_gap(n_valid) if gap is None else gap
    n_runs = max(min(n_stretches, n_valid // max(2 * gap, 1)), 1)
    held_frames = np.zeros(n_all, dtype=bool)
    held_frames[regular] = validation_mask(n_frames, n_valid, n_runs) if n_valid < n_frames else True
    gap_frames = _neighbours_within(ranks, held_frames, gap, recurring) & ~held_frames
    held_out, excluded = held_frames[ranks], gap_frames[ranks]
    if held_out.any() and (~held_out & ~excluded).any():
        reason = (
            f"{n_valid} of {n_frames} distinct frames held out in {n_runs} stretch(es), all "
            f"their copies ({held_out.sum()} samples); {excluded.sum()} samples within {gap} frames of them excluded"
        )
        if recurring.any():
            reason += (
                f"; {recurring.sum()} frame(s) recurring between others (in {int(np.sum(recurring[ranks]))} samples, e.g. "
                "a gray screen between stimuli) stay in training, and no gap spreads through them"
            )
        left_out = int(np.sum(held_out | excluded))
        if left_out > LARGE_SPLIT * len(ids):
            warnings.warn(
                f"The validation split leaves {left_out} of {len(ids)} samples out of training until its last phase "
                f"({reason}). Frame ids that are not frames (repeat, trial or block ids) do this: pass the stimulus "
                "frame of each sample, or X_val and y_val.",
                UserWarning,
                stacklevel=2,
            )
        return ValidationSplit(held_out, excluded, True, reason)
    shared = (
        ", sharing frames with training (the validation loss then rewards memorising)" if n_all < len(ids)
        else ", without a gap around them"
    )
    reason = (
        f"no frame-level validation split: {n_all} distinct frame(s) cannot give both a validation and a "
        f"training part with a gap of {gap}; {validation_fraction} of the samples held out instead{shared}"
    )
    warnings.warn(reason.capitalize() + ".", UserWarning, stacklevel=2)
    n_rows = min(math.ceil(round(validation_fraction * len(ids), 6)), len(ids) - 1)
    return ValidationSplit(validation_mask(len(ids), n_rows), np.zeros(len(ids), bool), False, reason)
