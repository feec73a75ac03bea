"""Decoder files that cannot steer anything: crafted files (checksums recomputed, as whoever
crafts one can) are refused by validation, fast and without allocating what they claim;
machine-local settings never travel; files are written with the umask, without leftovers,
and one checkpoint path serves one fit at a time."""

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cebra_halfunet import HalfUNetRegressor
from cebra_halfunet.persistence import _HEADER_KEY, exclusive

from .test_save_load import rewrite

FAST = dict(latent_dim=16, max_epochs=2, batch_size=16, random_state=0, precision="float32")


@pytest.fixture
def saved(data, tmp_path):
    z, images = data
    model = HalfUNetRegressor(**FAST).fit(z, images)
    path = tmp_path / "decoder.safetensors"
    model.save(path)
    return model, path


# ------------------------------------------------------- machine-local settings
def test_machine_local_settings_neither_travel_nor_steer(data, tmp_path, saved):
    z, images = data
    model, path = saved
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    with_settings = HalfUNetRegressor(**FAST, checkpoint_path=str(tmp_path / "mine.safetensors"), verbose=1).fit(z, images)
    with_settings.save(path)
    header = json.loads(json.loads(Path(path).read_bytes()[8 : 8 + int.from_bytes(Path(path).read_bytes()[:8], "little")])["__metadata__"][_HEADER_KEY])
    assert not {"checkpoint_path", "checkpoint_every", "device", "verbose", "callbacks", "warm_start"} & set(header["params"])

    def steer(header):
        header["params"].update(checkpoint_path=str(victim), warm_start=True, device="cuda:7", verbose=3, checkpoint_every=1)

    rewrite(path, edit_metadata=steer)
    loaded = HalfUNetRegressor.load(path)
    assert (loaded.checkpoint_path, loaded.warm_start, loaded.device, loaded.verbose) == (None, False, "auto", False)
    loaded.partial_fit(z, images)
    loaded.fit(z, images)
    assert victim.read_text() == "precious"


# ------------------------------------------------------------ header values
@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda h: h["fitted"]["target_format_"].update(value_range=[0.9, 0.1]), "value_range must be two finite numbers"),
        (lambda h: h["fitted"]["target_format_"].update(value_range=[0.0, float("nan")]), "value_range must be two finite"),
        (lambda h: h["fitted"]["target_format_"].update(shape=[8, 0]), "describes no image"),
        (lambda h: h["fitted"].update(data_range_=0.3), "data_range_"),
        (lambda h: h["fitted"].update(seed_=-4), "seed_"),
        (lambda h: h["fitted"].update(n_features_in_=5), "tensors do not fit"),
        (lambda h: h["fitted"].update(n_epochs_=9), "n_epochs_"),
        (lambda h: h["fitted"].update(best_epoch_=7), "best_epoch_"),
        (lambda h: h["fitted"].update(stop_reason_="because"), "stop_reason_"),
        (lambda h: h["fitted"]["history_"].append({"epoch": 3, "train_loss": "x"}), "history_"),
        (lambda h: h["params"].update(output_shape=[16, 32]), "tensors do not fit|output_shape"),
        (lambda h: h["params"].update(ensemble_size=2), "tensors do not fit|cover every parameter"),
        (lambda h: h["optimizer_param_groups"][0].update(lr=float("inf")), "lr"),
        (lambda h: h["optimizer_param_groups"][0].update(params=[0, 1]), "every parameter"),
    ],
)
def test_crafted_header_values_are_refused(saved, edit, match):
    _, path = saved
    rewrite(path, edit_metadata=edit)
    with pytest.raises(ValueError, match=match):
        HalfUNetRegressor.load(path)


def test_files_of_format_2_are_checked_the_same_way(saved):
    """Before format 3 the checksum did not cover the header: what it says is validated alone."""
    _, path = saved

    def as_format_2(header):
        header["format_version"] = 2
        header["fitted"]["target_format_"].update(value_range=[0.9, 0.1])

    rewrite(path, edit_metadata=as_format_2)
    with pytest.raises(ValueError, match="value_range"):
        HalfUNetRegressor.load(path)


# ------------------------------------------------------------------ tensors
@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda t: t.update({"module.offset": t["module.offset"].to(torch.int8)}), "tensors do not fit"),
        (lambda t: t.update({"module.scale": t["module.scale"].bool()}), "tensors do not fit"),
        (lambda t: t["module.offset"].fill_(float("nan")), "NaN"),
        (lambda t: t.update({"optimizer.0.exp_avg": torch.zeros(3)}), "tensors do not fit"),
        (lambda t: t["optimizer.0.exp_avg_sq"].fill_(-1.0), "NaN, infinity|values a fit does not make"),
        (lambda t: t.pop("module.offset"), "tensors do not fit"),
        (lambda t: t.update(extra=torch.zeros(2)), "tensors do not fit"),
    ],
)
def test_crafted_tensors_are_refused(saved, edit, match):
    _, path = saved
    rewrite(path, edit_tensors=edit)
    with pytest.raises(ValueError, match=match):
        HalfUNetRegressor.load(path)


def peak_growth_mib(call) -> float:
    """Peak resident memory growth while ``call()`` runs, in MiB (Linux)."""
    status = Path("/proc/self/status")
    read = lambda field: int(next(line for line in status.read_text().splitlines() if line.startswith(field)).split()[1]) / 1024  # noqa: E731
    Path("/proc/self/clear_refs").write_text("5")
    before = read("VmRSS:")
    call()
    return read("VmHWM:") - before


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak memory is read from /proc (Linux)")
@pytest.mark.parametrize(
    "edit",
    [
        lambda h: (h["params"].update(latent_dim=250000, ensemble_size=3)),
        lambda h: h["fitted"]["target_format_"].update(shape=[200000, 200000]),
        lambda h: h["fitted"].update(n_features_in_=10**12),
        lambda h: h["params"].update(ensemble_size=10**9),
    ],
)
def test_crafted_sizes_are_refused_at_once_without_allocating(saved, edit):
    _, path = saved
    rewrite(path, edit_metadata=edit)

    def load():
        with pytest.raises(ValueError, match="tensors do not fit|larger than the file's tensors"):
            HalfUNetRegressor.load(path)

    started = time.perf_counter()
    assert peak_growth_mib(load) < 50
    assert time.perf_counter() - started < 1


def test_a_header_nested_100000_deep_is_refused(tmp_path):
    path = tmp_path / "deep.safetensors"
    save_file({"x": torch.zeros(1)}, path, metadata={_HEADER_KEY: "[" * 100_000 + "]" * 100_000})
    with pytest.raises(ValueError, match="nested too deep|not a cebra-halfunet decoder file"):
        HalfUNetRegressor.load(path)


# -------------------------------------------------------------------- files
def test_save_honours_the_umask(saved, tmp_path):
    model, _ = saved
    previous = os.umask(0o022)
    try:
        model.save(tmp_path / "shared.safetensors")
    finally:
        os.umask(previous)
    assert (tmp_path / "shared.safetensors").stat().st_mode & 0o777 == 0o644


def test_stale_temporary_files_are_removed_but_not_a_live_writers(saved, tmp_path):
    model, path = saved
    stale, live = tmp_path / ".halfunet-dead.tmp", tmp_path / ".halfunet-live.tmp"
    for name in (stale, live):
        name.write_bytes(b"")
        os.utime(name, (time.time() - 3600, time.time() - 3600))
    import fcntl

    with open(live, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a writer still at work
        model.save(path)
        assert not stale.exists() and live.exists()


def test_one_checkpoint_path_serves_one_fit_at_a_time(data, tmp_path):
    z, images = data
    path = tmp_path / "run.safetensors"
    with exclusive(path, "checkpoint_path"):  # another fit holds it
        with pytest.raises(ValueError, match=r"checkpoint_path=.* is in use by another fit \(process \d+\)"):
            HalfUNetRegressor(**FAST, checkpoint_path=path).fit(z, images)
    model = HalfUNetRegressor(**FAST, checkpoint_path=path).fit(z, images)  # released: it goes on
    assert model.n_epochs_ == 2 and path.exists()


def test_a_weights_only_file_is_smaller_predicts_identically_and_trains_on_with_fresh_moments(data, saved, tmp_path):
    z, images = data
    model, full = saved
    light = tmp_path / "weights.safetensors"
    model.save(light, weights_only=True)
    assert light.stat().st_size < 0.5 * full.stat().st_size
    loaded = HalfUNetRegressor.load(light)
    np.testing.assert_array_equal(loaded.predict(z), model.predict(z))
    assert loaded.optimizer_state_ is None
    with pytest.warns(UserWarning, match="weights_only: training continues with fresh optimizer moments"):
        loaded.partial_fit(z, images)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        loaded.partial_fit(z, images)  # warned once: the moments exist now
    assert loaded.n_epochs_ == model.n_epochs_ + 2
