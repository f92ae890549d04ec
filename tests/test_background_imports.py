"""The worker thread's imports of the model libraries keep the other threads running
(core/background_imports.py): no automatic full garbage collection during them, and native
libraries opened with the GIL released, in the importing thread only.

(The event loop's longest stall is measured by benchmarks/bench_event_loop.py, which prints it.)
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import importlib
import os
import shutil
import sys
import sysconfig
import threading

import pytest

from drseg.core import background_imports as bi

needs_dlopen = pytest.mark.skipif(bi._LIBC is None, reason="no dlopen in this C library")


def test_the_garbage_collector_pauses_in_the_block_and_the_imported_objects_are_frozen():
    assert gc.isenabled()
    frozen = gc.get_freeze_count()
    with bi.gc_paused():
        assert not gc.isenabled()
        with bi.gc_paused():           # nested (or a second worker): one shared pause
            pass
        assert not gc.isenabled()
        created = [[index] for index in range(1000)]   # objects the GC tracks
    assert gc.isenabled()
    assert gc.get_freeze_count() >= frozen + len(created)
    gc.unfreeze()


def test_a_collector_disabled_before_stays_disabled():
    gc.disable()
    try:
        with bi.gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.unfreeze()
        gc.enable()


@needs_dlopen
def test_the_gil_free_dlopen_answers_like_ctypes():
    libm = ctypes.util.find_library("m")
    assert bi.dlopen_releasing_gil(libm, ctypes.DEFAULT_MODE)
    with pytest.raises(OSError, match="no-such-library"):
        bi.dlopen_releasing_gil("/nonexistent/no-such-library.so", ctypes.DEFAULT_MODE)


@needs_dlopen
def test_extension_modules_of_the_listed_packages_open_first_without_the_gil(tmp_path, monkeypatch):
    # A package holding a real extension module (a copy of the standard library's _json).
    package = tmp_path / "drseg_fake_torch"
    package.mkdir()
    (package / "__init__.py").write_text("")
    import _json

    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    shutil.copy(_json.__file__, package / f"_json{suffix}")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(bi, "PRELOADED_PACKAGES", ("drseg_fake_torch",))
    opened = []
    real = bi.dlopen_releasing_gil

    def recording(path, mode):
        opened.append((os.path.basename(path) if path else path, threading.get_ident()))
        return real(path, mode)

    monkeypatch.setattr(bi, "dlopen_releasing_gil", recording)

    other_thread_opened = []

    def import_in_another_thread():
        before = len(opened)
        ctypes.CDLL(ctypes.util.find_library("m"))
        other_thread_opened.append(len(opened) - before)

    with bi.gil_free_loading():
        module = importlib.import_module("drseg_fake_torch._json")
        ctypes.CDLL(ctypes.util.find_library("m"))       # as torch opens its CUDA libraries
        helper = threading.Thread(target=import_in_another_thread)
        helper.start()
        helper.join()
    assert module.make_encoder is not None               # a working module
    me = threading.get_ident()
    assert (f"_json{suffix}", me) in opened
    assert any(name and name.startswith("libm") and ident == me for name, ident in opened)
    assert other_thread_opened == [0]                    # other threads load as before
    # After the block: ctypes and the import system are as they were.
    assert ctypes._dlopen is bi._original_dlopen
    assert not any(isinstance(finder, bi._PreloadingFinder) for finder in sys.meta_path)
    sys.modules.pop("drseg_fake_torch._json", None)
    sys.modules.pop("drseg_fake_torch", None)


@needs_dlopen
def test_a_delegating_finder_of_someone_else_does_not_loop_with_ours(monkeypatch):
    class Delegating:   # finds through the others, as import recorders and profilers do
        def find_spec(self, name, path=None, target=None):
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    return spec
            return None

    monkeypatch.setattr(bi, "PRELOADED_PACKAGES", ("colorsys",))
    other = Delegating()
    sys.meta_path.insert(0, other)
    try:
        with bi.gil_free_loading():
            sys.modules.pop("colorsys", None)
            assert importlib.import_module("colorsys").rgb_to_hsv(1, 0, 0)[2] == 1
    finally:
        sys.meta_path.remove(other)


def test_only_a_run_that_imports_something_pauses_and_freezes():
    """Later runs import nothing: no pause, and no cyclic garbage of earlier runs frozen for good."""
    from drseg.qgis_bridge.engine import import_model_libraries

    gc.unfreeze()
    import_model_libraries(("json",))                # imported already
    assert gc.get_freeze_count() == 0
    sys.modules.pop("colorsys", None)
    import_model_libraries(("colorsys",))            # a first import
    assert gc.get_freeze_count() > 0 and "colorsys" in sys.modules
    gc.unfreeze()


def test_a_later_block_collects_earlier_garbage_before_freezing_again():
    """Cycles an earlier run left behind (e.g. a cancelled run's traceback holding arrays) are
    collected when a later import block starts, not frozen for good with the new libraries."""
    import weakref

    class Node:
        pass

    with bi.gc_paused():          # a first run's imports: the process is frozen once
        pass
    try:
        garbage = Node()
        garbage.self = garbage    # a cycle only the collector frees
        alive = weakref.ref(garbage)
        del garbage
        with bi.gc_paused():      # a later run imports another library
            pass
        assert alive() is None
    finally:
        gc.unfreeze()
