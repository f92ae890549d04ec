"""Adapters as local entries of the model catalog.

An adapter is listed when its file lies in the model cache folder's `adapters/` subfolder (where
`models import adapter FILE` copies it and `adapt --out NAME` writes it) or in the cache folder
itself; its name is the file name without `.safetensors`. What a listing shows (base model,
classes, level, metrics, date) is read from the safetensors header, which is JSON: no torch, no
tensor data. `--adapter` takes such a name or a path.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

from ..errors import InputError
from .defaults import ADAPTER_FORMAT

SUBFOLDER = "adapters"
SUFFIX = ".safetensors"
_HEADER_LIMIT = 100 * 2 ** 20        # safetensors' own limit on a header
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class AdapterInfo:
    name: str
    path: str
    level: str
    base_model: str
    base_weights: str
    classes: List[str]
    created: str
    metrics: Dict = field(default_factory=dict)

    def miou_text(self) -> str:
        """'41.0 -> 63.5' (held-out mIoU before and after), or '' when not recorded."""
        before = (self.metrics.get("before") or {}).get("mIoU")
        after = (self.metrics.get("after") or {}).get("mIoU")
        if before is None or after is None:
            return ""
        return f"{before:.1f} -> {after:.1f}"

    def to_dict(self) -> Dict:
        return asdict(self)


def read_header(path: str) -> Dict[str, str]:
    """The string metadata of a safetensors file, read from its JSON header (no tensor is
    loaded). InputError when the file is not a safetensors file."""
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if not 0 < length <= _HEADER_LIMIT:
                raise ValueError("header size out of range")
            header = json.loads(handle.read(length).decode("utf-8"))
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"'{path}' is not a safetensors file ({exc})") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else {}


def adapter_info(path: str, name: Optional[str] = None) -> AdapterInfo:
    """What a listing shows of an adapter file; InputError when it is not a DR-Seg adapter."""
    metadata = read_header(path)
    if metadata.get("format") != ADAPTER_FORMAT:
        raise InputError(f"'{path}' is not a DR-Seg adapter file")
    try:
        classes = json.loads(metadata.get("classes") or "[]")
        metrics = json.loads(metadata.get("metrics") or "{}")
    except ValueError as exc:
        raise InputError(f"Adapter file '{path}' has damaged metadata ({exc})") from None
    return AdapterInfo(name or _stem(path), os.path.abspath(path), metadata.get("level", ""),
                       metadata.get("base_model", ""), metadata.get("base_weights", ""),
                       list(classes), metadata.get("created", ""),
                       metrics if isinstance(metrics, dict) else {})


def adapters_folder(cache_dir: Optional[str] = None) -> str:
    from ..models.download import resolve_cache_dir

    return os.path.join(resolve_cache_dir(cache_dir), SUBFOLDER)


def list_adapters(cache_dir: Optional[str] = None) -> List[AdapterInfo]:
    """The adapters in the model cache, by name (one in `adapters/` wins over a namesake in the
    cache folder itself); files that are not adapters are skipped."""
    from ..models.download import resolve_cache_dir

    found: Dict[str, AdapterInfo] = {}
    for folder in (adapters_folder(cache_dir), resolve_cache_dir(cache_dir)):
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        for file_name in names:
            path = os.path.join(folder, file_name)
            if not file_name.endswith(SUFFIX) or not os.path.isfile(path):
                continue
            name = _stem(path)
            if name in found:
                continue
            try:
                found[name] = adapter_info(path, name)
            except InputError:
                continue          # a model checkpoint, an embedding, a damaged file
    return [found[n] for n in sorted(found)]


def resolve_adapter(value: str, cache_dir: Optional[str] = None) -> str:
    """A path or a catalog name -> the adapter file; one clear InputError when it is neither."""
    value = str(value).strip()
    if os.path.isfile(value):
        return value
    looks_like_path = os.sep in value or "/" in value or value.endswith(SUFFIX)
    if not looks_like_path:
        for info in list_adapters(cache_dir):
            if info.name == value:
                return info.path
    names = [info.name for info in list_adapters(cache_dir)]
    known = f"; adapters in the model cache: {', '.join(names)}" if names else \
        " and the model cache holds no adapters ('python -m drseg models list')"
    what = "file" if looks_like_path else "file or adapter name"
    raise InputError(f"Adapter {what} '{value}' not found{known}")


def destination(out: str, cache_dir: Optional[str] = None) -> str:
    """`adapt --out`: a bare NAME (no folder, no suffix) is written into the model cache as a
    catalog entry; anything else is a path."""
    out = str(out)
    if _NAME.match(out) and not out.endswith(SUFFIX) and not os.path.dirname(out) \
            and "." not in out:
        return os.path.join(adapters_folder(cache_dir), out + SUFFIX)
    return out


def import_adapter(path: str, cache_dir: Optional[str] = None, name: Optional[str] = None,
                   status=None) -> AdapterInfo:
    """Check that `path` is a DR-Seg adapter and copy it into the cache's adapters folder (the
    original is never changed); -> the new entry."""
    from ..models.download import writable_cache

    if not os.path.isfile(str(path)):
        raise InputError(f"Adapter file to import not found: '{path}'")
    adapter_info(path)                                 # refuses anything else before copying
    name = name or _stem(path)
    if not _NAME.match(name):
        raise InputError(f"'{name}' cannot be an adapter name (letters, digits, '.', '_', '-')")
    folder = adapters_folder(cache_dir)
    writable_cache(folder)
    final = os.path.join(folder, name + SUFFIX)
    if os.path.abspath(final) != os.path.abspath(path):
        if status:
            status(f"Copying {os.path.basename(path)} into {folder}")
        partial = final + ".importing"
        try:
            shutil.copyfile(path, partial)
            os.replace(partial, final)
        except OSError as exc:
            if os.path.exists(partial):
                os.remove(partial)
            raise InputError(f"Cannot copy '{path}' into '{folder}' ({exc.strerror or exc})") from None
    return adapter_info(final, name)


def _stem(path: str) -> str:
    base = os.path.basename(str(path))
    return base[:-len(SUFFIX)] if base.endswith(SUFFIX) else base
