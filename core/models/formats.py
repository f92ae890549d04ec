"""What kind of file a checkpoint is, told from its bytes without torch and without unpickling.

The downloader checks what arrived with it (an HTML error page saved by a failed download, an
empty file, a zip around the real checkpoint, a TorchScript archive) and `checkpoints` refuses
such files before torch reads them, so the user reads what is wrong instead of a pickle
traceback. Standard library only: the model cache works in a QGIS without torch.
"""
from __future__ import annotations

import os
import zipfile
from typing import Tuple

from ..errors import ModelError

_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024

# What `probe_format` can answer.
SAFETENSORS = "safetensors"
TORCH_ZIP = "torch-zip"          # torch.save's default format (a zip holding data.pkl)
TORCH_LEGACY = "torch-legacy"    # torch.save(..., _use_new_zipfile_serialization=False) or a pickle
TORCHSCRIPT = "torchscript"
ZIP_ARCHIVE = "zip-archive"      # a plain zip (e.g. a checkpoint packed for download)
HTML = "html"
EMPTY = "empty"
UNKNOWN = "unknown"


def probe_format(path: str) -> str:
    """Tell what kind of file `path` is from its first bytes, without unpickling anything."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(64)
    except OSError as exc:
        raise ModelError(f"Cannot read checkpoint '{path}' ({exc.strerror or exc})") from None
    if not head:
        return EMPTY
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return _probe_zip(path)
    if len(head) >= 9 and head[8:9] == b"{":
        header_len = int.from_bytes(head[:8], "little")
        if 2 <= header_len <= _MAX_SAFETENSORS_HEADER:
            return SAFETENSORS
    if head.lstrip()[:1] == b"<":
        return HTML
    if head[:1] == b"\x80":  # pickle protocol marker; torch's legacy format starts with one
        return TORCH_LEGACY
    return UNKNOWN


def is_torchscript(path: str) -> bool:
    """A zip holding TorchScript code (refused: loading it can run code)."""
    return zipfile.is_zipfile(path) and _probe_zip(path) == TORCHSCRIPT


def _probe_zip(path: str) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return TORCH_ZIP  # looks like a zip but is damaged: torch.load reports it as corrupt
    if any(name.endswith("constants.pkl") or "/code/" in name for name in names):
        return TORCHSCRIPT
    if any(name.endswith("data.pkl") for name in names):
        return TORCH_ZIP
    return ZIP_ARCHIVE


def refuse_non_weights(path: str, kind: str) -> None:
    """A ModelError saying what `path` is instead, for the kinds that are never weights."""
    if kind == EMPTY:
        raise ModelError(f"Checkpoint '{path}' is empty (0 bytes); download it again")
    if kind == HTML:
        raise ModelError(f"Checkpoint '{path}' is a web page (HTML), not model weights: the download "
                         "probably failed or needed a login; download it again or import the real file")
    if kind == TORCHSCRIPT:
        raise ModelError(f"Checkpoint '{path}' is a TorchScript archive, which can run code; "
                         "use a plain state-dict or safetensors file instead")
    if kind == ZIP_ARCHIVE:
        with zipfile.ZipFile(path) as archive:
            inside = [n for n in archive.namelist() if not n.endswith("/")][:3]
        raise ModelError(f"'{path}' is a zip archive, not a checkpoint (it holds {', '.join(inside)}"
                         f"{' ...' if len(inside) == 3 else ''}); extract the checkpoint file "
                         "and use that")


def describe_file(path: str) -> Tuple[str, int]:
    """(format, size in bytes) of a file, for messages and `models verify`."""
    return probe_format(path), os.path.getsize(path)
