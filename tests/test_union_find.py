"""core/union_find.py against a brute-force oracle (graph search over the same edges)."""
import random

from drseg.core.union_find import UnionFind


def components(keys, edges):
    """Connected components by depth-first search: the oracle."""
    neighbours = {k: set() for k in keys}
    for a, b in edges:
        neighbours[a].add(b)
        neighbours[b].add(a)
    seen, out = set(), []
    for key in keys:
        if key in seen:
            continue
        stack, group = [key], set()
        while stack:
            k = stack.pop()
            if k not in group:
                group.add(k)
                stack.extend(neighbours[k] - group)
        seen |= group
        out.append(group)
    return out


def test_groups_match_graph_components_for_random_edges():
    rng = random.Random(7)
    for trial in range(50):
        keys = [f"k{i}" for i in range(rng.randint(1, 40))]
        edges = [(rng.choice(keys), rng.choice(keys)) for _ in range(rng.randint(0, 30))]
        uf = UnionFind(keys)
        for a, b in edges:
            uf.union(a, b)
        got = uf.groups()
        assert sorted(map(sorted, got)) == sorted(map(sorted, components(keys, edges)))
        assert sum(len(g) for g in got) == len(keys)
        for a, b in edges:
            assert uf.connected(a, b)


def test_groups_are_ordered_by_first_key_and_members_by_insertion():
    uf = UnionFind(range(6))
    uf.union(4, 1)
    uf.union(5, 0)
    uf.union(3, 5)
    assert uf.groups() == [[0, 3, 5], [1, 4], [2]]


def test_union_returns_the_second_groups_representative_and_keys_are_added_lazily():
    uf = UnionFind()
    assert uf.find(("a", 1)) == ("a", 1)
    root = uf.union(("a", 1), ("b", 2))
    assert root == ("b", 2) and uf.find(("a", 1)) == ("b", 2)
    assert len(uf) == 2 and ("b", 2) in uf and "c" not in uf


def test_path_compression_flattens_a_long_chain():
    uf = UnionFind(range(1000))
    for k in range(999):
        uf.union(k, k + 1)             # a chain 0 -> 1 -> ... -> 999
    assert uf.find(0) == 999
    assert all(uf._parent[k] == 999 for k in range(1000))


def test_retain_forgets_finished_groups_and_keeps_the_others():
    uf = UnionFind(range(6))
    uf.union(0, 1)
    uf.union(2, 3)
    uf.union(3, 4)
    uf.retain([2])
    assert len(uf) == 2 and 0 not in uf and 2 in uf
    uf.union(5, 2)
    assert uf.groups() == [[2, 4, 5]]


def test_group_roots_match_graph_components_for_random_edges():
    import numpy as np

    from drseg.core.union_find import group_roots

    rng = random.Random(3)
    for trial in range(40):
        n = rng.randint(1, 60)
        edges = [(rng.randrange(n), rng.randrange(n)) for _ in range(rng.randint(0, 2 * n))]
        if trial % 4 == 0:                 # a long chain in shuffled order
            order = list(range(n))
            rng.shuffle(order)
            edges = list(zip(order, order[1:]))
        roots = group_roots(n, [a for a, _ in edges], [b for _, b in edges])
        expected = np.empty(n, np.int64)
        for group in components(range(n), edges):
            expected[list(group)] = min(group)
        np.testing.assert_array_equal(roots, expected)
