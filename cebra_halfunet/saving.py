"""The estimator's state in decoder files (:mod:`~cebra_halfunet.persistence`): what ``save``
writes, and how ``load`` rebuilds an estimator from a file it does not trust.

A file carries the parameters (never the machine-local settings :data:`MACHINE_LOCAL`), the
fitted metadata, the weights and, unless saved ``weights_only``, the optimizer's moments;
checkpoints add the training state. Loading checks everything a file claims before it
builds anything: every parameter as the constructor's validation checks it, every fitted
value as a fit would have made it, the tensors' names, dtypes and shapes (read from the file's
header) against a network built on the ``meta`` device (no memory), then their values
(finite) and the checksum. A crafted file is refused with a ``ValueError``, in well under a
second and without allocating what it claims.
"""

from __future__ import annotations

import math
import numbers
import os

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

from ._checks import check_output_shape
from .persistence import TensorInfo, read_header, read_tensors, write_file
from .stopping import INTERRUPTED, MAX_EPOCHS, STOP_RULE, Pilot
from .targets import TargetFormat
from .training import TrainingState

#: Settings of the machine and the run, not of the decoder: never written, never read.
MACHINE_LOCAL = ("checkpoint_path", "checkpoint_every", "device", "verbose", "callbacks", "warm_start")
#: Fitted attributes stored as JSON (besides ``target_format_``).
FITTED = ("data_range_", "seed_", "n_features_in_", "history_", "n_epochs_", "best_epoch_", "stop_reason_", "validation_reason_")
#: Parameters of files written before they existed, with the value that rebuilds those
#: decoders (and continues training them as they were trained).
EARLIER_DEFAULTS = {
    "ensemble_size": 1, "body": "auto", "target_layout": "channels_first", "clip_predictions": False,
    "lr_schedule": "constant", "tol": 0.0, "precision": "float32", "channels_last": False, "scoring": "loss",
}
#: Parameters renamed since, by their earlier name, and values renamed since.
RENAMED = {"patience": "n_iter_no_change"}
RENAMED_VALUES = {("lr_schedule", "warmup_cosine"): "warmup_stable_decay"}
#: The training state a checkpoint carries besides the weights (see TrainingState).
STATE_FIELDS = (
    "best_value", "improved_epoch", "average_steps", "steps", "verdict", "warning",
    "decay_start_epoch", "decay_end_epoch", "decay_start_step", "decay_steps",
)
PILOT_FIELDS = ("history", "best_epoch", "best_value", "verdict", "warning")
_HISTORY_KEYS = {"epoch", "phase", "batch_loss", "train_loss", "valid_loss", "valid_score", "held_out_loss", "duration_s"}
_TORCH_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16"}


class SavingMixin:
    """``save`` and ``load`` of :class:`~cebra_halfunet.HalfUNetRegressor`, and its checkpoints."""

    def save(self, path: str | os.PathLike, *, weights_only: bool = False) -> None:
        """Write the fitted decoder to ``path`` in a format that cannot run code when loaded.

        One safetensors file: the weights (and, unless ``weights_only``, the optimizer's
        moments, which ``partial_fit`` continues with: about 3x the size) as raw tensors; the
        parameters and fitted metadata as JSON, a format version and a checksum of it all.
        Settings of your machine and run (``checkpoint_path``, ``device``, ``verbose``,
        ``callbacks``, ``warm_start``, ``checkpoint_every``) are not written. Written
        atomically, with the permissions ``open`` gives new files.
        """
        check_is_fitted(self, "module_")
        self._check_structure("save")
        absolute = os.path.abspath(os.fspath(path))
        if os.path.isdir(absolute) or not os.path.isdir(os.path.dirname(absolute)):
            what = "is a folder: name a file in it" if os.path.isdir(absolute) else "is in a folder that does not exist"
            raise ValueError(f"path={os.fspath(path)!r} {what}.")
        optimizer_state = None if weights_only else self.optimizer_state_
        write_file(path, *self._file_contents(self.module_, optimizer_state, self.history_))

    @classmethod
    def load(cls, path: str | os.PathLike):
        """Read a decoder written by :meth:`save` (or a checkpoint); predicts identically.

        Every value in the file is checked before anything is built; ``ValueError`` for files
        that are not decoder files (pickles are never unpickled), that are altered or
        corrupted (checksum), come from a newer format version, hold values a fit would not
        have made, or tensors that do not fit the recorded parameters.
        """
        return cls._read(path)[0]

    # --------------------------------------------------------------- writing
    def _file_contents(self, module, optimizer_state: dict | None, history: list, training: dict | None = None):
        """``(tensors, header)`` of a decoder file (a checkpoint with ``training``)."""
        tensors = {f"module.{name}": value for name, value in module.state_dict().items()}
        fitted = {name: getattr(self, name, None) for name in FITTED}
        fitted.update(history_=history, n_epochs_=history[-1]["epoch"] if history else 0, target_format_=self.target_format_.to_json())
        if hasattr(self, "feature_names_in_"):  # X was a DataFrame: predict checks the columns
            fitted["feature_names_in_"] = [str(name) for name in self.feature_names_in_]
        header = {"estimator": type(self).__name__, "params": _json_params(self.get_params(deep=False)), "fitted": fitted}
        if optimizer_state is not None:
            for index, moments in optimizer_state["state"].items():
                tensors.update({f"optimizer.{index}.{name}": value for name, value in moments.items()})
            header["optimizer_param_groups"] = optimizer_state["param_groups"]
        if training is not None:
            header["training"] = training
        return tensors, header

    def _write_checkpoint(self, module, optimizer_state: dict, history: list, state: TrainingState, fingerprint: dict,
                          pilot: Pilot | None) -> None:
        """The decoder file plus the training state, the pilot's outcome (if a pilot chose the
        length) and the ``fingerprint`` of the data."""
        training = {name: getattr(state, name) for name in STATE_FIELDS} | {"fingerprint": fingerprint}
        training["pilot"] = None if pilot is None else {name: getattr(pilot, name) for name in PILOT_FIELDS}
        tensors, header = self._file_contents(module, optimizer_state, history, training)
        header["fitted"]["best_epoch_"] = state.best_epoch
        tensors.update({f"best.{name}": value for name, value in (state.best_weights or {}).items()})
        tensors.update({f"average.{name}": value for name, value in (state.average_weights or {}).items()})
        write_file(self.checkpoint_path, tensors, header)

    # --------------------------------------------------------------- reading
    def _resume_checkpoint(self, fingerprint: dict) -> tuple[TrainingState, Pilot | None]:
        """Take the fitted state of the checkpoint at ``checkpoint_path``; its training state
        and the pilot's outcome. A ValueError when it holds another fit (parameters, data) or
        is not a checkpoint."""
        path = self.checkpoint_path
        loaded, header, tensors = type(self)._read(path)
        training = header.get("training")
        ours, theirs = (_json_params(estimator.get_params(deep=False)) for estimator in (self, loaded))
        if training is not None and not set(STATE_FIELDS) | {"pilot"} <= set(training):
            raise ValueError(
                f"checkpoint_path={os.fspath(path)!r} holds a checkpoint of an earlier version of cebra-halfunet, whose "
                "training ran on another schedule: it cannot be resumed exactly. Delete the file or pass another checkpoint_path."
            )
        if ours != theirs or training is None or training.get("fingerprint") != fingerprint:
            what = "parameters" if ours != theirs else "data (X, y, X_val, y_val or frame_ids)" if training else "kind of file (not a checkpoint)"
            raise ValueError(
                f"checkpoint_path={os.fspath(path)!r} holds a different fit: its {what} differ from this one. "
                "Delete the file or pass another checkpoint_path."
            )
        for name, value in vars(loaded).items():
            if name.endswith("_"):
                setattr(self, name, value)
        pilot = _checked_pilot(training["pilot"], path)
        state = TrainingState(
            history=[record for record in self.history_ if record.get("phase") != "pilot"],
            best_epoch=None if pilot is not None else self.best_epoch_,
            best_weights=_with_prefix(tensors, "best.") or None,
            average_weights=_with_prefix(tensors, "average.") or None,
            **_checked_training(training, path),
        )
        return state, pilot

    @classmethod
    def _read(cls, path):
        """``(estimator, header, tensors)`` of a decoder file, every value checked."""
        header, infos = read_header(path)
        if header.get("estimator") != cls.__name__:
            raise ValueError(f"path {os.fspath(path)!r} holds a {header.get('estimator')!r}, not a {cls.__name__}.")
        try:
            estimator = cls._from_header(header)
            expected = estimator._expected_tensors(infos, header)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"path {os.fspath(path)!r} does not describe a decoder this version can rebuild: {error}") from None
        tensors = read_tensors(path, header)
        for name, tensor in tensors.items():
            if not torch.isfinite(tensor).all() or (name.endswith("exp_avg_sq") and (tensor < 0).any()):
                raise ValueError(f"path {os.fspath(path)!r}: tensor {name!r} holds values a fit does not make (NaN, infinity).")
        estimator._restore_tensors(tensors, header, expected)
        try:
            estimator._check_structure("be loaded")  # parameters that the shapes do not show (output_shape, ...)
        except ValueError as error:
            raise ValueError(f"path {os.fspath(path)!r}: {error}") from None
        return estimator, header, tensors

    @classmethod
    def _from_header(cls, header: dict):
        """An unfitted estimator of the file's parameters, with its fitted metadata, both checked."""
        params = _file_params(header.get("params"))
        estimator = cls(**params)  # unknown names raise a TypeError
        estimator._validate_params()
        if estimator.output_shape is not None:
            estimator.output_shape = check_output_shape(estimator.output_shape)
        fitted = header.get("fitted")
        if not isinstance(fitted, dict):
            raise ValueError("no fitted metadata")
        estimator.target_format_ = _checked_target_format(fitted["target_format_"], params.get("loss"))
        for name, value in _checked_fitted(fitted, estimator.target_format_).items():
            setattr(estimator, name, value)
        names = fitted.get("feature_names_in_")
        if names is not None:
            if not (isinstance(names, list) and len(names) == estimator.n_features_in_ and all(isinstance(n, str) for n in names)):
                raise ValueError("feature_names_in_ must be one name per feature of X")
            estimator.feature_names_in_ = np.asarray(names, dtype=object)
        return estimator

    def _expected_tensors(self, infos: dict[str, TensorInfo], header: dict) -> dict[str, TensorInfo]:
        """The tensors this decoder must have, checked against the file's before any is read;
        the network is built on the ``meta`` device, after bounds that keep even that cheap."""
        elements = sum(math.prod(info.shape) for info in infos.values())
        target = self.target_format_
        for name, value in (("ensemble_size", self.ensemble_size), ("n_features_in_", self.n_features_in_),
                            ("latent_dim", self.latent_dim or 0), ("the image size", target.channels * math.prod(target.shape))):
            if value > max(elements, 1) or (name == "ensemble_size" and value > len(infos)):
                raise ValueError(f"{name} ({value}) is larger than the file's tensors could hold")
        with torch.device("meta"):
            module = self._build_module(target)
        expected = {f"module.{name}": TensorInfo(_TORCH_DTYPES[t.dtype], tuple(t.shape)) for name, t in module.state_dict().items()}
        parameters = [tuple(p.shape) for p in module.parameters()]
        if "optimizer_param_groups" in header:
            _check_param_groups(header["optimizer_param_groups"], len(parameters))
            for index, shape in enumerate(parameters):
                expected |= {f"optimizer.{index}.exp_avg": TensorInfo("F32", shape), f"optimizer.{index}.exp_avg_sq": TensorInfo("F32", shape),
                             f"optimizer.{index}.step": TensorInfo("F32", ())}
        for prefix in ("best.", "average."):
            if any(name.startswith(prefix) for name in infos):
                expected |= {prefix + name[len("module."):]: info for name, info in list(expected.items()) if name.startswith("module.")}
        optional = {name for name in expected if name.startswith("optimizer.")}  # moments appear after the first step
        missing = set(expected) - set(infos) - optional
        unexpected = set(infos) - set(expected)
        wrong = [name for name in set(infos) & set(expected) if infos[name] != expected[name]]
        if missing or unexpected or wrong:
            first = sorted(missing or unexpected or wrong)[0]
            found = infos.get(first)
            raise ValueError(
                f"its tensors do not fit its parameters: {len(missing)} missing, {len(unexpected)} unexpected, "
                f"{len(wrong)} of another dtype or shape (e.g. {first!r}: expected {expected.get(first)}, found {found})"
            )
        return expected

    def _restore_tensors(self, tensors: dict, header: dict, expected: dict) -> None:
        """Build the network (its tensors were checked) and take the weights and moments."""
        self.precision_, self.channels_last_ = self._resolved_precision()
        self.module_ = self._build_module(self.target_format_)
        self.module_.load_state_dict(_with_prefix(tensors, "module."))
        self.optimizer_state_ = None
        if "optimizer_param_groups" in header:
            moments: dict[int, dict] = {}
            for name, value in _with_prefix(tensors, "optimizer.").items():
                index, key = name.split(".", 1)
                moments.setdefault(int(index), {})[key] = value
            self.optimizer_state_ = {"state": moments, "param_groups": header["optimizer_param_groups"]}


# ------------------------------------------------------------------ checks of values
def _json_params(params: dict) -> dict:
    """The decoder's parameters as JSON values (tuples as lists, a RandomState as None: the
    drawn seed is kept in ``seed_``), without the machine-local settings."""
    converted = {}
    for name, value in params.items():
        if name in MACHINE_LOCAL:
            continue
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, np.random.RandomState):
            value = None
        converted[name] = value
    return converted


def _file_params(params) -> dict:
    """A file's parameters under today's names, with the values of earlier versions for the
    parameters it predates; machine-local settings that older files carry are dropped."""
    if not isinstance(params, dict):
        raise ValueError("no parameters")
    params = {RENAMED.get(name, name): value for name, value in params.items() if name not in MACHINE_LOCAL}
    params = {name: RENAMED_VALUES.get((name, value), value) if isinstance(value, str) else value for name, value in params.items()}
    return {**EARLIER_DEFAULTS, **params}


def _is_int(value, low: int, high: float = math.inf) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and low <= value <= high


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _checked_target_format(values, loss) -> TargetFormat:
    """The target format of a file, refused unless a fit could have made it."""
    if not isinstance(values, dict):
        raise ValueError("target_format_ is not a mapping")
    target = TargetFormat.from_json(values)
    kind = target.dtype.kind
    if target.ndim not in (1, 2, 3, 4) or target.channels < 1 or len(target.shape) != 2 or min(target.shape) < 1:
        raise ValueError(f"target_format_ describes no image: {values}")
    if target.dtype.itemsize > 8 or (target.binary and target.dtype != np.uint8) or target.probabilities != (loss == "bce"):
        raise ValueError(f"target_format_ has value rules a fit does not make: {values}")
    if target.value_range is not None:
        low, high = target.value_range
        if not (_is_number(low) and _is_number(high) and low <= high):
            raise ValueError(f"target_format_.value_range must be two finite numbers, low <= high, got {target.value_range}")
        if kind in "iu" and (low < np.iinfo(target.dtype).min or high > np.iinfo(target.dtype).max):
            raise ValueError(f"target_format_.value_range {target.value_range} is outside {target.dtype}'s values")
        if (kind == "b" or target.binary or target.probabilities) and (low < 0 or high > 1):
            raise ValueError(f"target_format_.value_range {target.value_range} is outside [0, 1]")
    return target


def _checked_fitted(fitted: dict, target: TargetFormat) -> dict:
    """The fitted attributes of a file (those of :data:`FITTED`), each checked."""
    values = {name: fitted.get(name) for name in FITTED}
    data_range = values["data_range_"]
    if not (_is_number(data_range) and data_range > 0) or (target.value_range is not None and data_range != target.data_range):
        raise ValueError(f"data_range_ {data_range!r} does not follow from the target format")
    if not _is_int(values["seed_"], 0, np.iinfo(np.int32).max):
        raise ValueError(f"seed_ must be an integer in [0, 2**31), got {values['seed_']!r}")
    if not _is_int(values["n_features_in_"], 1):
        raise ValueError(f"n_features_in_ must be a positive integer, got {values['n_features_in_']!r}")
    history = values["history_"]
    if not isinstance(history, list) or not all(_is_history_record(record) for record in history):
        raise ValueError("history_ must be a list of the records a fit writes")
    epochs = [record["epoch"] for record in history]
    if epochs != sorted(set(epochs)) or values["n_epochs_"] != (epochs[-1] if epochs else 0):
        raise ValueError(f"n_epochs_ {values['n_epochs_']!r} does not follow from history_")
    best = values["best_epoch_"]
    if best is not None and not _is_int(best, 1, values["n_epochs_"]):
        raise ValueError(f"best_epoch_ must be None or an epoch of history_, got {best!r}")
    if values["stop_reason_"] not in (None, STOP_RULE, MAX_EPOCHS, INTERRUPTED):
        raise ValueError(f"stop_reason_ {values['stop_reason_']!r} is not one a fit gives")
    if values["validation_reason_"] is not None and not isinstance(values["validation_reason_"], str):
        raise ValueError("validation_reason_ must be text")
    return values


def _is_history_record(record) -> bool:
    return (
        isinstance(record, dict) and set(record) <= _HISTORY_KEYS and _is_int(record.get("epoch"), 1)
        and all(value is None or _is_number(value) for key, value in record.items() if key != "phase")
        and record.get("phase", "stable") in ("pilot", "stable", "decay")
    )


def _check_param_groups(groups, n_parameters: int) -> None:
    """AdamW's parameter groups as a fit saves them: one group over every parameter, finite settings."""
    if not (isinstance(groups, list) and len(groups) == 1 and isinstance(groups[0], dict)):
        raise ValueError("optimizer_param_groups must be one group")
    group = groups[0]
    if group.get("params") != list(range(n_parameters)):
        raise ValueError("optimizer_param_groups must cover every parameter once, in order")
    for name in ("lr", "eps", "weight_decay"):
        if not (_is_number(group.get(name)) and group[name] >= 0):
            raise ValueError(f"optimizer_param_groups' {name} must be a non-negative number, got {group.get(name)!r}")
    betas = group.get("betas")
    if not (isinstance(betas, list) and len(betas) == 2 and all(_is_number(b) and 0 <= b < 1 for b in betas)):
        raise ValueError(f"optimizer_param_groups' betas must be two numbers in [0, 1), got {betas!r}")


def _checked_training(training: dict, path) -> dict:
    """A checkpoint's training state (:data:`STATE_FIELDS`), each value of its type."""
    values = {name: training.get(name) for name in STATE_FIELDS}
    numbers_ok = (values["best_value"] == math.inf or _is_number(values["best_value"])) and _is_int(values["average_steps"], 0)
    numbers_ok &= _is_int(values["steps"], 0) and values["verdict"] in (None, STOP_RULE, MAX_EPOCHS)
    numbers_ok &= all(values[name] is None or _is_int(values[name], 0) for name in STATE_FIELDS if name.startswith("decay_"))
    numbers_ok &= values["improved_epoch"] is None or _is_int(values["improved_epoch"], 1)
    if not numbers_ok or not (values["warning"] is None or isinstance(values["warning"], str)):
        raise ValueError(f"checkpoint_path={os.fspath(path)!r}: its training state is not one a fit writes.")
    return values


def _checked_pilot(values, path) -> Pilot | None:
    """A checkpoint's pilot outcome (:data:`PILOT_FIELDS`), or None (no pilot)."""
    if values is None:
        return None
    ok = isinstance(values, dict) and isinstance(values.get("history"), list) and values["history"]
    ok = ok and all(_is_history_record(record) for record in values["history"]) and _is_int(values.get("best_epoch"), 1)
    ok = ok and _is_number(values.get("best_value")) and values.get("verdict") in (STOP_RULE, MAX_EPOCHS)
    if not ok or not (values.get("warning") is None or isinstance(values["warning"], str)):
        raise ValueError(f"checkpoint_path={os.fspath(path)!r}: its pilot's outcome is not one a fit writes.")
    return Pilot(**{name: values[name] for name in PILOT_FIELDS})


def _with_prefix(tensors: dict, prefix: str) -> dict:
    """The entries whose names start with ``prefix``, without it."""
    return {name[len(prefix) :]: value for name, value in tensors.items() if name.startswith(prefix)}
