"""Decoder files that cannot run code when they are read, and the estimator's state in them.

A file is one safetensors file: tensors (weights, optimizer moments) in safetensors' plain
binary layout, and a JSON header (hyper-parameters, fitted metadata, format version, a
SHA-256 of the tensors). Reading it parses JSON and copies bytes; nothing is unpickled, so
a file from someone else cannot execute code. Checkpoints use the same format.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file

from ._version import __version__
from .targets import TargetFormat
from .training import TrainingState

FORMAT_NAME = "cebra-halfunet"
#: 2: the target format keeps the layout (channels-last) and the value rules (uint8 masks,
#: probabilities, the range predictions are clipped to); files of version 1 load as
#: channels-first, without them, and predict as they did.
FORMAT_VERSION = 2
_HEADER_KEY = "cebra_halfunet"
#: Fitted attributes stored as JSON in decoder files (besides the weights and target_format_).
_FITTED_METADATA = ("data_range_", "seed_", "n_features_in_", "history_", "n_epochs_", "best_epoch_")
#: Fitted attributes stored since issue 22 (None when a file from before lacks them).
_LATER_METADATA = ("stop_reason_", "validation_reason_")
#: Parameters of files written before they existed, with the value that rebuilds those
#: decoders (and continues training them as they were trained).
_EARLIER_DEFAULTS = {
    "ensemble_size": 1, "body": "auto", "target_layout": "channels_first", "clip_predictions": False,
    "lr_schedule": "constant", "tol": 0.0, "precision": "float32", "channels_last": False,
}
#: Parameters renamed since, by their earlier name.
_RENAMED = {"patience": "n_iter_no_change"}
#: Parameter values renamed since: (parameter, earlier value) -> value.
_RENAMED_VALUES = {("lr_schedule", "warmup_cosine"): "warmup_stable_decay"}
#: The training state a checkpoint carries besides the weights (see TrainingState).
_STATE_FIELDS = (
    "best_loss", "improved_epoch", "average_steps", "steps", "verdict", "warning",
    "decay_start_epoch", "decay_end_epoch", "decay_start_step", "decay_steps",
)
#: Parameters that may differ between a checkpointed run and the fit that resumes it.
_RUN_ONLY_PARAMS = {"verbose", "device", "checkpoint_path", "checkpoint_every", "callbacks"}


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of the tensors, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_file(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
    """Write ``tensors`` and the JSON-serialisable ``metadata`` to ``path`` atomically.

    The file is written to a temporary name in the same folder and renamed over ``path``,
    so ``path`` always holds either the previous complete file or the new one.
    """
    tensors = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in tensors.items()}
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "sha256": _digest(tensors),
        **metadata,
    }
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".halfunet-", suffix=".tmp")
    os.close(handle)
    try:
        save_file(tensors, temporary, metadata={_HEADER_KEY: json.dumps(header)})
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def read_file(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(metadata, tensors)`` of a file written by :func:`write_file`.

    Raises ``ValueError`` for anything else: not a safetensors file (a pickle, say), a
    missing or malformed header, a newer format version, or tensors that do not match
    the recorded checksum (altered or corrupted).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path {os.fspath(path)!r} does not exist.")
    not_ours = f"path {os.fspath(path)!r} is not a {FORMAT_NAME} decoder file"
    try:
        with safe_open(path, framework="pt", device="cpu") as file:
            header = (file.metadata() or {}).get(_HEADER_KEY)
            tensors = {name: file.get_tensor(name) for name in file.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{not_ours} (not a safetensors file: {error}).") from None
    try:
        metadata = json.loads(header) if header is not None else None
    except json.JSONDecodeError:
        metadata = None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise ValueError(f"{not_ours} (no {FORMAT_NAME} header).")
    version = metadata.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{not_ours} of a version this installation can read: format_version {version!r}, "
            f"this cebra-halfunet reads up to {FORMAT_VERSION}. Upgrade cebra-halfunet."
        )
    if metadata.get("sha256") != _digest(tensors):
        raise ValueError(f"path {os.fspath(path)!r}: the tensors do not match the file's checksum (altered or corrupted).")
    return metadata, tensors


# ------------------------------------------------------- the estimator's state
def _to_cpu(state):
    """Copy of a (nested) state dict with every tensor on the CPU."""
    if isinstance(state, torch.Tensor):
        return state.detach().cpu().clone()
    if isinstance(state, dict):
        return {key: _to_cpu(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_to_cpu(value) for value in state)
    return state


def _json_params(params: dict) -> dict:
    """Parameters as JSON values: tuples as lists, devices and paths as strings, a
    RandomState instance as None (the drawn seed is kept in ``seed_``); callbacks (objects
    of the run, not of the decoder) are not stored."""
    converted = {}
    for name, value in params.items():
        if name == "callbacks":
            continue
        if isinstance(value, (torch.device, os.PathLike)):
            value = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
        elif isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, np.random.RandomState):
            value = None
        converted[name] = value
    return converted


def _with_prefix(tensors: dict, prefix: str) -> dict:
    """The entries whose names start with ``prefix``, without it."""
    return {name[len(prefix) :]: value for name, value in tensors.items() if name.startswith(prefix)}


def save_estimator(path, estimator, module, optimizer_state: dict, history: list) -> None:
    """Write a fitted estimator's decoder: ``module``'s weights, the optimizer moments,
    parameters and fitted metadata."""
    write_file(path, *_estimator_contents(estimator, module, optimizer_state, history))


def save_checkpoint(path, estimator, module, optimizer_state: dict, history: list, state: TrainingState, fingerprint: dict) -> None:
    """Write a checkpoint: the decoder file plus the training state (best and averaged
    weights, best loss) and the ``fingerprint`` of the data it was trained on."""
    tensors, metadata = _estimator_contents(estimator, module, optimizer_state, history)
    metadata["fitted"]["best_epoch_"] = state.best_epoch
    metadata["training"] = {name: getattr(state, name) for name in _STATE_FIELDS} | {"fingerprint": fingerprint}
    tensors.update({f"best.{name}": value for name, value in (state.best_weights or {}).items()})
    tensors.update({f"average.{name}": value for name, value in (state.average_weights or {}).items()})
    write_file(path, tensors, metadata)


def _estimator_contents(estimator, module, optimizer_state: dict, history: list) -> tuple[dict, dict]:
    """Tensors and metadata of a decoder file."""
    tensors = {f"module.{name}": value for name, value in module.state_dict().items()}
    for index, moments in optimizer_state["state"].items():
        tensors.update({f"optimizer.{index}.{name}": value for name, value in moments.items()})
    fitted = {name: getattr(estimator, name, None) for name in _FITTED_METADATA + _LATER_METADATA}
    fitted.update(history_=history, n_epochs_=history[-1]["epoch"] if history else 0, target_format_=estimator.target_format_.to_json())
    metadata = {
        "estimator": type(estimator).__name__,
        "params": _json_params(estimator.get_params(deep=False)),
        "fitted": fitted,
        "optimizer_param_groups": optimizer_state["param_groups"],
    }
    return tensors, metadata


def load_estimator(cls, path):
    """A ``cls`` estimator (HalfUNetRegressor) rebuilt from the decoder file at ``path``."""
    metadata, tensors = read_file(path)
    if metadata.get("estimator") != cls.__name__:
        raise ValueError(f"path {os.fspath(path)!r} holds a {metadata.get('estimator')!r}, not a {cls.__name__}.")
    try:
        estimator = cls(**_file_params(metadata))
    except (KeyError, TypeError) as error:
        raise ValueError(f"path {os.fspath(path)!r} has parameters {cls.__name__} does not take: {error}.") from None
    if isinstance(estimator.output_shape, list):
        estimator.output_shape = tuple(estimator.output_shape)
    estimator._validate_params()
    _restore(estimator, path, metadata, tensors)
    return estimator


def _file_params(metadata: dict) -> dict:
    """A file's parameters under today's names, with the values of earlier versions for
    parameters the file predates."""
    params = {_RENAMED.get(name, name): value for name, value in metadata.get("params", {}).items()}
    params = {name: _RENAMED_VALUES.get((name, value), value) if isinstance(value, str) else value for name, value in params.items()}
    return {**_EARLIER_DEFAULTS, **params}


def _restore(estimator, path, metadata: dict, tensors: dict) -> None:
    """Set the estimator's fitted attributes from a decoder file's contents."""
    try:
        fitted = metadata["fitted"]
        estimator.target_format_ = TargetFormat.from_json(fitted["target_format_"])
        for name in _FITTED_METADATA:
            setattr(estimator, name, fitted[name])
        for name in _LATER_METADATA:
            setattr(estimator, name, fitted.get(name))
        estimator.precision_, estimator.channels_last_ = estimator._resolved_precision()
        estimator.module_ = estimator._build_module(estimator.target_format_)
        estimator.module_.load_state_dict(_with_prefix(tensors, "module."))
        moments: dict[int, dict] = {}
        for name, value in _with_prefix(tensors, "optimizer.").items():
            index, key = name.split(".", 1)
            moments.setdefault(int(index), {})[key] = value
        estimator.optimizer_state_ = {"state": moments, "param_groups": metadata["optimizer_param_groups"]}
        torch.optim.AdamW(estimator.module_.parameters()).load_state_dict(estimator.optimizer_state_)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"path {os.fspath(path)!r} does not describe a decoder this version can rebuild: {error}") from None


def resume_checkpoint(estimator, fingerprint: dict) -> TrainingState:
    """Restore the estimator from the checkpoint at its ``checkpoint_path``; the training
    state in it. Raises ``ValueError`` when the checkpoint holds a different fit."""
    path = estimator.checkpoint_path
    metadata, tensors = read_file(path)
    ours = {k: v for k, v in _json_params(estimator.get_params(deep=False)).items() if k not in _RUN_ONLY_PARAMS}
    theirs = {k: v for k, v in _file_params(metadata).items() if k not in _RUN_ONLY_PARAMS}
    training = metadata.get("training")
    if training is not None and not set(_STATE_FIELDS) <= set(training):
        raise ValueError(
            f"checkpoint_path={os.fspath(path)!r} holds a checkpoint of an earlier version of cebra-halfunet, whose "
            "training ran on another schedule: it cannot be resumed exactly. Delete the file or pass another checkpoint_path."
        )
    if ours != theirs or training is None or training.get("fingerprint") != fingerprint:
        what = "parameters" if ours != theirs else "data (X, y, X_val or y_val)" if training else "kind of file (not a checkpoint)"
        raise ValueError(
            f"checkpoint_path={os.fspath(path)!r} holds a different fit: its {what} differ from this one. "
            "Delete the file or pass another checkpoint_path."
        )
    _restore(estimator, path, metadata, tensors)
    return TrainingState(
        history=list(estimator.history_),
        best_epoch=estimator.best_epoch_,
        best_weights=_with_prefix(tensors, "best.") or None,
        average_weights=_with_prefix(tensors, "average.") or None,
        **{name: training[name] for name in _STATE_FIELDS},
    )
