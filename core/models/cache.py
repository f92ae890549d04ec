"""Loaded models kept per process and shared by later runs (dock, Processing, referring queries).

Loading ViT weights takes seconds; keeping them makes the second run interactive. The cache is a
bounded LRU with one lock per key: concurrent runs asking for the same model load it once, while
a slow download or load of one model never blocks lookups of models already loaded. Standard
library only.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Dict, Hashable, List, TypeVar

T = TypeVar("T")

MAX_MODELS = 4  # CLIP, DINO and SAM together, plus one more


class ModelCache:
    """`get(key, build)`: the object stored under `key`, or `build()`'s, stored for next time.

    At most `max_items` objects are kept; the least recently used goes first. `build` runs
    outside the cache's own lock, under the key's lock only; if it raises, nothing is stored and
    the next caller builds again.
    """

    def __init__(self, max_items: int = MAX_MODELS):
        self.max_items = max(1, int(max_items))
        self._items: "OrderedDict[Hashable, object]" = OrderedDict()
        self._lock = threading.Lock()                       # guards _items and _building, briefly
        self._building: Dict[Hashable, List] = {}            # key -> [lock, callers waiting or building]

    def get(self, key: Hashable, build: Callable[[], T]) -> T:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            slot = self._building.setdefault(key, [threading.Lock(), 0])
            slot[1] += 1
        try:
            with slot[0]:
                with self._lock:  # another caller may have built it while this one waited
                    if key in self._items:
                        self._items.move_to_end(key)
                        return self._items[key]
                value = build()
                with self._lock:
                    self._items[key] = value
                    while len(self._items) > self.max_items:
                        self._items.popitem(last=False)
                return value
        finally:
            with self._lock:
                slot[1] -= 1
                if slot[1] == 0:
                    del self._building[key]

    def keys(self) -> List[Hashable]:
        """The keys held now, least recently used first."""
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


# The process-wide cache of loaded models.
MODELS = ModelCache(MAX_MODELS)


def cached(key: Hashable, build: Callable[[], T]) -> T:
    """`MODELS.get(key, build)`."""
    return MODELS.get(key, build)


def clear() -> None:
    """Forget every loaded model (their memory is freed once no run holds them)."""
    MODELS.clear()
