"""One raster on a Dask cluster: its blocks grouped into tasks, computed by the workers and handed
to core/segment.py, which writes, vectorizes and publishes them as for a run in this process.

Progress counts the blocks of finished tasks, from every worker; cancelling (the run's cancel
callable or Ctrl+C) cancels the futures and tells running tasks to stop at their next block.
"""
from __future__ import annotations

import os
import time
import uuid
from typing import Iterator, Tuple

from ..errors import InputError
from ..sliding import BlockResult, Timings, block_windows
from .client import dask_client
from .spec import DaskSpec
from .tasks import (BlockTask, choose_task_blocks, group_blocks, read_part, run_block_task,
                    tuple_or_none)

POLL_S = 0.25            # how often cancellation is checked while tasks run
CANCEL_GRACE_S = 10      # how long running tasks get to notice a cancellation
WORKER_WAIT_S = 60       # how long a scheduler without workers is waited for


class ClusterBlocks:
    """The block source of core/segment.py for a run on `spec`'s cluster."""

    def __init__(self, spec: DaskSpec, request, reader, queries, owner, factory,
                 keep_probabilities: bool = False):
        self.spec = spec
        self.request = request
        self.reader = reader
        self.queries = tuple(queries)
        self.owner = tuple(owner)
        self.factory = factory
        self.keep_probabilities = keep_probabilities
        self.blocks = block_windows(reader.grid.width, reader.grid.height, request.block)
        self.timings = Timings()
        self.oom_retries = []
        self.device = ""
        self.workers_used = set()
        self.tasks = 0

    def __len__(self) -> int:
        return len(self.blocks)

    def _tasks(self, workers: int, work_dir: str, cancel_event: str):
        request, grid = self.request, self.reader.grid
        window = getattr(self.factory, "window", None) or request.window   # SAM 3: its tile
        k = request.task_blocks or choose_task_blocks(len(self.blocks), workers,
                                                         request.block, window)
        raster = request.raster
        if os.path.exists(raster):  # workers may start elsewhere; GDAL paths (/vsicurl/…) stay
            raster = os.path.abspath(raster)
        stretch = self.reader.stretch
        return [BlockTask(index, tuple(indices), raster, tuple_or_none(request.bands),
                          tuple_or_none(request.extent), request.resolution,
                          tuple(map(tuple, stretch)) if stretch is not None else None,
                          self.queries, self.owner, request.threshold, request.window,
                          request.stride, request.block, request.batch_size, request.blend,
                          self.keep_probabilities, self.factory, work_dir, cancel_event)
                for index, indices in enumerate(group_blocks(grid.width, grid.height,
                                                             request.block, k))]

    def parts(self, monitor, work) -> Iterator[Tuple[BlockResult, int]]:
        from distributed import Event, as_completed
        from rasterio.windows import Window

        run = uuid.uuid4().hex[:12]
        with dask_client(self.spec) as client:
            monitor.say(f"Waiting for Dask workers at {self.spec}")
            try:
                client.wait_for_workers(1, timeout=WORKER_WAIT_S)
            except TimeoutError:
                raise InputError(f"The Dask scheduler at {self.spec} has no workers; start some "
                                 "with `dask worker ADDRESS`") from None
            workers = len(client.scheduler_info(n_workers=-1)["workers"])
            event = Event(f"drseg-cancel-{run}", client=client)
            tasks = self._tasks(workers, work.path, event.name)
            self.tasks = len(tasks)
            monitor.say(f"{len(tasks)} tasks on {workers} Dask worker(s)")
            futures = [client.submit(run_block_task, task, key=f"drseg-{run}-task-{task.index}",
                                     pure=False) for task in tasks]
            completed = as_completed(futures, loop=client.loop)
            try:
                while not completed.is_empty():
                    done = completed.next_batch(block=False)
                    if not done:
                        time.sleep(POLL_S)
                    for future in done:
                        answer = _result(future)
                        self._account(answer)
                        classes, score, probabilities = read_part(answer)
                        col, row, width, height = answer["rectangle"]
                        yield BlockResult(Window(col, row, width, height), classes, score,
                                          probabilities), answer["blocks"]
                    monitor.check()
            except BaseException:
                event.set()
                client.cancel(futures)
                deadline = time.monotonic() + CANCEL_GRACE_S
                while any(f.status == "pending" for f in futures) and time.monotonic() < deadline:
                    time.sleep(POLL_S)
                raise

    def _account(self, answer) -> None:
        for name, value in answer["timings"].items():
            setattr(self.timings, name, getattr(self.timings, name) + value)
        self.oom_retries += answer["oom_retries"]
        self.workers_used.add(answer["worker"])
        devices = set(filter(None, self.device.split(", "))) | {answer["device"]}
        self.device = ", ".join(sorted(devices))


def _result(future):
    try:
        return future.result()
    except ModuleNotFoundError as exc:
        if "drseg" in str(exc):
            raise InputError("The Dask workers cannot import drseg: install the DR-Seg plugin "
                             "folder on them (or put its parent folder on their PYTHONPATH)"
                             ) from None
        raise
