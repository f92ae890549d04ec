"""Semantic-preserving subspace decoupling (issue 3, module 1)."""
import pytest
import torch
import torch.nn.functional as F

from drseg.core.drseg import (CRITERIA, DrSegRectifier, apply_structural, build_knn_graph,
                              channel_scores, decouple, split_channels)

H = W = 24
N_SEM, N_STRUCT, Q = 12, 36, 5


def _regions():
    """Class map with 5 classes in blocks; one DINO-like region per block."""
    lab = torch.zeros(H, W, dtype=torch.long)
    lab[:12, 12:] = 1
    lab[12:, :12] = 2
    lab[12:, 12:] = 3
    lab[4:9, 3:9] = 4
    return lab


def _features(seed=0):
    """Channels 0..N_SEM-1 (before a random permutation) carry class identity: the texts differ
    there and the image activates them per class, plus token noise (CLIP-like). The other channels
    carry only spatial structure: smooth fields unrelated to the class, on which every text has the
    same value."""
    g = torch.Generator().manual_seed(seed)
    lab = _regions()
    c = N_SEM + N_STRUCT
    class_emb = torch.randn(Q, N_SEM, generator=g)
    sem = class_emb[lab].permute(2, 0, 1) + 1.0 * torch.randn(N_SEM, H, W, generator=g)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, W), indexing="ij")
    fields = []
    for i in range(N_STRUCT):
        fy, fx = 0.25 + 0.5 * torch.rand(2, generator=g)
        phase = torch.rand(1, generator=g) * 6.28
        fields.append(torch.sin(6.28 * (fy * yy + fx * xx) + phase))
    struct = torch.stack(fields)
    text = torch.zeros(Q, c)
    text[:, :N_SEM] = class_emb
    text[:, N_SEM:] = 0.8 * torch.randn(1, N_STRUCT, generator=g)  # same for every query
    features = torch.cat([sem, struct])
    perm = torch.randperm(c, generator=g)
    features, text = features[perm], text[:, perm]
    semantic_truth = set(torch.nonzero(perm < N_SEM).flatten().tolist())
    dino = F.one_hot(lab, Q).permute(2, 0, 1).float() + 0.05 * torch.randn(Q, H, W, generator=g)
    return features, text, semantic_truth, dino


def test_text_variance_separates_class_channels_from_structure_channels():
    features, text, truth, _ = _features()
    split = decouple(features, text, semantic_ratio=N_SEM / (N_SEM + N_STRUCT))
    assert set(split.semantic.tolist()) == truth
    assert set(split.structural.tolist()) == set(range(N_SEM + N_STRUCT)) - truth
    # the same from a batch layout (B, C, h, w)
    split_b = decouple(features[None].repeat(2, 1, 1, 1), text, semantic_ratio=N_SEM / 48)
    assert set(split_b.semantic.tolist()) == truth


def test_laplacian_criterion_ranks_smooth_channels_as_structural():
    features, text, truth, dino = _features(seed=1)
    graph = build_knn_graph(dino, k=8, radius=2)
    split = decouple(features, text, semantic_ratio=N_SEM / 48, criterion="laplacian", graph=graph)
    assert set(split.semantic.tolist()) == truth
    combined = decouple(features, text, semantic_ratio=N_SEM / 48, criterion="combined", graph=graph)
    assert set(combined.semantic.tolist()) == truth


def test_text_variance_weights_by_activation():
    """A channel the texts disagree on but the image never activates cannot be semantic."""
    features, text, truth, _ = _features()
    dead = sorted(truth)[0]
    features = features.clone()
    features[dead] = 0.0
    scores = channel_scores(features, text, "text_variance")
    assert scores[dead] == 0
    split = decouple(features, text, semantic_ratio=N_SEM / 48)
    assert dead not in set(split.semantic.tolist())
    # and a single query falls back to the second moment (no variance across one text)
    single = channel_scores(features, text[:1], "text_variance")
    assert single.shape == (48,) and bool((single > 0).any())


def test_semantic_channels_leave_the_rectifier_bit_identical():
    features, text, truth, dino = _features()
    text = F.normalize(text, dim=1)
    rect = DrSegRectifier(semantic_ratio=0.25, graph_k=6, steps=5, spatial_prior=2)
    out, split = rect.rectify_features(features, text, dino)
    sem, struct = split.semantic, split.structural
    assert len(sem) == 12 and len(struct) == 36
    assert torch.equal(out[sem], features[sem])  # bit for bit
    assert not torch.allclose(out[struct], features[struct], atol=1e-3)  # these were rectified
    # with decoupling off every channel is rectified
    rect_all = DrSegRectifier(decouple=False, graph_k=6, steps=5, spatial_prior=2)
    out_all, split_all = rect_all.rectify_features(features, text, dino)
    assert len(split_all.semantic) == 0
    assert not torch.allclose(out_all[sem], features[sem], atol=1e-3)


def test_apply_structural_never_computes_on_semantic_channels():
    x = torch.randn(100, 20, dtype=torch.float64)
    split = split_channels(torch.arange(20.0), 0.3)
    assert split.semantic.tolist() == list(range(14, 20))
    out = apply_structural(x, split, lambda s: torch.full_like(s, float("nan")), channel_dim=1)
    assert torch.equal(out[:, 14:], x[:, 14:])
    assert bool(torch.isnan(out[:, :14]).all())
    assert out.dtype == x.dtype


@pytest.mark.parametrize("ratio,expected", [(0.0, 0), (1.0, 10), (0.25, 2), (0.35, 4)])
def test_semantic_ratio_sets_the_subset_size(ratio, expected):
    split = split_channels(torch.randn(10), ratio)
    assert len(split.semantic) == expected
    assert sorted(split.semantic.tolist() + split.structural.tolist()) == list(range(10))


def test_bad_arguments_are_refused():
    features, text, _, _ = _features()
    assert set(CRITERIA) == {"text_variance", "laplacian", "combined"}
    with pytest.raises(ValueError):
        channel_scores(features, text, "magic")
    with pytest.raises(ValueError):
        channel_scores(features, text, "laplacian")  # needs the graph
    with pytest.raises(ValueError):
        split_channels(torch.randn(4), 1.5)
