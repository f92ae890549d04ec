"""Prior-driven graph rectification, DR-Seg's second module (README "How it works").

A sparse k-nearest-neighbour graph over the patch tokens of one image is built from DINO features
(cosine similarity), optionally with a spatial-proximity prior, and row-normalised to `W`. The
structure-dominated CLIP channels are then propagated over it.

Cost. The graph is stored as two (N, k) tensors (neighbour index, weight), never as an N x N
matrix:

* ``radius=r`` (the spatial prior, the default in the rectifier): candidates are the tokens within
  Chebyshev distance r of a token. Time O(N·(2r+1)²·Cd), memory O(N·k) plus a band of rows at a
  time. This is the mode for whole tile grids.
* ``radius=None``: global kNN. Similarities are computed for `chunk` rows at a time against all N
  tokens: memory O(N·k + chunk·N) but time O(N²·Cd), so it is meant for small grids.
  ``sigma`` adds a soft spatial prior, a Gaussian factor exp(-d²/2σ²) on the affinity.

Propagation (`propagate`):

* ``"diffuse"``: the update as written in the design, ``X ← (1−α)X + α·W·X``, `steps` times.
* ``"anchored"``: ``X ← (1−α)X₀ + α·W·X`` (label-propagation style), `steps` times; this is the
  truncated Neumann series of the closed form.
* ``"closed"``: ``(1−α)(I−αW)⁻¹X₀`` solved by that Neumann iteration until the update is below
  `tol` (it converges geometrically because the spectral radius of αW is α < 1).

`proxy_attention` is the ProxyCLIP-style baseline (dense in N per chunk of rows: small grids only).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

PROPAGATION_MODES = ("diffuse", "anchored", "closed")

# Elements of one similarity block (rows x candidates); ~64 MB of float32.
DEFAULT_BLOCK_ELEMENTS = 1 << 24


@dataclass
class KnnGraph:
    """Row-normalised sparse graph: token i's neighbours are `indices[i]`, weights `weights[i]`.

    indices: int64 (N, k) flat token ids (row-major over the (h, w) grid).
    weights: float (N, k), each row sums to 1. A token with no usable neighbour gets a self loop.
    """

    indices: torch.Tensor
    weights: torch.Tensor
    shape: Tuple[int, int]

    @property
    def num_nodes(self) -> int:
        return int(self.indices.shape[0])

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """W·x for x of shape (N, C): each row is the weighted mean of its neighbours' rows."""
        if x.shape[0] != self.num_nodes:
            raise ValueError(f"graph has {self.num_nodes} nodes, features have {x.shape[0]} rows")
        out = torch.zeros_like(x)
        w = self.weights.to(x.dtype)
        for j in range(self.k):  # k gathers of (N, C): memory O(N·C), no (N, k, C) temporary
            out.addcmul_(x[self.indices[:, j]], w[:, j:j + 1])
        return out

    def to_sparse(self) -> torch.Tensor:
        """The same W as a torch sparse COO tensor (N, N) (duplicates summed)."""
        n, k = self.indices.shape
        rows = torch.arange(n, device=self.indices.device).repeat_interleave(k)
        coords = torch.stack([rows, self.indices.reshape(-1)])
        return torch.sparse_coo_tensor(coords, self.weights.reshape(-1), (n, n),
                                       check_invariants=False).coalesce()

    def laplacian_energy(self, x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
        """Per column of x (N, C): ½·Σᵢⱼ Wᵢⱼ(xᵢ−xⱼ)² / Σᵢ(xᵢ−x̄)², the smoothness over the graph.

        Scale- and shift-invariant; 0 for a channel constant on every neighbourhood, about 1 for
        white noise. A constant channel (zero variance) gets 0.
        """
        centred = x - x.mean(dim=0, keepdim=True)
        energy = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
        w = self.weights.to(x.dtype)
        for j in range(self.k):
            diff = centred - centred[self.indices[:, j]]
            energy += (w[:, j:j + 1] * diff * diff).sum(dim=0)
        denom = (centred * centred).sum(dim=0)
        return torch.where(denom > eps, 0.5 * energy / denom.clamp_min(eps), torch.zeros_like(energy))


def _flatten_tokens(features: torch.Tensor, shape: Optional[Tuple[int, int]]):
    """(Cd, h, w) or (N, Cd) + shape -> (N, Cd) float, (h, w)."""
    if features.dim() == 4:
        if features.shape[0] != 1:
            raise ValueError("build_knn_graph takes one image's features; loop over the batch")
        features = features[0]
    if features.dim() == 3:
        cd, h, w = features.shape
        return features.reshape(cd, h * w).T.float(), (h, w)
    if features.dim() == 2:
        if shape is None:
            raise ValueError("token features (N, Cd) need the grid shape (h, w)")
        if shape[0] * shape[1] != features.shape[0]:
            raise ValueError(f"grid {shape} does not hold {features.shape[0]} tokens")
        return features.float(), (int(shape[0]), int(shape[1]))
    raise ValueError(f"expected features (Cd,h,w) or (N,Cd), got shape {tuple(features.shape)}")


def build_knn_graph(features: torch.Tensor, k: int = 8, shape: Optional[Tuple[int, int]] = None,
                    radius: Optional[int] = 5, sigma: Optional[float] = None,
                    temperature: Optional[float] = None, include_self: bool = False,
                    block_elements: int = DEFAULT_BLOCK_ELEMENTS) -> KnnGraph:
    """Sparse kNN graph from DINO features of one image.

    features: (Cd, h, w), or (N, Cd) with `shape`=(h, w).
    k: neighbours per token (fewer where fewer candidates exist: the slots are then padded with
       zero-weight self loops).
    radius: spatial prior as a hard window: only tokens within Chebyshev distance `radius` are
       candidates (O(N·k) memory and O(N·r²) time). None: global kNN over all tokens, chunked.
    sigma: soft spatial prior (in tokens): affinity multiplied by exp(-d²/(2σ²)) both for ranking
       and as weight. None: off.
    temperature: None -> weight = max(cos, 0); else weight = exp((cos − 1)/temperature).
    include_self: whether a token may be its own neighbour.
    """
    if k < 1:
        raise ValueError("graph_k must be at least 1")
    tokens, (h, w) = _flatten_tokens(features, shape)
    tokens = F.normalize(tokens, dim=1)
    if radius is None:
        sims, idx = _global_topk(tokens, h, w, k, sigma, include_self, block_elements)
    else:
        if radius < 1:
            raise ValueError("the spatial radius must be at least 1 token")
        sims, idx = _window_topk(tokens, h, w, k, int(radius), sigma, include_self, block_elements)
    return _normalise_rows(sims, idx, temperature, (h, w))


def _spatial_factor(d2: torch.Tensor, sigma: Optional[float]) -> Optional[torch.Tensor]:
    if sigma is None:
        return None
    return torch.exp(-d2 / (2.0 * float(sigma) ** 2))


def _global_topk(tokens, h, w, k, sigma, include_self, block_elements):
    n = tokens.shape[0]
    kk = min(k, n if include_self else n - 1)
    if kk < 1:
        raise ValueError("a graph needs at least two tokens")
    chunk = max(1, min(n, block_elements // max(n, 1)))
    device = tokens.device
    ys = torch.arange(n, device=device) // w
    xs = torch.arange(n, device=device) % w
    all_sims = torch.empty(n, kk, dtype=tokens.dtype, device=device)
    all_idx = torch.empty(n, kk, dtype=torch.long, device=device)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        sim = tokens[start:stop] @ tokens.T  # (chunk, N): the only O(N) per-row temporary
        score = sim
        if sigma is not None:
            d2 = ((ys[start:stop, None] - ys[None]) ** 2 + (xs[start:stop, None] - xs[None]) ** 2)
            sim = sim * _spatial_factor(d2.to(sim.dtype), sigma)
            score = sim
            del d2
        if not include_self:
            rows = torch.arange(stop - start, device=device)
            score[rows, rows + start] = float("-inf")
        top, top_idx = score.topk(kk, dim=1)
        all_sims[start:stop] = top
        all_idx[start:stop] = top_idx
        del sim, score
    return _pad_slots(all_sims, all_idx, k)


def _window_topk(tokens, h, w, k, radius, sigma, include_self, block_elements, block=8):
    """Top-k over the (2r+1)² window around each token.

    The grid is cut into `block` x `block` tiles; each tile's tokens are compared with its halo
    (the tile grown by r) in one batched matmul, then candidates outside the exact window, outside
    the grid, or the token itself are masked. Tiles are processed a band of tile rows at a time,
    so the temporaries stay within `block_elements`.
    """
    n, cd = tokens.shape
    device, dtype = tokens.device, tokens.dtype
    r, b = radius, block
    side = b + 2 * r
    n_off = (2 * r + 1) ** 2 - (0 if include_self else 1)
    kk = min(k, n_off)
    hb, wb = -(-h // b), -(-w // b)  # tiles per column / row
    grid = tokens.T.reshape(cd, h, w)
    pad_b, pad_r = hb * b - h + r, wb * b - w + r
    padded = F.pad(grid, (r, pad_r, r, pad_b))  # zeros outside the grid: masked below
    valid = F.pad(torch.ones(1, h, w, dtype=dtype, device=device), (r, pad_r, r, pad_b))
    # Offsets from each of the b² tile positions to each of the side² halo positions.
    cy, cx = torch.meshgrid(torch.arange(b, device=device), torch.arange(b, device=device), indexing="ij")
    hy, hx = torch.meshgrid(torch.arange(side, device=device) - r, torch.arange(side, device=device) - r,
                            indexing="ij")
    dy = hy.reshape(1, -1) - cy.reshape(-1, 1)  # (b², side²)
    dx = hx.reshape(1, -1) - cx.reshape(-1, 1)
    in_window = (dy.abs() <= r) & (dx.abs() <= r)
    if not include_self:
        in_window &= (dy != 0) | (dx != 0)
    penalty = torch.where(in_window, 0.0, float("-inf")).to(dtype)
    factor = _spatial_factor((dy * dy + dx * dx).to(dtype), sigma)
    out_sims = torch.full((hb * b, wb * b, kk), float("-inf"), dtype=dtype, device=device)
    out_idx = torch.zeros(hb * b, wb * b, kk, dtype=torch.long, device=device)
    per_tile_row = wb * b * b * side * side + wb * cd * side * side
    rows = max(1, min(hb, block_elements // max(per_tile_row, 1)))
    for t0 in range(0, hb, rows):
        t1 = min(hb, t0 + rows)
        y0, y1 = t0 * b, t1 * b + 2 * r
        halo = F.unfold(padded[None, :, y0:y1], kernel_size=side, stride=b)  # (cd·side², tiles)
        tiles = halo.shape[-1]
        halo = halo.reshape(cd, side * side, tiles).permute(2, 0, 1)  # (tiles, cd, side²)
        halo_ok = F.unfold(valid[None, :, y0:y1], kernel_size=side, stride=b)[0].T  # (tiles, side²)
        centre = padded[:, y0 + r:y0 + r + (t1 - t0) * b, r:r + wb * b]
        centre = centre.reshape(cd, t1 - t0, b, wb, b).permute(1, 3, 2, 4, 0).reshape(tiles, b * b, cd)
        sims = torch.bmm(centre, halo)  # (tiles, b², side²)
        del halo
        if factor is not None:
            sims.mul_(factor)
        sims.add_(penalty).masked_fill_(halo_ok[:, None, :] <= 0, float("-inf"))
        top, top_h = sims.topk(kk, dim=2)  # (tiles, b², kk)
        del sims
        ty = torch.arange(t0, t1, device=device).repeat_interleave(wb).view(-1, 1, 1)
        tx = torch.arange(wb, device=device).repeat(t1 - t0).view(-1, 1, 1)
        gy = (ty * b - r + top_h // side).clamp(0, h - 1)  # clamped slots are -inf: weight 0
        gx = (tx * b - r + top_h % side).clamp(0, w - 1)
        idx = gy * w + gx

        def to_grid(t):
            return t.reshape(t1 - t0, wb, b, b, kk).permute(0, 2, 1, 3, 4).reshape(
                (t1 - t0) * b, wb * b, kk)
        out_sims[t0 * b:t1 * b] = to_grid(top)
        out_idx[t0 * b:t1 * b] = to_grid(idx)
    out_sims = out_sims[:h, :w].reshape(n, kk)
    out_idx = out_idx[:h, :w].reshape(n, kk)
    return _pad_slots(out_sims, out_idx, k)


def _pad_slots(sims, idx, k):
    """Fewer candidates than k: pad with self loops of similarity -inf (weight 0)."""
    n, kk = sims.shape
    if kk == k:
        return sims, idx
    self_idx = torch.arange(n, device=idx.device).view(n, 1).expand(n, k - kk)
    pad = torch.full((n, k - kk), float("-inf"), dtype=sims.dtype, device=sims.device)
    return torch.cat([sims, pad], 1), torch.cat([idx, self_idx], 1)


def _normalise_rows(sims, idx, temperature, shape) -> KnnGraph:
    n = sims.shape[0]
    finite = torch.isfinite(sims)
    if temperature is None:
        weights = sims.clamp_min(0.0)
    else:
        weights = torch.exp((sims - 1.0) / float(temperature))
    weights = torch.where(finite, weights, torch.zeros_like(weights))
    total = weights.sum(dim=1, keepdim=True)
    isolated = (total <= 0).squeeze(1)
    weights = weights / total.clamp_min(torch.finfo(weights.dtype).tiny)
    if bool(isolated.any()):  # no positive affinity at all: keep the token as it is
        idx = idx.clone()
        idx[isolated, 0] = torch.arange(n, device=idx.device)[isolated]
        weights[isolated] = 0.0
        weights[isolated, 0] = 1.0
    return KnnGraph(indices=idx, weights=weights, shape=shape)


def propagate(graph: KnnGraph, x: torch.Tensor, alpha: float = 0.8, steps: int = 10,
              mode: str = "diffuse", tol: float = 1e-4, max_steps: int = 200) -> torch.Tensor:
    """Propagate token features x (N, C) over the graph; see the module docstring for the modes."""
    if mode not in PROPAGATION_MODES:
        raise ValueError(f"propagation mode must be one of {PROPAGATION_MODES}, not '{mode}'")
    if not 0.0 <= alpha < 1.0:
        raise ValueError("alpha must be in [0, 1)")
    if mode == "diffuse":
        for _ in range(int(steps)):
            x = (1.0 - alpha) * x + alpha * graph.matmul(x)
        return x
    x0 = (1.0 - alpha) * x
    y = x.clone()
    if mode == "anchored":
        for _ in range(int(steps)):
            y = x0 + alpha * graph.matmul(y)
        return y
    scale = x.abs().max().clamp_min(1e-12)
    for _ in range(int(max_steps)):
        new = x0 + alpha * graph.matmul(y)
        delta = (new - y).abs().max()
        y = new
        if delta <= tol * scale:
            break
    return y


def proxy_attention(dino: torch.Tensor, values: torch.Tensor, beta: float = 1.2,
                    gamma: float = 3.0, shape: Optional[Tuple[int, int]] = None,
                    block_elements: int = DEFAULT_BLOCK_ELEMENTS) -> torch.Tensor:
    """ProxyCLIP-style DINO-guided attention, exact but O(N²) time: small grids only.

    S = cos(F_dino, F_dino); S' = γ(S − β·mean(S)) with mean over all N² pairs; entries < 0 -> −inf;
    A = softmax(S') per row; out = A·V. Computed `block_elements // N` rows at a time, so memory is
    O(N·chunk). The global mean is exact without S: mean(S) = ‖Σᵢ f̂ᵢ‖² / N².
    dino: (Cd, h, w) or (N, Cd); values: (C, h, w) or (N, C) on the same token grid.
    """
    tokens, (h, w) = _flatten_tokens(dino, shape)
    tokens = F.normalize(tokens, dim=1)
    n = tokens.shape[0]
    channels_first = values.dim() == 3
    v = values.reshape(values.shape[0], -1).T if channels_first else values
    if v.shape[0] != n:
        raise ValueError(f"values have {v.shape[0]} tokens, DINO features {n}")
    mean_s = (tokens.sum(dim=0).pow(2).sum() / (n * n))
    chunk = max(1, min(n, block_elements // max(n, 1)))
    out = torch.empty(n, v.shape[1], dtype=v.dtype, device=v.device)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        s = gamma * (tokens[start:stop] @ tokens.T - beta * mean_s)
        rows = torch.arange(stop - start, device=s.device)
        keep = s >= 0
        keep[rows, rows + start] = True  # a token always attends to itself
        s = s.masked_fill(~keep, float("-inf"))
        out[start:stop] = torch.softmax(s, dim=1).to(v.dtype) @ v
    return out.T.reshape(values.shape) if channels_first else out
