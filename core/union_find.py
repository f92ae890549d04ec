"""Disjoint sets (union-find) over any hashable keys, with path compression.

    groups = UnionFind(range(n))
    groups.union(0, 3)
    groups.groups()          # [[0, 3], [1], [2], ...]

Used wherever pieces are joined into connected groups: polygons across tile seams
(``vectorize``). :func:`group_roots` does the same for many integer keys at once with numpy
(runs of mask pixels, ``refer/prompts.label_components``).
"""
from __future__ import annotations

from typing import Dict, Hashable, Iterable, List

import numpy as np


def group_roots(n: int, a, b) -> np.ndarray:
    """Connected groups of the keys 0..n-1 joined by the edges (a[k], b[k]): (n,) int64, each
    key's group given by its smallest key. Vectorised: roots are hooked onto the smallest
    neighbouring root, then every key jumps to its root, until no edge joins two groups (a few
    rounds for the run graphs of masks; every round joins at least one pair of groups)."""
    parent = np.arange(int(n), dtype=np.int64)
    a = np.asarray(a, np.int64).reshape(-1)
    b = np.asarray(b, np.int64).reshape(-1)
    while True:
        while True:                     # pointer jumping: every key points at its root
            above = parent[parent]
            if np.array_equal(above, parent):
                break
            parent = above
        ra, rb = parent[a], parent[b]
        apart = ra != rb
        if not apart.any():
            return parent
        ra, rb = ra[apart], rb[apart]
        # a root only ever points to a smaller key: no cycles, and the root is the group's minimum
        np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))


class UnionFind:
    """Keys are added by the constructor, :meth:`add`, or the first :meth:`find`/:meth:`union`
    that names them. :meth:`groups` lists each group once, in the order its first key was added,
    members in the order they were added: deterministic for a deterministic sequence of calls."""

    def __init__(self, keys: Iterable[Hashable] = ()):
        self._parent: Dict[Hashable, Hashable] = {}
        for key in keys:
            self._parent.setdefault(key, key)

    def add(self, key: Hashable) -> None:
        self._parent.setdefault(key, key)

    def find(self, key: Hashable) -> Hashable:
        """The representative of `key`'s group (adds `key` as a group of its own if new)."""
        parent = self._parent
        root = parent.setdefault(key, key)
        while parent[root] != root:
            root = parent[root]
        while key != root:                 # path compression: every key on the path -> root
            parent[key], key = root, parent[key]
        return root

    def union(self, a: Hashable, b: Hashable) -> Hashable:
        """Join the groups of `a` and `b`; -> the representative of the joined group
        (`b`'s, so a caller can choose which one survives)."""
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self._parent[root_a] = root_b
        return root_b

    def connected(self, a: Hashable, b: Hashable) -> bool:
        return self.find(a) == self.find(b)

    def groups(self) -> List[List[Hashable]]:
        by_root: Dict[Hashable, List[Hashable]] = {}
        for key in list(self._parent):
            by_root.setdefault(self.find(key), []).append(key)
        return list(by_root.values())

    def retain(self, keys: Iterable[Hashable]) -> None:
        """Forget every key except `keys` (and their representatives), e.g. groups that are
        finished; the groups of the kept keys are unchanged."""
        kept: Dict[Hashable, Hashable] = {}
        for key in keys:
            root = self.find(key)
            kept[key] = root
            kept[root] = root
        self._parent = kept

    def __contains__(self, key: Hashable) -> bool:
        return key in self._parent

    def __len__(self) -> int:
        return len(self._parent)
