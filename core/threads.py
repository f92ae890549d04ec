"""Small tensor work on one CPU thread.

torch splits every CPU operation over its intra-op threads. For large operations (an image
encoder's matrix products) that pays; for the small ones of an interactive referring query (a
few short prompts through the text tower, SAM's mask decoder on a handful of prompt sets) each
split costs a synchronisation of the threads, and when other processes compete for the cores (a
busy desktop, QGIS rendering, other jobs) a thread waits for the other to be scheduled at every
operation. Measured on 2 shared cores at load average 10: SAM ViT-B's mask decoder on 3 prompt
sets took 1.6-2.6 s on 2 threads and 0.5-0.6 s on 1; two short prompts through the ViT-B text
tower 0.36-0.78 s against 0.10 s. On an idle machine one thread costs little there, since such
operations hardly parallelise anyway.

    with light_work():
        ...                      # torch runs on one intra-op thread here

The count is the calling thread's (torch keeps it per thread: a QGIS task's worker thread
changes its own), saved on entry and restored on exit, so blocks nest. But torch also makes the
last count set the one a *new* thread starts with: a thread whose first torch work falls inside
another thread's block keeps one thread for good. So every run starts with `all_cores()`, which
gives its thread the count the process had before any block.
"""
from __future__ import annotations

import contextlib
import sys
import threading

_lock = threading.Lock()
_full_count = None      # the intra-op thread count before the first light_work() block


@contextlib.contextmanager
def light_work():
    """torch on one intra-op thread inside the block (module doc); the count is restored after."""
    import torch

    global _full_count
    saved = torch.get_num_threads()
    with _lock:
        if _full_count is None:
            _full_count = saved
    if saved > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if saved > 1:
            torch.set_num_threads(saved)


def all_cores() -> None:
    """The calling thread back on the process's full thread count (called when a run starts)."""
    torch = sys.modules.get("torch")
    if torch is None or _full_count is None:   # no block ever ran: nothing to repair
        return
    if torch.get_num_threads() != _full_count:
        torch.set_num_threads(_full_count)
