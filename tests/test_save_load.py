"""save/load: a format that cannot run code on load, refusing altered or foreign files."""

import json
import pickle
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from safetensors.torch import safe_open, save_file
from sklearn.exceptions import NotFittedError

from cebra_halfunet import HalfUNetRegressor
from cebra_halfunet.persistence import FORMAT_VERSION, _checksum

from .conftest import make_images

DATA = Path(__file__).with_name("data")

FAST = dict(latent_dim=16, max_epochs=3, batch_size=16, random_state=0)


@pytest.fixture
def fitted(data):
    z, images = data
    return HalfUNetRegressor(**FAST, loss="l1_ssim").fit(z, images)


def rewrite(path, edit_metadata=None, edit_tensors=None, checksum=True):
    """Rewrite a decoder file with its JSON header or tensors changed: a crafted file, its
    checksum recomputed as whoever crafts one can (or, ``checksum=False``, left as it was)."""
    with safe_open(path, framework="pt") as file:
        header = json.loads(file.metadata()["cebra_halfunet"])
        tensors = {name: file.get_tensor(name) for name in file.keys()}
    if edit_metadata:
        edit_metadata(header)
    if edit_tensors:
        edit_tensors(tensors)
    if checksum:
        header["sha256"] = _checksum(header, tensors)
    save_file(tensors, path, metadata={"cebra_halfunet": json.dumps(header)})


def test_round_trip_predicts_identically_and_keeps_everything(data, fitted, tmp_path):
    z, images = data
    path = tmp_path / "decoder.safetensors"
    fitted.save(path)
    loaded = HalfUNetRegressor.load(path)
    assert loaded.get_params() == fitted.get_params()
    np.testing.assert_array_equal(loaded.predict(z), fitted.predict(z))
    for name in ["target_format_", "data_range_", "seed_", "n_features_in_", "history_", "n_epochs_", "best_epoch_"]:
        assert getattr(loaded, name) == getattr(fitted, name)
    # the optimizer state came along: continued training is the same as without the round trip
    np.testing.assert_array_equal(loaded.partial_fit(z, images).predict(z), fitted.partial_fit(z, images).predict(z))


@pytest.mark.parametrize("form", ["uint8", "flat"])
def test_round_trip_of_other_target_forms(form, tmp_path):
    z, images = make_images(channels=3)
    y = (images * 255).astype(np.uint8) if form == "uint8" else images.reshape(60, -1)
    kwargs = {"output_shape": (8, 16)} if form == "flat" else {}
    model = HalfUNetRegressor(**FAST, **kwargs).fit(z, y)
    model.save(tmp_path / "decoder")
    loaded = HalfUNetRegressor.load(tmp_path / "decoder")
    assert loaded.output_shape == model.output_shape
    prediction = loaded.predict(z)
    assert prediction.dtype == y.dtype and prediction.shape == y.shape
    np.testing.assert_array_equal(prediction, model.predict(z))


def test_saving_an_unfitted_decoder_raises(tmp_path):
    with pytest.raises(NotFittedError):
        HalfUNetRegressor().save(tmp_path / "decoder")


class Payload:
    """Pickles into a call that would create a file when unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


@pytest.mark.parametrize("write", [pickle.dump, joblib.dump, torch.save])
def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path, write):
    marker, path = tmp_path / "pwned", tmp_path / "decoder.safetensors"
    with open(path, "wb") as file:
        write(Payload(marker), file)
    with open(path, "rb") as file:  # the payload is live: unpickling it would run it
        assert file.read(1) in (b"\x80", b"P")
    with pytest.raises(ValueError, match="not a cebra-halfunet decoder file"):
        HalfUNetRegressor.load(path)
    assert not marker.exists()


def test_a_joblib_pickled_decoder_is_not_loaded(fitted, tmp_path):
    joblib.dump(fitted, tmp_path / "decoder.joblib")
    with pytest.raises(ValueError, match="not a safetensors file"):
        HalfUNetRegressor.load(tmp_path / "decoder.joblib")


def test_altered_weights_fail_the_checksum(fitted, tmp_path):
    path = tmp_path / "decoder"
    fitted.save(path)
    rewrite(path, edit_tensors=lambda tensors: tensors["module.offset"].add_(0.5), checksum=False)
    with pytest.raises(ValueError, match="checksum"):
        HalfUNetRegressor.load(path)


def test_an_altered_header_fails_the_checksum(fitted, tmp_path):
    path = tmp_path / "decoder"
    fitted.save(path)
    low, high = fitted.target_format_.value_range
    edit = lambda header: header["fitted"]["target_format_"].update(value_range=[low + 0.25, high])  # noqa: E731
    rewrite(path, edit_metadata=edit, checksum=False)
    with pytest.raises(ValueError, match="checksum"):
        HalfUNetRegressor.load(path)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda header: header["params"].update(latent_dim=32), "does not describe a decoder"),
        (lambda header: header["params"].update(lr=-1.0), "lr"),
        (lambda header: header["params"].update(evil="x"), "unexpected keyword argument 'evil'"),
        (lambda header: header["fitted"]["target_format_"].update(dtype="|O"), "dtype"),
        (lambda header: header.update(format_version=FORMAT_VERSION + 1), "Upgrade"),
        (lambda header: header.update(format="something else"), "no cebra-halfunet header"),
        (lambda header: header.update(estimator="CEBRA"), "not a HalfUNetRegressor"),
        (lambda header: header["fitted"].pop("seed_"), "seed_"),
    ],
)
def test_mismatched_or_tampered_metadata_is_refused(fitted, tmp_path, edit, match):
    path = tmp_path / "decoder"
    fitted.save(path)
    rewrite(path, edit_metadata=edit)
    with pytest.raises(ValueError, match=match):
        HalfUNetRegressor.load(path)


def test_files_from_another_torch_or_library_version_load(data, fitted, tmp_path):
    z, _ = data
    path = tmp_path / "decoder"
    fitted.save(path)
    rewrite(path, edit_metadata=lambda header: header.update(torch_version="2.4.1", library_version="0.0.9"))
    np.testing.assert_array_equal(HalfUNetRegressor.load(path).predict(z), fitted.predict(z))


def test_a_loaded_ensemble_predicts_the_mean_from_its_module(data, tmp_path):
    z, images = data
    ensemble = HalfUNetRegressor(**FAST, early_stopping=False, precision="float32").fit(z, images)  # module_ runs in float32
    ensemble.save(tmp_path / "decoder")
    loaded = HalfUNetRegressor.load(tmp_path / "decoder")
    assert len(loaded.module_.decoder.members) == 3
    with torch.no_grad():
        np.testing.assert_allclose(loaded.module_(torch.from_numpy(z)).numpy(), ensemble.predict(z), atol=1e-6)


@pytest.mark.parametrize("param, default", [("ensemble_size", 1), ("body", "auto")])
def test_files_from_before_a_parameter_load_with_its_earlier_behaviour(data, tmp_path, param, default):
    z, images = data
    single = HalfUNetRegressor(**FAST, ensemble_size=1).fit(z, images)
    path = tmp_path / "decoder"
    single.save(path)
    rewrite(path, edit_metadata=lambda header: header["params"].pop(param))
    loaded = HalfUNetRegressor.load(path)
    assert getattr(loaded, param) == default and not loaded.module_.decoder.is_large
    np.testing.assert_array_equal(loaded.predict(z), single.predict(z))


def test_files_from_before_issue_22_load_with_the_old_names_and_behaviour(data, tmp_path):
    z, images = data
    model = HalfUNetRegressor(**FAST, ensemble_size=1, precision="float32", channels_last=False).fit(z, images)
    path = tmp_path / "decoder"
    model.save(path)

    def as_before(header):
        params, fitted = header["params"], header["fitted"]
        params["patience"] = 7
        for name in ("n_iter_no_change", "tol", "lr_schedule"):
            params.pop(name)
        for name in ("stop_reason_", "validation_reason_"):
            fitted.pop(name)

    rewrite(path, edit_metadata=as_before)
    loaded = HalfUNetRegressor.load(path)
    assert (loaded.n_iter_no_change, loaded.tol, loaded.lr_schedule) == (7, 0.0, "constant")
    assert loaded.stop_reason_ is None and loaded.precision_ == "float32"
    np.testing.assert_array_equal(loaded.predict(z), model.predict(z))


def test_a_decoder_file_written_before_the_last_phase_loads_predicts_identically_and_trains_on(one_thread):
    """tests/data/decoder_a5f9b8c.safetensors: written by a5f9b8c (latent 8, 2 decoders, float32,
    the warm-up + cosine schedule), with its predictions for the first 5 embeddings (on one thread)."""
    z, images = make_images(60, (8, 16))
    loaded = HalfUNetRegressor.load(DATA / "decoder_a5f9b8c.safetensors")
    np.testing.assert_array_equal(loaded.predict(z[:5]), np.load(DATA / "decoder_a5f9b8c_predictions.npy"))
    assert loaded.lr_schedule == "warmup_stable_decay" and loaded.max_epochs == 2  # the schedule of today
    assert loaded.n_epochs_ == 2 and loaded.stop_reason_ == "max_epochs"
    loaded.partial_fit(z, images)
    loaded.set_params(warm_start=True).fit(z, images)
    assert loaded.n_epochs_ == 5 and [r["epoch"] for r in loaded.history_] == [1, 2, 3, 4, 5]


def test_the_body_is_saved_and_loaded(data, tmp_path):
    z, images = data
    model = HalfUNetRegressor(**(FAST | dict(max_epochs=1, ensemble_size=1, body="large"))).fit(z, images)
    assert model.module_.decoder.is_large  # large at latent_dim 16, because it was asked for
    model.save(tmp_path / "decoder")
    loaded = HalfUNetRegressor.load(tmp_path / "decoder")
    assert loaded.body == "large" and loaded.module_.decoder.is_large
    np.testing.assert_array_equal(loaded.predict(z), model.predict(z))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        HalfUNetRegressor.load(tmp_path / "nothing")


def test_the_column_names_of_a_dataframe_travel_with_the_decoder(data, tmp_path):
    pandas = pytest.importorskip("pandas")
    z, images = data
    frame = pandas.DataFrame(z, columns=["a", "b", "c", "d"])
    model = HalfUNetRegressor(**FAST).fit(frame, images)
    model.save(tmp_path / "decoder")
    loaded = HalfUNetRegressor.load(tmp_path / "decoder")
    np.testing.assert_array_equal(loaded.feature_names_in_, ["a", "b", "c", "d"])
    np.testing.assert_array_equal(loaded.predict(frame), model.predict(frame))
    with pytest.raises(ValueError, match="feature names"):
        loaded.predict(frame[["d", "c", "b", "a"]])


def test_saving_to_a_folder_or_a_missing_one_is_refused_naming_the_path(fitted, tmp_path):
    with pytest.raises(ValueError, match="is a folder: name a file in it"):
        fitted.save(tmp_path)
    with pytest.raises(ValueError, match="is in a folder that does not exist"):
        fitted.save(tmp_path / "missing" / "decoder.safetensors")
