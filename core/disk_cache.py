"""Embeddings kept on disk across runs, sessions and front ends.

An area encoded once (SAM's image embedding, dense CLIP features) and a phrase encoded once
(text embeddings) are stored as safetensors files (tensors and string metadata only: nothing is
executed when loading), one file per entry, named by the SHA-256 of its key. A key names
everything the stored value depends on: the raster's identity (absolute path, size,
modification time), the area and working grid, the model's identity (:func:`model_fingerprint`)
and the settings that shape the value.

- Writes go to a temporary file in the same folder, then ``os.replace``: a reader never sees half
  a file and concurrent processes writing the same entry just replace each other's copy.
- A file that cannot be read (truncated, corrupt, another key) is removed and counts as a miss.
- Least recently used entries are removed once the folder holds more than the byte budget; a hit
  stamps the file's modification time, so file times are the LRU order (no shared index to lock).

Where: an explicit folder, else ``DRSEG_EMBEDDING_CACHE`` (a folder, or ``off``), else
``embeddings/`` inside the model cache folder (``DRSEG_CACHE_DIR`` > saved settings > the
platform default, :meth:`Settings.effective_cache_dir`). The settings' ``embedding_cache``
turns it off and ``embedding_cache_mb`` is the budget.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np

EMBEDDINGS_ENV = "DRSEG_EMBEDDING_CACHE"
SUBFOLDER = "embeddings"
SUFFIX = ".safetensors"
_TEMP_PREFIX = ".partial-"
_STALE_TEMP_SECONDS = 3600.0         # a temporary file this old belongs to a crashed writer
_OFF = ("off", "0", "false", "no", "none")


def key_digest(parts) -> str:
    """SHA-256 of a JSON-able description of everything a value depends on."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def raster_identity(path: str) -> Dict[str, object]:
    """A raster file as a key part: absolute path, size and modification time (an edited or
    replaced file gets another key)."""
    path = os.path.abspath(path)
    try:
        stat = os.stat(path)
        return {"path": path, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    except OSError:
        return {"path": path}


_FINGERPRINTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_FINGERPRINT_LOCK = threading.Lock()


def model_fingerprint(model) -> str:
    """SHA-256 over a torch module's state: every tensor's name, shape, dtype and an evenly
    strided sample of up to 4096 of its values (different weights differ in the sample; hashing
    all of a ViT-H would take seconds). Computed once per model object."""
    with _FINGERPRINT_LOCK:
        try:
            cached = _FINGERPRINTS.get(model)
        except TypeError:
            cached = None
        if cached is not None:
            return cached
        digest = hashlib.sha256(type(model).__name__.encode())
        for name, tensor in model.state_dict().items():
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // 4096)
            sample = flat[::step].float().cpu().numpy()
            digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
            digest.update(np.ascontiguousarray(sample).tobytes())
        value = digest.hexdigest()
        try:
            _FINGERPRINTS[model] = value
        except TypeError:
            pass
        return value


@dataclass
class CacheInfo:
    folder: str
    entries: int
    bytes: int
    budget_bytes: int


class DiskCache:
    """Named tensor dictionaries on disk (module doc). ``budget_bytes``: the folder is trimmed
    to this size, least recently used first."""

    def __init__(self, folder: str, budget_bytes: int = 2048 * 2 ** 20):
        self.folder = os.path.abspath(folder)
        self.budget_bytes = int(budget_bytes)
        self.hits = 0
        self.misses = 0

    def path(self, kind: str, key) -> str:
        return os.path.join(self.folder, f"{kind}-{key_digest(key)}{SUFFIX}")

    def get(self, kind: str, key) -> Optional[Dict[str, "object"]]:
        """{name: torch tensor} stored under (kind, key), or None (missing or unreadable)."""
        from safetensors import safe_open

        path = self.path(kind, key)
        if not os.path.exists(path):
            self.misses += 1
            return None
        try:
            with safe_open(path, framework="pt") as handle:
                if (handle.metadata() or {}).get("key") != json.dumps(key, sort_keys=True,
                                                                      default=str):
                    raise ValueError("another key")
                # own, aligned memory: a tensor at the file's data offset may be misaligned,
                # and vectorised kernels would then round differently than on the original
                tensors = {name: handle.get_tensor(name).clone() for name in handle.keys()}
        except Exception:                  # truncated, corrupt or foreign: a miss, and gone
            _remove(path)
            self.misses += 1
            return None
        _touch(path)
        self.hits += 1
        return tensors

    def put(self, kind: str, key, tensors: Dict[str, "object"]) -> bool:
        """Store; False when the folder is not writable (the cache is an optimisation only)."""
        from safetensors.torch import save_file

        path = self.path(kind, key)
        tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
        temporary = None
        try:
            os.makedirs(self.folder, exist_ok=True)
            handle, temporary = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=SUFFIX,
                                                 dir=self.folder)
            os.close(handle)
            save_file(tensors, temporary,
                      metadata={"key": json.dumps(key, sort_keys=True, default=str)})
            os.replace(temporary, path)
            temporary = None
            _touch(path)
        except (OSError, ValueError, RuntimeError):
            return False
        finally:
            if temporary is not None:
                _remove(temporary)
        self.trim()
        return True

    def _entries(self):
        """[(mtime_ns, size, path)] of the stored entries; stale temporary files are removed."""
        entries = []
        try:
            names = os.listdir(self.folder)
        except OSError:
            return entries
        now = time.time()
        for name in names:
            path = os.path.join(self.folder, name)
            try:
                stat = os.stat(path)
            except OSError:
                continue                    # removed by another process meanwhile
            if name.startswith(_TEMP_PREFIX):
                if now - stat.st_mtime > _STALE_TEMP_SECONDS:
                    _remove(path)
            elif name.endswith(SUFFIX):
                entries.append((stat.st_mtime_ns, stat.st_size, path))
        return entries

    def trim(self) -> int:
        """Remove least recently used entries until the folder fits the budget; -> removed."""
        entries = sorted(self._entries())
        total = sum(size for _, size, _ in entries)
        removed = 0
        for _, size, path in entries:
            if total <= self.budget_bytes:
                break
            _remove(path)
            total -= size
            removed += 1
        return removed

    def clear(self) -> int:
        """Remove every entry; -> how many."""
        entries = self._entries()
        for _, _, path in entries:
            _remove(path)
        return len(entries)

    def info(self) -> CacheInfo:
        entries = self._entries()
        return CacheInfo(self.folder, len(entries), sum(size for _, size, _ in entries),
                         self.budget_bytes)


def _touch(path: str) -> None:
    now = time.time_ns()               # explicit: file system clocks can be coarse
    try:
        os.utime(path, ns=(now, now))
    except OSError:
        pass


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def cache_folder(settings=None, environ=None, models_folder: Optional[str] = None
                 ) -> Optional[str]:
    """Where embeddings go (module doc), or None when turned off. ``models_folder``: the model
    cache folder a front end was told (it wins over the environment and the settings)."""
    environ = os.environ if environ is None else environ
    chosen = (environ.get(EMBEDDINGS_ENV) or "").strip()
    if chosen.lower() in _OFF:
        return None
    if chosen:
        return os.path.abspath(os.path.expanduser(chosen))
    if settings is None:
        from .settings import load_settings_or_defaults

        settings, _ = load_settings_or_defaults()
    if not settings.embedding_cache:
        return None
    models = models_folder or settings.effective_cache_dir(environ)
    return os.path.join(os.path.abspath(os.path.expanduser(models)), SUBFOLDER)


def embedding_cache(folder: Optional[str] = None, settings=None, environ=None,
                    models_folder: Optional[str] = None) -> Optional[DiskCache]:
    """The embedding cache: ``folder`` when given, else where the environment and settings say
    (:func:`cache_folder`); None when it is turned off."""
    if settings is None:
        from .settings import load_settings_or_defaults

        settings, _ = load_settings_or_defaults()
    folder = folder or cache_folder(settings, environ, models_folder)
    if folder is None:
        return None
    return DiskCache(folder, int(settings.embedding_cache_mb) * 2 ** 20)


def clear_embedding_cache(folder: Optional[str] = None) -> int:
    """Remove every stored embedding (the settings dialog's button, ``drseg cache clear``)."""
    cache = embedding_cache(folder)
    return cache.clear() if cache is not None else 0


USE_DEFAULT = "default"          # a consumer's disk_cache argument: resolve embedding_cache() lazily


def resolve_cache(cache) -> Optional[DiskCache]:
    """``USE_DEFAULT`` -> :func:`embedding_cache` (None when off); None or a DiskCache as given."""
    if isinstance(cache, str) and cache == USE_DEFAULT:
        return embedding_cache()
    return cache


def array_digest(*arrays) -> str:
    """SHA-256 of arrays' shapes, dtypes and bytes (an area given as pixels, not a file)."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.shape}|{array.dtype}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
