"""Decoder files: one safetensors file of tensors and a JSON header, that cannot run code when read.

The contract, and nothing about what the tensors and the header hold (the estimator's
:mod:`~cebra_halfunet.saving` decides that):

- :func:`write_file` writes tensors and a header atomically (a temporary file, renamed over
  the path), with the permissions ``open`` would give (the umask), a format version and a
  SHA-256 over the header and the tensors; it first removes temporary files that writers
  killed mid-write left behind (never one a live writer holds: writers lock theirs).
- :func:`read_header` reads the header and the tensors' names, dtypes and shapes, not their
  data, within bounds (a header of at most :data:`MAX_HEADER_BYTES`), so that a reader can
  check what the file claims before it allocates anything.
- :func:`read_tensors` then reads the tensors and checks the checksum.

A checksum can be recomputed by whoever crafts a file: it finds accidents (a truncated copy,
a flipped bit, a hand edit), and validation of every value by the reader is the defence.
Reading parses JSON and copies bytes; nothing is unpickled.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import os
import struct
import tempfile
import time
from dataclasses import dataclass

import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file

from ._version import __version__

FORMAT_NAME = "cebra-halfunet"
#: 3: the checksum covers the header too, and machine-local settings (checkpoint_path, device,
#: ...) are no longer stored. 2: the target format keeps the layout (channels-last) and the
#: value rules. Files of versions 1 and 2 load, every value validated.
FORMAT_VERSION = 3
_HEADER_KEY = "cebra_halfunet"
#: The most header bytes read: more is refused unread.
MAX_HEADER_BYTES = 16 * 2**20
_TEMPORARY = ".halfunet-*.tmp"
#: A temporary file this old and unlocked is a dead writer's (younger ones may be a writer's
#: between creating its file and locking it).
_STALE_S = 60


@dataclass(frozen=True)
class TensorInfo:
    """A tensor as the safetensors header describes it (its data not read)."""

    dtype: str  # safetensors' name: "F32", "I64", ...
    shape: tuple[int, ...]


# ------------------------------------------------------------------------ writing
def write_file(path: str | os.PathLike, tensors: dict[str, torch.Tensor], header: dict) -> None:
    """Write ``tensors`` and the JSON-serialisable ``header`` to ``path`` atomically.

    ``path`` always holds either the previous complete file or the new one. The file gets
    the permissions a new file gets from ``open`` (``0o666`` less the umask).
    """
    tensors = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in tensors.items()}
    header = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "library_version": __version__,
        "torch_version": torch.__version__.split("+")[0], **header,
    }
    header["sha256"] = _checksum(header, tensors)
    folder = os.path.dirname(os.path.abspath(path))
    remove_stale_temporaries(folder)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".halfunet-", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # held while writing: a cleaner never removes it
            save_file(tensors, temporary, metadata={_HEADER_KEY: json.dumps(header)})
            os.chmod(temporary, 0o666 & ~_umask())
            os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


def remove_stale_temporaries(folder: str) -> None:
    """Remove the temporary files of writers that died mid-write (older than a minute, and
    no one holds their lock)."""
    for name in glob.glob(os.path.join(glob.escape(folder), _TEMPORARY)):
        with contextlib.suppress(OSError), open(name, "rb") as file:
            if time.time() - os.fstat(file.fileno()).st_mtime > _STALE_S:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while a writer holds it
                os.remove(name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def exclusive(path: str | os.PathLike, what: str):
    """Hold a lock on ``path`` (a lock file ``.<name>.lock`` beside it) for the block; a
    ValueError naming ``what`` if another live process holds it. The lock dies with its
    process, so a run killed with ``kill -9`` can be resumed at once."""
    folder, name = os.path.split(os.path.abspath(path))
    with open(os.path.join(folder, f".{name}.lock"), "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            lock.seek(0)
            raise ValueError(
                f"{what}={os.fspath(path)!r} is in use by another fit (process {lock.read().strip() or '?'}): "
                "give each fit its own path."
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        yield


# ------------------------------------------------------------------------ reading
def read_header(path: str | os.PathLike) -> tuple[dict, dict[str, TensorInfo]]:
    """``(header, tensor infos)`` of a decoder file, without reading the tensors' data.

    Raises ``ValueError`` for anything else: not a safetensors file (a pickle, say), a header
    beyond the bounds, a missing or malformed header, a newer format version.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path {os.fspath(path)!r} does not exist.")
    not_ours = f"path {os.fspath(path)!r} is not a {FORMAT_NAME} decoder file"
    with open(path, "rb") as file:
        prefix = file.read(8)
        size = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else None
        if size is None or size > MAX_HEADER_BYTES:
            raise ValueError(f"{not_ours} (not a safetensors file: no header of at most {MAX_HEADER_BYTES} bytes).")
        raw = file.read(size)
    safetensors_header = _parse_json(raw, not_ours)
    metadata = safetensors_header.pop("__metadata__", None) if isinstance(safetensors_header, dict) else None
    header = _parse_json(metadata.get(_HEADER_KEY, ""), not_ours) if isinstance(metadata, dict) else None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise ValueError(f"{not_ours} (no {FORMAT_NAME} header).")
    version = header.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise ValueError(
            f"{not_ours} of a version this installation can read: format_version {version!r}, "
            f"this cebra-halfunet reads 1 to {FORMAT_VERSION}. Upgrade cebra-halfunet."
        )
    try:
        infos = {name: TensorInfo(entry["dtype"], tuple(int(n) for n in entry["shape"])) for name, entry in safetensors_header.items()}
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{not_ours} (its tensor table is malformed).") from None
    return header, infos


def _parse_json(text, not_ours: str):
    """The JSON value of ``text``, or None; a ValueError for JSON nested deeper than Python parses."""
    text = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    if not isinstance(text, str):
        return None
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(f"{not_ours} (its header is nested too deep to be a decoder's).") from None
    except ValueError:
        return None


def read_tensors(path: str | os.PathLike, header: dict) -> dict[str, torch.Tensor]:
    """The tensors of a file whose ``header`` :func:`read_header` gave; a ValueError when
    they, or the header, do not match the file's checksum (altered or corrupted)."""
    try:
        with safe_open(path, framework="pt", device="cpu") as file:
            tensors = {name: file.get_tensor(name) for name in file.keys()}
    except (SafetensorError, OSError) as error:
        raise ValueError(f"path {os.fspath(path)!r}: its tensors cannot be read ({error}).") from None
    if header.get("sha256") != _checksum(header, tensors):
        raise ValueError(f"path {os.fspath(path)!r}: its contents do not match the file's checksum (altered or corrupted).")
    return tensors


def _checksum(header: dict, tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the header (without its checksum; from format 3 on) and the names,
    dtypes, shapes and bytes of the tensors, in name order."""
    digest = hashlib.sha256()
    if header.get("format_version", FORMAT_VERSION) >= 3:
        covered = {key: value for key, value in header.items() if key != "sha256"}
        digest.update(json.dumps(covered, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
