"""Where to run: the `--dask` value, checked without importing Dask.

    local:N               a local cluster of N worker processes (one thread each)
    tcp://HOST:PORT       an existing scheduler (also tls://, ws://, wss://)
    "" (empty)            no cluster: the run stays in this process
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from ..errors import InputError

LOCAL_PREFIX = "local:"
SCHEDULER_SCHEMES = ("tcp://", "tls://", "ws://", "wss://")
MAX_LOCAL_WORKERS = 256
# HOST:PORT (IPv6 in brackets); the port is required
_ADDRESS = re.compile(r"^(tcp|tls|ws|wss)://(\[[0-9A-Fa-f:.]+\]|[^\s/:\[\]]+):\d{1,5}/?$")
HELP = "local:N (N worker processes here) or tcp://HOST:PORT (a running Dask scheduler)"


@dataclass(frozen=True)
class DaskSpec:
    local_workers: Optional[int] = None    # local:N
    address: Optional[str] = None          # tcp://HOST:PORT

    def __str__(self) -> str:
        return f"{LOCAL_PREFIX}{self.local_workers}" if self.local_workers else str(self.address)


def parse_dask_spec(text) -> Optional[DaskSpec]:
    """'local:4' / 'tcp://10.0.0.5:8786' -> DaskSpec; None or blank -> None. Raises InputError."""
    if text is None or not str(text).strip():
        return None
    value = str(text).strip()
    if value.lower().startswith(LOCAL_PREFIX):
        count = value[len(LOCAL_PREFIX):].strip()
        if not count.isdigit() or not 1 <= int(count) <= MAX_LOCAL_WORKERS:
            raise InputError(f"Dask cluster '{value}': the number of local workers must be a whole "
                             f"number from 1 to {MAX_LOCAL_WORKERS}, e.g. local:4")
        return DaskSpec(local_workers=int(count))
    if _ADDRESS.match(value):
        return DaskSpec(address=value.rstrip("/"))
    raise InputError(f"Dask cluster '{value}' is not understood; give {HELP}")
