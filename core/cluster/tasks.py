"""What a Dask worker runs for one raster: a task of k×k blocks, written as a part file.

A task scores the windows its blocks need, including the halo of windows owned by neighbouring
blocks (SlidingWindowSegmenter.segment_blocks), so its blocks are bit for bit those of a run over
the whole raster. Part files are written to a temporary name and renamed, so a worker lost in the
middle of a task (Dask runs it again elsewhere) never leaves half a part behind.

Each worker process builds the scorer once per scorer factory (the model cache of
core/models/cache.py, keyed by the factory, which is hashable) and keeps it for later tasks and
runs. The factory also says which engine the task runs: a ScorerRecipe (DR-Seg, dense CLIP) or a
plain factory the sliding windows of the task's geometry, a Sam3Recipe SAM 3's tiles, a
HybridRecipe both, fused (the block sources core/segment.py builds in one process).
"""
from __future__ import annotations

import math
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..models.cache import cached

TASKS_PER_WORKER = 3     # enough tasks to balance uneven blocks and to survive a lost worker
MAX_TASK_BLOCKS = 8      # k of the largest k×k task: bounds a task's memory and halo reading
HALO_WINDOWS = 4         # a task side spans at least this many windows where the raster allows

_LOCKS: Dict[object, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


@dataclass(frozen=True)
class BlockTask:
    """One task: the blocks `blocks` (indices into the run's block list, ascending)."""

    index: int
    blocks: Tuple[int, ...]
    raster: str
    bands: Optional[Tuple[int, ...]]
    extent: Optional[Tuple[float, ...]]
    resolution: Optional[float]
    stretch: Optional[Tuple[Tuple[float, float], ...]]
    queries: Tuple[str, ...]
    owner: Tuple[int, ...]
    threshold: float
    window: int
    stride: int
    block: int
    batch_size: int
    blend: str
    keep_probabilities: bool
    factory: object          # picklable, hashable callable -> scorer
    work_dir: str            # where the part goes when the worker sees that folder
    cancel_event: str        # name of the run's distributed.Event, set when the run is cancelled


def choose_task_blocks(block_count: int, workers: int, block: int = 512, window: int = 224) -> int:
    """k for k×k-block tasks. A task also scores the halo of windows around it, so a task side
    of HALO_WINDOWS windows at least keeps that extra work small; within that, tasks small enough
    for TASKS_PER_WORKER tasks per worker (balance, and little lost with a worker), and never so
    large that a worker gets none."""
    def tasks(k):
        return block_count / (k * k)

    k = max(1, int(math.sqrt(block_count / max(1, TASKS_PER_WORKER * workers))))
    halo_k = -(-HALO_WINDOWS * window // block)
    if k < halo_k:
        k = halo_k
        while k > 1 and tasks(k) < workers:
            k -= 1
    return max(1, min(MAX_TASK_BLOCKS, k))


def group_blocks(width: int, height: int, block: int, k: int) -> List[List[int]]:
    """Block indices (core.sliding.block_windows order) grouped into k×k rectangles, row by row."""
    columns, rows = -(-width // block), -(-height // block)
    groups = []
    for top in range(0, rows, k):
        for left in range(0, columns, k):
            groups.append([row * columns + col for row in range(top, min(top + k, rows))
                           for col in range(left, min(left + k, columns))])
    return groups


def worker_device(requested: str) -> str:
    """The device of this worker: with several GPUs and 'auto' or 'cuda', worker N of a local
    cluster takes GPU N modulo their count (dask-cuda workers see one GPU each: cuda:0)."""
    if requested not in ("auto", "cuda"):
        return requested
    try:
        import torch
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # no usable CUDA: the scorer's own choice
        return requested
    if count < 2:
        return requested
    name = _worker_name()
    return f"cuda:{int(name) % count}" if name is not None and str(name).isdigit() else requested


def _worker_name():
    try:
        from distributed import get_worker
        return get_worker().name
    except (ImportError, ValueError):
        return None


def worker_scorer(factory) -> Tuple[object, "ScorerLocks"]:
    """(scorer, its lock): built once per process and factory. Hold the lock from set_queries to
    the last window, so two threads of one worker never mix their queries. The lock belongs to
    the scorer objects, not the factory: a SAM 3 run and a hybrid run share one SAM 3 scorer."""
    from ..hybrid import HybridRecipe, HybridScorers
    from ..sam3_engine import Sam3Recipe
    from ..segment import ScorerRecipe

    def build():
        if isinstance(factory, (ScorerRecipe, Sam3Recipe, HybridRecipe)):
            return factory(device=worker_device(factory.device))
        return factory()

    scorer = cached(("dask-scorer", factory), build)
    parts = (scorer.sam3, scorer.clip) if isinstance(scorer, HybridScorers) else (scorer,)
    with _LOCKS_GUARD:  # taken in one order (SAM 3 before CLIP): two runs never deadlock
        locks = [_LOCKS.setdefault(id(part), threading.Lock()) for part in parts]
    return scorer, ScorerLocks(locks)


class ScorerLocks:
    """Holds several locks together (in the order given) as one context manager."""

    def __init__(self, locks):
        self.locks = list(locks)

    def __enter__(self):
        for lock in self.locks:
            lock.acquire()
        return self

    def __exit__(self, *exc):
        for lock in reversed(self.locks):
            lock.release()
        return False


def task_segmenter(task: BlockTask, reader, scorer):
    """The block source of the task's engine over `reader`, its queries encoded exactly as a run
    in one process encodes them (same batching: the same text features, bit for bit)."""
    from ..progress import RunMonitor
    from ..segment import _sliding, encode_queries, sam3_sliding

    engine = getattr(task.factory, "engine", None)
    for part in ((scorer.sam3, scorer.clip) if engine == "hybrid" else (scorer,)):
        encode_queries(part, list(task.queries), RunMonitor())   # each scorer its own way
    owner = list(task.owner)
    if engine == "sam3":
        source = sam3_sliding(task, reader, scorer, owner, task.threshold)
    elif engine == "hybrid":
        from ..hybrid import HybridSegmenter

        source = HybridSegmenter(sam3_sliding(task, reader, scorer.sam3, owner, 0.0),
                                 _sliding(task, reader, scorer.clip, owner, threshold=0.0),
                                 task.threshold)
    else:
        source = _sliding(task, reader, scorer, owner)
    source.keep_probabilities = task.keep_probabilities
    return source


def scorer_device(scorer) -> str:
    device = getattr(scorer, "device", None)
    if device is None and getattr(scorer, "clip", None) is not None:
        device = scorer.clip.device
    return str(device) if device is not None else "custom"


def cancelled(event_name: str) -> bool:
    try:
        from distributed import Event, get_worker
        get_worker()
    except (ImportError, ValueError):  # not on a worker (a direct call)
        return False
    return Event(event_name).is_set()


def run_block_task(task: BlockTask) -> Dict:
    """Compute the task's blocks; -> dict with the part file (or the arrays, when this worker
    cannot see the run's work folder), the rectangle (col, row, width, height), timings."""
    from ..errors import RunCancelled
    from ..raster_io import RasterReader

    started = time.perf_counter()
    scorer, lock = worker_scorer(task.factory)
    stretch = [tuple(pair) for pair in task.stretch] if task.stretch is not None else None
    with lock, RasterReader(task.raster, task.bands, task.extent, task.resolution,
                            stretch=stretch) as reader:
        segmenter = task_segmenter(task, reader, scorer)
        windows = [segmenter.blocks[i] for i in task.blocks]
        col = min(int(w.col_off) for w in windows)
        row = min(int(w.row_off) for w in windows)
        width = max(int(w.col_off + w.width) for w in windows) - col
        height = max(int(w.row_off + w.height) for w in windows) - row
        arrays = {"classes": np.empty((height, width), np.uint8),
                  "score": np.empty((height, width), np.float32)}
        if task.keep_probabilities:
            arrays["probabilities"] = np.empty((len(set(task.owner)), height, width), np.float32)
        for result in segmenter.segment_blocks(task.blocks):
            if cancelled(task.cancel_event):
                raise RunCancelled("Run cancelled by the user")
            w = result.window
            y, x = int(w.row_off) - row, int(w.col_off) - col
            rows, cols = slice(y, y + int(w.height)), slice(x, x + int(w.width))
            arrays["classes"][rows, cols] = result.classes
            arrays["score"][rows, cols] = result.score
            if task.keep_probabilities:
                arrays["probabilities"][:, rows, cols] = result.probabilities
    answer = {"index": task.index, "blocks": len(task.blocks),
              "rectangle": (col, row, width, height), "timings": segmenter.timings.as_dict(),
              "oom_retries": list(segmenter.oom_retries), "device": scorer_device(scorer),
              "worker": _worker_name(), "seconds": time.perf_counter() - started}
    if cancelled(task.cancel_event):  # the work folder may be going away
        raise RunCancelled("Run cancelled by the user")
    if os.path.isdir(task.work_dir):
        answer["path"] = write_part(os.path.join(task.work_dir, f"part-{task.index:06d}.npz"),
                                    **arrays)
    else:  # a worker on another machine: the arrays travel back through Dask
        answer["arrays"] = arrays
    return answer


def write_part(path: str, **arrays) -> str:
    """Write arrays to `path` atomically (a temporary name in the same folder, then a rename)."""
    temporary = f"{path}.{uuid.uuid4().hex}.tmp"
    try:
        with open(temporary, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return path


def read_part(answer: Dict) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """-> (classes, score, probabilities or None) of a task's answer."""
    if "path" not in answer:
        arrays = answer["arrays"]
        return arrays["classes"], arrays["score"], arrays.get("probabilities")
    with np.load(answer["path"]) as data:
        probabilities = data["probabilities"] if "probabilities" in data.files else None
        return data["classes"], data["score"], probabilities


def tuple_or_none(values: Optional[Sequence]) -> Optional[tuple]:
    return tuple(values) if values is not None else None
