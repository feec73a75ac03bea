"""Target layouts and value rules (issue 21, items 1, 2, 3, 7, 8): every layout read right
or refused, masks read as 0/1, predictions in the training range, in the layout of ``fit``."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.exceptions import ConvergenceWarning

from cebra_halfunet import HalfUNetRegressor
from cebra_halfunet.targets import DiskImages, TargetFormat, scan_targets

from .conftest import make_images
from .test_save_load import rewrite

FAST = dict(latent_dim=16, max_epochs=2, batch_size=16, ensemble_size=1, random_state=0)


def regressor(**kwargs):
    return HalfUNetRegressor(**(FAST | kwargs))


def nhwc(images):
    return np.ascontiguousarray(np.moveaxis(images, 1, -1))


# ------------------------------------------------------------------ item 1: layouts
@pytest.mark.parametrize(
    "shape, kwargs, channels_last",
    [
        ((5, 16, 32, 3), {}, True),  # what imageio, PIL, OpenCV give
        ((5, 16, 32, 1), {}, True),
        ((5, 3, 16, 32), {}, False),
        ((5, 16, 32, 5), {}, False),  # neither axis a colour count: channels-first, as before
        ((5, 16, 32, 5), {"output_channels": 5}, True),  # output_channels settles it
        ((5, 1, 8, 3), {"output_channels": 3}, True),
        ((5, 1, 8, 3), {"output_channels": 1}, False),
        ((5, 1, 8, 3), {"output_shape": (1, 8)}, True),
        ((5, 3, 8, 3), {"layout": "channels_last"}, True),
        ((5, 3, 8, 3), {"layout": "channels_first"}, False),
        ((5, 16, 32, 3), {"layout": "channels_first"}, False),
    ],
)
def test_the_layout_rule(shape, kwargs, channels_last):
    target_format = TargetFormat.infer(np.zeros(shape, np.float32), **kwargs)
    assert target_format.channels_last == channels_last
    assert target_format.channels == (shape[3] if channels_last else shape[1])


@pytest.mark.parametrize("shape, kwargs", [((5, 3, 8, 3), {}), ((5, 1, 4, 4), {}), ((5, 3, 8, 3), {"output_channels": 3})])
def test_a_layout_that_reads_both_ways_is_refused_with_how_to_state_it(shape, kwargs):
    z = np.zeros((5, 2), np.float32)
    with pytest.raises(ValueError, match="target_layout='channels_first' or 'channels_last'"):
        regressor(**kwargs).fit(z, np.zeros(shape, np.float32))


def test_channels_last_frames_are_read_as_colour_images_and_predicted_channels_last(data):
    z, images = make_images(channels=3)
    frames = nhwc(images)  # (60, 8, 16, 3)
    model = regressor().fit(z, frames)
    assert (model.target_format_.channels, model.target_format_.shape) == (3, (8, 16))
    assert model.predict(z).shape == frames.shape


# The same images in any layout train the same decoder (same seed): predictions equal after transposing.
LAYOUT_CASES = {
    "nhwc": (lambda images: nhwc(images), {}, lambda p: np.moveaxis(p, -1, 1)),
    "nhwc uint8": (lambda images: nhwc(np.round(images * 255).astype(np.uint8)), {}, lambda p: np.moveaxis(p, -1, 1)),
    "flat nhwc": (
        lambda images: nhwc(images).reshape(len(images), -1),
        {"target_layout": "channels_last", "output_shape": (8, 16)},
        lambda p: np.moveaxis(p.reshape(len(p), 8, 16, 3), -1, 1),
    ),
}


@pytest.mark.parametrize("case", sorted(LAYOUT_CASES))
def test_a_layout_trains_the_decoder_of_the_canonical_layout(case):
    z, images = make_images(channels=3)
    to_layout, kwargs, back = LAYOUT_CASES[case]
    y = to_layout(images)
    canonical = np.moveaxis(y, -1, 1) if y.ndim == 4 else images
    prediction = regressor(**kwargs).fit(z, y).predict(z)
    assert prediction.shape == y.shape and prediction.dtype == y.dtype
    expected = regressor().fit(z, np.ascontiguousarray(canonical)).predict(z)
    np.testing.assert_allclose(back(prediction), expected, atol=1e-5)


def test_channels_last_memmaps_are_permuted_per_batch_and_train_alike(tmp_path):
    z, images = make_images(channels=3)
    frames = nhwc(images)
    stored = np.memmap(tmp_path / "frames.dat", dtype=np.float32, mode="w+", shape=frames.shape)
    stored[:] = frames
    stored.flush()
    on_disk = np.memmap(tmp_path / "frames.dat", dtype=np.float32, mode="r", shape=frames.shape)
    target_format = TargetFormat.infer(on_disk)
    disk_images = target_format.to_images(on_disk)
    assert isinstance(disk_images, DiskImages) and disk_images.shape == images.shape
    np.testing.assert_array_equal(disk_images[np.array([2, 3, 7])].numpy(), images[[2, 3, 7]])
    prediction = regressor().fit(z, on_disk).predict(z)
    np.testing.assert_allclose(prediction, regressor().fit(z, frames).predict(z), atol=1e-6)


def test_in_memory_channels_last_targets_are_not_copied():
    frames = np.zeros((6, 8, 16, 3), np.uint8)
    target_format = TargetFormat.infer(frames)
    tensor = target_format.to_tensor(target_format.to_images(frames))
    assert tuple(tensor.shape) == (6, 3, 8, 16) and np.shares_memory(tensor.numpy(), frames)


def test_decoder_files_of_format_1_load_as_channels_first(data, tmp_path):
    z, images = data
    model = regressor().fit(z, images)
    model.save(tmp_path / "decoder")

    def as_version_1(header):
        header.update(format_version=1)
        header["params"].pop("target_layout")
        for name in ("channels_last", "binary", "probabilities", "value_range"):
            header["fitted"]["target_format_"].pop(name)

    rewrite(tmp_path / "decoder", edit_metadata=as_version_1)
    loaded = HalfUNetRegressor.load(tmp_path / "decoder")
    assert loaded.target_layout == "channels_first" and not loaded.target_format_.channels_last
    assert loaded.predict(z).shape == images.shape


# ------------------------------------------------------------- item 2: value rules
def test_uint8_masks_are_read_as_0_1_and_predicted_as_floats(data):
    z, images = data
    mask = images > 0.5
    for loss in ("l1", "bce"):
        prediction = regressor(loss=loss).fit(z, mask.astype(np.uint8)).predict(z)
        assert prediction.dtype == np.float32 and 0 <= prediction.min() and prediction.max() <= 1
        # the same decoder as on the float mask: the uint8 values are not divided by 255
        np.testing.assert_allclose(prediction, regressor(loss=loss).fit(z, mask.astype(np.float32)).predict(z), atol=1e-6)
    assert regressor().fit(z, mask.astype(np.uint8)).data_range_ == 1


def test_bce_refuses_uint8_images_and_says_to_divide_them(data):
    """Probabilities predicted for 0-255 frames would be scored against the 0-255 frames."""
    z, images = data
    frames = np.round(images * 255).astype(np.uint8)
    with pytest.raises(ValueError, match=r"loss='bce' needs targets in \[0, 1\].*divide 0-255 images by 255"):
        regressor(loss="bce").fit(z, frames)
    prediction = regressor(loss="bce").fit(z, frames / 255).predict(z)
    assert prediction.dtype == np.float64 and 0 <= prediction.min() and prediction.max() <= 1


def test_one_value_per_sample_warns_that_it_is_not_an_image(data):
    z, images = data
    with pytest.warns(UserWarning, match=r"y is 1-d \(one value per sample, not an image\)"):
        model = regressor(max_epochs=1).fit(z, images[:, 0, 0, 0])
    assert model.predict(z).shape == (len(z),)


def test_uint16_frames_are_counts_with_their_own_span(data):
    z, images = data
    counts = np.round(images * 4095).astype(np.uint16)  # a 12-bit camera
    model = regressor().fit(z, counts)
    assert model.data_range_ == counts.max() - counts.min()  # not 65535
    prediction = model.predict(z)
    assert prediction.dtype == np.float32
    assert counts.min() <= prediction.min() and prediction.max() <= counts.max()
    np.testing.assert_allclose(prediction, regressor().fit(z, counts.astype(np.float32)).predict(z), rtol=1e-5)


# ------------------------------------------------------------ item 3: flat y warns
def test_flat_y_without_output_shape_warns(data):
    z, images = data
    flat = images.reshape(len(images), -1)
    with pytest.warns(UserWarning, match=r"output_shape=\(H, W\)"):
        regressor(max_epochs=1).fit(z, flat)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", ConvergenceWarning)  # one epoch: still improving
        regressor(max_epochs=1, output_shape=(8, 16)).fit(z, flat)


# ------------------------------------------------ item 7: predictions in the range
def test_predictions_are_clipped_to_the_training_range_unless_turned_off(data, tmp_path):
    z, images = data
    y = images * 0.8 + 0.1
    clipped = regressor().fit(z, y).predict(z * 3)  # far embeddings: outputs leave the range
    raw = regressor(clip_predictions=False).fit(z, y).predict(z * 3)
    assert raw.min() < y.min() or raw.max() > y.max()
    np.testing.assert_array_equal(clipped, np.clip(raw, y.min(), y.max()))
    # decoder files saved before clipping existed predict as they did: unclipped
    model = regressor().fit(z, y)
    model.save(tmp_path / "decoder")
    rewrite(tmp_path / "decoder", edit_metadata=lambda header: header["params"].pop("clip_predictions"))
    np.testing.assert_array_equal(HalfUNetRegressor.load(tmp_path / "decoder").predict(z * 3), raw)


# ----------------------------------------------------- item 8: messages name the argument
@pytest.mark.parametrize(
    "make_args, match",
    [
        (lambda z, y: (z, y.astype(object)), "y must hold real numbers.*dtype object"),
        (lambda z, y: (z, np.where(np.arange(16) == 3, None, y.astype(object))), "y must hold.*None"),
        (lambda z, y: (np.full(z.shape, "a"), y), "X must hold real numbers"),
        (lambda z, y: (np.where(np.arange(4) == 0, "a", z.astype(object)), y), "X must hold real numbers"),
    ],
)
def test_objects_and_strings_raise_type_errors_naming_the_argument(data, make_args, match):
    z, images = data
    with pytest.raises(TypeError, match=match):
        regressor().fit(*make_args(z, images))


def test_predict_names_X_for_strings(data):
    z, images = data
    with pytest.raises(TypeError, match="X must hold real numbers"):
        regressor(max_epochs=1).fit(z, images).predict(np.full(z.shape, "a"))


# --------------------------------- property: what fit receives is what predict returns
DTYPES = [np.uint8, np.uint16, np.int16, np.bool_, np.float32, np.float64]


@st.composite
def target_cases(draw):
    """Canonical images ``(n, C, H, W)`` of any dtype (uint8 masks included), and ``y``
    holding them in one of the layouts and ranks ``fit`` takes, with the parameters."""
    n, channels = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    height, width = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    top = draw(st.sampled_from([1, 255])) if dtype == np.uint8 else 1000
    values = rng.random((n, channels, height, width))
    images = values > 0.5 if dtype == np.bool_ else np.round(values * top).astype(dtype)
    form = draw(st.sampled_from(["nchw", "nhwc", "flat", "flat nhwc"] + (["nhw"] if channels == 1 else [])))
    layout = "channels_last" if "nhwc" in form else "channels_first"
    stored = np.moveaxis(images, 1, -1) if layout == "channels_last" else images
    y = {"nhw": images[:, 0], "flat": images.reshape(n, -1), "flat nhwc": stored.reshape(n, -1)}.get(form, stored)
    kwargs = {"output_shape": (height, width)} if "flat" in form else {}
    return images, np.ascontiguousarray(y), kwargs | {"layout": layout}


@settings(max_examples=60, deadline=None)
@given(target_cases())
def test_targets_come_back_in_the_form_fit_received(case):
    images, y, kwargs = case
    target_format = TargetFormat.infer(y, **kwargs)
    scan = scan_targets(target_format.to_images(y))
    target_format = target_format.with_values(scan)
    seen = target_format.to_images(y)
    np.testing.assert_array_equal(seen, images)  # what the network is trained on
    tensor = target_format.to_tensor(seen)
    if y.dtype in (np.uint8, np.float32):
        assert np.shares_memory(tensor.numpy(), y)  # a view, never a copy
    decoded = target_format.decode_batch(target_format.encode_batch(tensor), clip=True)
    out = np.empty((len(y), *target_format.sample_shape), target_format.output_dtype)
    target_format.to_images(out)[:] = decoded.numpy()
    assert out.shape == y.shape
    uint8_images = y.dtype == np.uint8 and y.max() > 1  # not a mask
    assert out.dtype == (y.dtype if y.dtype.kind == "f" or uint8_images else np.float32)
    np.testing.assert_allclose(out.astype(np.float64), y.astype(np.float64), rtol=1e-6)
    assert TargetFormat.from_json(target_format.to_json()) == target_format
