"""Uncertainty-guided adaptive fusion (issue 3, module 3)."""
import math

import pytest
import torch

from drseg.core.drseg import fuse, fusion_weights, normalized_entropy

SCALE = 50.0


def _confident(q, cls, shape=(4, 4)):
    """Logits (like cosines) where query `cls` clearly wins."""
    x = torch.full((1, q) + shape, 0.18)
    x[:, cls] = 0.30
    return x


def _uncertain(q, shape=(4, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    return 0.2 + 0.0005 * torch.randn((1, q) + shape, generator=g)


def test_normalised_entropy_range():
    q = 6
    assert torch.allclose(normalized_entropy(torch.zeros(1, q, 2, 2), SCALE), torch.ones(1, 2, 2))
    assert float(normalized_entropy(_confident(q, 2), SCALE).max()) < 0.1
    assert torch.equal(normalized_entropy(torch.randn(1, 1, 3, 3)), torch.zeros(1, 3, 3))


def test_fused_result_follows_the_confident_branch():
    q = 5
    a, b = _uncertain(q), _uncertain(q, seed=1)
    # left half: branch a is sure of class 1, b is unsure; right half: b sure of class 3, a unsure
    a[..., :2] = _confident(q, 1, (4, 2))
    b[..., 2:] = _confident(q, 3, (4, 2))
    w_a, w_b = fusion_weights(a, b, SCALE)
    assert torch.allclose(w_a + w_b, torch.ones_like(w_a))
    assert float(w_a[..., :2].min()) > 0.95 and float(w_b[..., 2:].min()) > 0.95
    for mode in ("logits", "probs"):
        fused = fuse(a, b, SCALE, mode=mode)
        winner = fused.argmax(1)
        assert bool((winner[..., :2] == 1).all()) and bool((winner[..., 2:] == 3).all())
        # the confident branch decides even though the uncertain one leans elsewhere
        probs = fused if mode == "probs" else torch.softmax(SCALE * fused, 1)
        assert float(probs[:, 1, :, :2].min()) > 0.9


def test_more_certain_branch_gets_more_weight():
    q = 4
    sharp = _confident(q, 0)
    soft = sharp.clone()
    soft[:, 0] = 0.21  # same winner, smaller margin: less certain
    w_sharp, w_soft = fusion_weights(sharp, soft, SCALE)
    assert bool((w_sharp > 0.5).all()) and bool((w_sharp > w_soft).all())


def test_identical_branches_are_returned_unchanged():
    torch.manual_seed(0)
    a = 0.1 * torch.randn(2, 7, 9, 5)
    assert torch.equal(fuse(a, a.clone(), SCALE), a)  # bit for bit
    assert torch.allclose(fuse(a, a, SCALE, mode="probs"), torch.softmax(SCALE * a, 1), atol=1e-7)
    w_a, w_b = fusion_weights(a, a, SCALE)
    assert bool((w_a == 0.5).all()) and bool((w_b == 0.5).all())


def test_fusion_is_symmetric_and_checks_shapes():
    torch.manual_seed(1)
    a, b = torch.randn(1, 3, 4, 4) * 0.1, torch.randn(1, 3, 4, 4) * 0.1
    assert torch.allclose(fuse(a, b, SCALE), fuse(b, a, SCALE), atol=1e-7)
    with pytest.raises(ValueError):
        fuse(a, b[:, :2])
    with pytest.raises(ValueError):
        fuse(a, b, mode="max")
    assert math.isclose(float(normalized_entropy(torch.zeros(1, 3, 1, 1))), 1.0, rel_tol=1e-6)
