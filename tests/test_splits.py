"""The leak-free validation split over frames (cebra_halfunet.splits)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cebra_halfunet.splits import VALIDATION_GAP, default_gap, frame_digests, frame_ids, frame_validation_split


def repeat_major(n_frames, n_repeats, rng):
    return np.tile(np.arange(n_frames), n_repeats)


def interleaved(n_frames, n_repeats, rng):
    return np.repeat(np.arange(n_frames), n_repeats)


def uneven(n_frames, n_repeats, rng):
    """Repeats of different, random stretches of the movie (the first one shows all of it)."""
    parts = [np.arange(n_frames)]
    for _ in range(n_repeats - 1):
        start = rng.integers(0, n_frames - 1)
        parts.append(np.arange(start, rng.integers(start + 1, n_frames + 1)))
    return np.concatenate(parts)


LAYOUTS = [repeat_major, interleaved, uneven]


def assert_leak_free(movie_frame, split, gap):
    """No movie frame in both parts; no held-out and training sample within ``gap`` samples."""
    held, train = split.held_out, split.train
    assert held.any() and train.any()
    assert not set(movie_frame[held]) & set(movie_frame[train])
    assert not (held & split.excluded).any()
    for shift in range(1, gap + 1):
        assert not (held[:-shift] & train[shift:]).any()
        assert not (train[:-shift] & held[shift:]).any()


@settings(max_examples=60, deadline=None)
@given(
    layout=st.sampled_from(LAYOUTS),
    n_frames=st.integers(30, 120),
    n_repeats=st.integers(1, 5),
    fraction=st.floats(0.05, 0.3),
    gap=st.integers(0, 4),
    n_stretches=st.integers(1, 10),
    seed=st.integers(0, 2**16),
)
def test_exact_copies_are_found_by_hash_and_kept_on_one_side(layout, n_frames, n_repeats, fraction, gap, n_stretches, seed):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(n_frames, 1, 3, 4), dtype=np.uint8)
    movie_frame = layout(n_frames, n_repeats, rng)
    ids = frame_ids(frame_digests(frames[movie_frame]))
    np.testing.assert_array_equal(ids, np.unique(movie_frame, return_index=True)[1][movie_frame])
    split = frame_validation_split(ids, fraction, n_stretches=n_stretches, gap=gap)
    assert split.honest
    assert len(set(movie_frame[split.held_out])) == math.ceil(round(fraction * n_frames, 6))
    assert_leak_free(movie_frame, split, gap)


@settings(max_examples=30, deadline=None)
@given(layout=st.sampled_from(LAYOUTS), n_repeats=st.integers(2, 5), seed=st.integers(0, 2**16))
def test_noisy_copies_are_kept_on_one_side_through_groups(layout, n_repeats, seed):
    rng = np.random.default_rng(seed)
    movie_frame = layout(60, n_repeats, rng)
    noisy = rng.random((60, 1, 3, 4))[movie_frame] + rng.normal(scale=1e-3, size=(len(movie_frame), 1, 3, 4))
    assert len(np.unique(frame_ids(frame_digests(noisy)))) == len(movie_frame)  # no two rows bit-identical
    split = frame_validation_split(movie_frame.astype(str), 0.1, gap=2)  # any labels work as groups
    assert split.honest
    assert_leak_free(movie_frame, split, 2)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_near_copies_of_a_held_out_frame_stay_out_of_training(layout):
    """A slow movie: fixations of 10 frames whose bytes differ (a sub-pixel drift), 48 of them,
    shown 3 times. Hashes tell the near-copies apart; the default gap keeps them out of training."""
    rng = np.random.default_rng(0)
    fixation = np.repeat(np.arange(48), 10)
    frames = rng.random((48, 4, 8))[fixation] + 1e-3 * rng.random((480, 4, 8))
    shown = layout(480, 3, rng)
    split = frame_validation_split(frame_ids(frame_digests(frames[shown])))
    assert default_gap(48) == VALIDATION_GAP == 10  # 48 held-out frames: the whole gap, in 2 stretches
    assert_leak_free(shown, split, VALIDATION_GAP)
    assert not set(fixation[shown[split.held_out]]) & set(fixation[shown[split.train]])


def test_the_default_gap_is_at_most_half_the_held_out_frames():
    assert [default_gap(n) for n in (1, 2, 6, 19, 20, 400)] == [1, 1, 3, 9, 10, 10]
    split = frame_validation_split(np.arange(60))  # 6 frames held out: a gap of 3, not 10
    assert split.held_out.sum() == 6 and split.excluded.sum() == 3


def test_validation_fraction_counts_frames_not_samples():
    split = frame_validation_split(repeat_major(100, 4, None), 0.1, n_stretches=2, gap=1)
    assert split.held_out.sum() == 10 * 4
    np.testing.assert_array_equal(np.flatnonzero(split.held_out[:100]), [*range(45, 50), *range(95, 100)])
    # the gap: frames 44, 50 and 94 of every repeat, and frame 0 that follows frame 99 from repeat 2 on
    np.testing.assert_array_equal(np.flatnonzero(split.excluded[:100]), [0, 44, 50, 94])
    assert "10 of 100 distinct frames held out" in split.reason


def test_digests_are_per_row_and_chunkable():
    rows = np.arange(24, dtype=np.float32).reshape(4, 2, 3)
    rows[2] = rows[0]
    digests = frame_digests(rows)
    assert digests.shape == (4,) and digests.dtype == np.dtype("S16")
    np.testing.assert_array_equal(np.concatenate([frame_digests(rows[:3]), frame_digests(rows[3:])]), digests)
    np.testing.assert_array_equal(frame_ids(digests), [0, 1, 0, 3])
    assert frame_digests(np.negative(np.zeros((1, 2), np.float32)))[0] != frame_digests(np.zeros((1, 2), np.float32))[0]


def test_too_few_frames_falls_back_to_a_sample_split_with_a_warning():
    ids = np.tile(np.arange(3), 10)
    with pytest.warns(UserWarning, match="No frame-level validation split"):
        split = frame_validation_split(ids, 0.1, gap=3)
    assert not split.honest and not split.excluded.any()
    assert split.held_out.sum() == 3 and split.train.sum() == 27
    assert "sharing frames with training" in split.reason
    with pytest.warns(UserWarning, match="without a gap around them"):  # distinct frames: nothing shared
        split = frame_validation_split(np.arange(4), 0.5, gap=3)
    assert "sharing" not in split.reason and split.held_out.sum() == 2


@pytest.mark.parametrize(
    "arguments, match",
    [((np.zeros((2, 2)), 0.1), "ids must be one-dimensional"), ((np.arange(10), 0), "validation_fraction"),
     ((np.arange(10), 1.0), "validation_fraction"), ((np.arange(10), 0.1, 2), None)],
)
def test_bad_arguments_raise(arguments, match):
    if match is None:  # gap is keyword-only
        with pytest.raises(TypeError):
            frame_validation_split(*arguments)
    else:
        with pytest.raises(ValueError, match=match):
            frame_validation_split(*arguments)
    with pytest.raises(ValueError, match="gap"):
        frame_validation_split(np.arange(10), gap=-1)
