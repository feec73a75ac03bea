"""Targets larger than memory: memmaps and array-likes are read batch by batch, never whole."""

import numpy as np
import pytest

from cebra_halfunet import HalfUNetRegressor, ssim_scorer
from cebra_halfunet.targets import _CHUNK

FAST = dict(latent_dim=16, max_epochs=3, batch_size=16, random_state=0)


class CountingArray:
    """A minimal array-like (shape, dtype, __len__, slice __getitem__) that records how many
    rows each read returns and refuses to be turned into an array whole."""

    def __init__(self, array):
        self.array, self.shape, self.dtype, self.reads = array, array.shape, array.dtype, []

    def __len__(self):
        return len(self.array)

    def __getitem__(self, index):
        if not isinstance(index, slice):
            raise TypeError("only slices")
        rows = self.array[index]
        self.reads.append(len(rows))
        return rows.copy()

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole array was loaded")


@pytest.mark.parametrize("form", ["nchw", "nhw", "flat"])
def test_memmap_targets_train_like_in_memory_targets(data, tmp_path, form):
    z, images = data
    y = {"nchw": images, "nhw": images[:, 0], "flat": images.reshape(len(images), -1)}[form]
    kwargs = {"output_shape": (8, 16)} if form == "flat" else {}
    stored = np.memmap(tmp_path / "frames.dat", dtype=y.dtype, mode="w+", shape=y.shape)
    stored[:] = y
    stored.flush()
    on_disk = np.memmap(tmp_path / "frames.dat", dtype=y.dtype, mode="r", shape=y.shape)
    expected = HalfUNetRegressor(**FAST, **kwargs).fit(z, y)
    model = HalfUNetRegressor(**FAST, **kwargs).fit(z, on_disk)
    np.testing.assert_array_equal(model.predict(z), expected.predict(z))
    assert model.history_ == [{**r, "duration_s": m["duration_s"]} for r, m in zip(expected.history_, model.history_)]


def test_array_like_targets_are_read_in_batches(data):
    z, images = data
    frames = (images * 255).astype(np.uint8)
    stored = CountingArray(frames)
    model = HalfUNetRegressor(**FAST).fit(z, stored)
    assert max(stored.reads) <= max(16, _CHUNK) and sum(stored.reads) > 3 * len(frames)
    np.testing.assert_array_equal(model.predict(z), HalfUNetRegressor(**FAST).fit(z, frames).predict(z))
    assert model.predict(z).dtype == np.uint8


def test_hdf5_targets(data, tmp_path):
    h5py = pytest.importorskip("h5py")
    z, images = data
    with h5py.File(tmp_path / "frames.h5", "w") as file:
        file.create_dataset("frames", data=images, chunks=(1, 1, 8, 16))
    with h5py.File(tmp_path / "frames.h5", "r") as file:
        model = HalfUNetRegressor(**FAST).fit(z, file["frames"])
        in_memory = HalfUNetRegressor(**FAST).fit(z, images)
        np.testing.assert_array_equal(model.predict(z), in_memory.predict(z))
        assert model.score(z, file["frames"]) == in_memory.score(z, images)  # scores read targets on disk too
        assert ssim_scorer(model, z, file["frames"]) == ssim_scorer(in_memory, z, images)


def test_array_like_targets_are_validated(data):
    z, images = data
    bad = images.copy()
    bad[7, 0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="y contains NaN"):
        HalfUNetRegressor(**FAST).fit(z, CountingArray(bad))
    with pytest.raises(TypeError, match="real numbers"):
        HalfUNetRegressor(**FAST).fit(z, CountingArray(images.astype(np.complex64)))
    with pytest.raises(ValueError, match="same number of samples"):
        HalfUNetRegressor(**FAST).fit(z[:30], CountingArray(images))


def test_copy_on_write_memmap_keeps_the_callers_changes(data, tmp_path):
    z, images = data
    stored = np.memmap(tmp_path / "frames.dat", dtype=np.float32, mode="w+", shape=images.shape)
    stored[:] = 0.5
    stored.flush()
    edited = np.memmap(tmp_path / "frames.dat", dtype=np.float32, mode="c", shape=images.shape)
    edited[:] = images  # changes that exist only in this process's copy-on-write pages
    model = HalfUNetRegressor(**FAST).fit(z, edited)
    np.testing.assert_array_equal(edited, images)
    np.testing.assert_array_equal(model.predict(z), HalfUNetRegressor(**FAST).fit(z, images).predict(z))
