"""Importing torch and the model libraries in a worker thread without freezing the other threads.

A first `import torch, open_clip` in QGIS's task thread still stopped QGIS's event loop for up to
0.2–0.5 s at a time, for two reasons, both fixed inside `background_imports()`:

- The garbage collector: the imports create millions of objects, so Python runs full
  collections during them, each walking every object of the process with the GIL held (26, 57,
  80 ... 207 ms, growing with the heap). Automatic collection is paused during the block, and
  what the imports created is frozen afterwards (`gc.freeze`): modules, classes and functions
  live as long as the process, and later collections need not walk them again.
- Native libraries: Python holds the GIL while it loads an extension module and while
  `ctypes.CDLL` opens a library, and torch opens about 1.5 GB of them (libtorch_cpu,
  libtorch_cuda, cuDNN, cuBLAS ...). In the block, the calling thread opens them through libc's
  `dlopen` called as a ctypes foreign function, which releases the GIL; the import that follows
  finds them loaded. Only extension modules of `PRELOADED_PACKAGES` are opened ahead: the
  libraries they pull in are plain C++ libraries, whose static initialisers need no GIL.

Other threads import as before.
"""
import contextlib
import ctypes
import gc
import importlib.machinery
import os
import sys
import threading
from typing import Iterator, Optional

# Top-level packages whose extension modules are opened ahead with the GIL released.
PRELOADED_PACKAGES = ("torch", "torchvision")


def _libc_dlopen():
    """(dlopen, dlerror) of the C library as ctypes functions, or None where there is none."""
    if os.name != "posix":
        return None
    try:
        libc = ctypes.CDLL(None)
        dlopen, dlerror = libc.dlopen, libc.dlerror
    except (OSError, AttributeError):
        return None
    dlopen.restype, dlopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_int]
    dlerror.restype, dlerror.argtypes = ctypes.c_char_p, []
    return dlopen, dlerror


_LIBC = _libc_dlopen()


def dlopen_releasing_gil(path: Optional[str], mode: int) -> int:
    """`_ctypes.dlopen(path, mode)` (same result and OSError), with the GIL released meanwhile."""
    dlopen, dlerror = _LIBC
    if not mode & (os.RTLD_NOW | os.RTLD_LAZY):
        mode |= os.RTLD_NOW  # as _ctypes.dlopen does
    handle = dlopen(None if path is None else os.fsencode(path), mode)
    if not handle:
        raise OSError((dlerror() or b"dlopen failed").decode(errors="replace"))
    return handle


class _PreloadingFinder:
    """A meta-path finder that finds nothing itself: for the owning thread, when another finder
    finds an extension module of PRELOADED_PACKAGES, it opens the module's file (and so every
    library it needs) with the GIL released, before Python's loader opens it again."""

    def __init__(self, thread_id: int):
        self.thread_id = thread_id
        self._inside = threading.local()   # other delegating finders may call back into this one

    def find_spec(self, name, path=None, target=None):
        if threading.get_ident() != self.thread_id or getattr(self._inside, "active", False):
            return None
        if name.partition(".")[0] not in PRELOADED_PACKAGES:
            return None
        self._inside.active = True
        try:
            spec = self._spec_from_the_others(name, path, target)
        finally:
            self._inside.active = False
        if spec is not None and isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
            try:
                dlopen_releasing_gil(spec.origin, sys.getdlopenflags())
            except OSError:
                pass  # the import proper reports it
        return spec

    def _spec_from_the_others(self, name, path, target):
        for finder in list(sys.meta_path):
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                return spec
        return None


_patch_lock = threading.Lock()
_patch_owners: dict = {}      # thread id -> nesting depth, while ctypes._dlopen is replaced
_original_dlopen = ctypes._dlopen


def _ctypes_dlopen(path, mode=ctypes.DEFAULT_MODE):
    if threading.get_ident() in _patch_owners:
        return dlopen_releasing_gil(path, mode)
    return _original_dlopen(path, mode)


_gc_lock = threading.Lock()
_gc_pausers = 0               # blocks that paused automatic collection and are still running
_gc_was_enabled = False


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No automatic garbage collection in the block (in any thread; nested and concurrent blocks
    share one pause); afterwards, what exists is frozen out of later collections."""
    global _gc_pausers, _gc_was_enabled
    with _gc_lock:
        if _gc_pausers == 0:
            if gc.get_freeze_count() and gc.isenabled():
                # a later import block: collect what earlier runs left (a cancelled run's cycles)
                # before freezing again, or it would be kept for good; the frozen part (the
                # libraries) is not walked, so this is short
                gc.collect()
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0:
                gc.freeze()  # the imported modules stay; collections need not walk them again
                if _gc_was_enabled:
                    gc.enable()


@contextlib.contextmanager
def gil_free_loading() -> Iterator[None]:
    """In this block, imports of the calling thread open torch's libraries with the GIL released
    (other threads keep running Python, e.g. QGIS's event loop). No-op where libc has no dlopen."""
    if _LIBC is None:
        yield
        return
    me = threading.get_ident()
    finder = _PreloadingFinder(me)
    with _patch_lock:
        _patch_owners[me] = _patch_owners.get(me, 0) + 1
        ctypes._dlopen = _ctypes_dlopen      # torch opens its CUDA and global deps via ctypes.CDLL
        # a new list, never the live one changed in place: another thread may be iterating it
        sys.meta_path = [finder, *sys.meta_path]
    try:
        yield
    finally:
        with _patch_lock:
            if finder in sys.meta_path:
                sys.meta_path = [f for f in sys.meta_path if f is not finder]
            _patch_owners[me] -= 1
            if not _patch_owners[me]:
                del _patch_owners[me]
            if not _patch_owners:
                ctypes._dlopen = _original_dlopen


@contextlib.contextmanager
def background_imports() -> Iterator[None]:
    """Import heavy libraries in this (worker) thread while other threads keep running: no
    full garbage collections during the block, native libraries opened with the GIL released."""
    with gc_paused(), gil_free_loading():
        yield
