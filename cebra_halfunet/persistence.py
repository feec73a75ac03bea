"""Decoder files that cannot run code when they are read.

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

import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file

FORMAT_NAME = "cebra-halfunet"
FORMAT_VERSION = 1
_HEADER_KEY = "cebra_halfunet"


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
    from . import __version__

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
