"""A Dask client for a `DaskSpec`: a local cluster started (and stopped) here, or a connection
to a running scheduler."""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

from ..errors import InputError
from .spec import DaskSpec

CONNECT_TIMEOUT_S = 30
# Nanny sets these to 1 for every worker (and in the process starting a local cluster).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def import_distributed():
    try:
        import distributed
    except ImportError:
        raise InputError("Running on a Dask cluster needs the Python packages dask and "
                         "distributed: pip install 'dask>=2026.1' 'distributed>=2026.1'") from None
    return distributed


@contextlib.contextmanager
def dask_client(spec: DaskSpec) -> Iterator[object]:
    """Yields a `distributed.Client`; a local cluster lives as long as the block."""
    distributed = import_distributed()
    if spec.local_workers:
        with _local_cluster(distributed, spec.local_workers) as cluster, \
                distributed.Client(cluster, set_as_default=False) as client:
            yield client
        return
    try:
        client = distributed.Client(spec.address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise InputError(f"Cannot reach the Dask scheduler at {spec.address} ({exc}); start it "
                         "with `dask scheduler` and check the address") from None
    with client:
        yield client


@contextlib.contextmanager
def _local_cluster(distributed, workers: int):
    # Each worker process gets its share of the cores for torch (Dask's default is 1 thread);
    # one Dask thread per worker, so a worker runs one task at a time with its models.
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    _spawn_with_python()
    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    import dask

    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ." + name: threads
                              for name in THREAD_VARIABLES}):
            # No dashboard; its HTTP server (health checks) on a free port, not 8787.
            cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1,
                                               processes=True, dashboard_address=None,
                                               scheduler_kwargs={"dashboard_address": ":0"},
                                               silence_logs=logging.ERROR)
    finally:
        for name, value in saved.items():  # the Nanny changed this process's environment
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    with cluster:
        yield cluster


def _spawn_with_python() -> None:
    """Worker processes start from a Python interpreter: inside QGIS `sys.executable` can be the
    QGIS program itself, which multiprocessing would otherwise launch."""
    import multiprocessing
    import sys

    from ..dependencies import find_qgis_python

    python = find_qgis_python()
    if python and os.path.realpath(python) != os.path.realpath(sys.executable):
        multiprocessing.set_executable(python)
