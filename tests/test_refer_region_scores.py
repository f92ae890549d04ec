"""Region scores of referring candidates: mask-pooled cached dense CLIP features against the
per-candidate crop pass, on an exact token oracle and on scenes with known answers."""
from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F

from support.oracles import ColourPredictor
from support.rasters import (POND2, ROAD, SCENE_COLOURS, WATER, pond_scene, scene_image,
                             scene_labels)
from support.tiny_models import load_tiny_clip
from drseg.core.dense_clip import CLIP_MEAN, CLIP_STD, DenseClip
from drseg.core.refer.localize import Localizer, LocalizerSettings
from drseg.core.refer.parse import parse_expression
from drseg.core.refer.pipeline import ReferringSession


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    model, tokenizer, _ = load_tiny_clip(tmp_path_factory.mktemp("clip"), seed=0)
    return DenseClip(model, tokenizer, torch.device("cpu"))


def test_pooled_embedding_is_the_mean_of_the_patch_features_under_the_mask(tiny_clip):
    localizer = Localizer(tiny_clip, LocalizerSettings(clip_long_side=None))
    image = np.random.default_rng(2).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    features = localizer.encode(image)
    patches = features.patches[0]                      # (D, 14, 14), 16-px tokens
    one, two, none = (np.zeros((224, 224), bool) for _ in range(3))
    one[48:64, 80:96] = True                           # exactly token (3, 5)
    two[48:64, 80:96] = True
    two[48:56, 96:112] = True                          # and half of token (3, 6)
    embeddings = localizer.pooled_embeddings(features, [one, two, none])
    torch.testing.assert_close(embeddings[0], patches[:, 3, 5])
    expected = F.normalize(patches[:, 3, 5] + 0.5 * patches[:, 3, 6], dim=0)
    torch.testing.assert_close(embeddings[1], expected)
    assert torch.count_nonzero(embeddings[2]) == 0
    before = (localizer.crop_encodes, tiny_clip.forward_calls)
    scores = localizer.region_scores(image, [one, two], parse_expression("the pond"),
                                     features=features)
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)
    assert (localizer.crop_encodes, tiny_clip.forward_calls) == before     # no encoder ran


def test_pooled_embedding_over_overlapping_windows_sums_each_windows_tokens(tiny_clip):
    # several overlapping windows: each token's share is the mask's mean over its 16-px cell of
    # that window, summed over all windows' tokens (the oracle loops over windows and cells)
    localizer = Localizer(tiny_clip, LocalizerSettings(clip_long_side=None))
    rng = np.random.default_rng(4)
    image = rng.integers(0, 255, (336, 448, 3), dtype=np.uint8)
    features = localizer.encode(image)
    assert len(features.windows) == 6
    masks = [rng.random((336, 448)) < 0.3, np.zeros((336, 448), bool)]
    masks[1][100:250, 30:300] = True
    got = localizer.pooled_embeddings(features, masks)
    patches = features.patches.double()
    for mask, embedding in zip(masks, got):
        total = torch.zeros(patches.shape[1], dtype=torch.float64)
        for (y, x), window in zip(features.windows, patches):
            for i in range(window.shape[1]):
                for j in range(window.shape[2]):
                    cell = mask[y + 16 * i:y + 16 * i + 16, x + 16 * j:x + 16 * j + 16]
                    total += float(cell.mean()) * window[:, i, j]
        torch.testing.assert_close(embedding.double(), F.normalize(total, dim=0),
                                   rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# A CLIP stand-in that knows things by colour, densely (tokens) and globally (crops)

COLOURS = {"pond": WATER, "water": WATER, "road": ROAD, "building": SCENE_COLOURS["building"],
           "tree": SCENE_COLOURS["tree"], "field": (215, 205, 150)}
BASIS = np.array(sorted({tuple(c) for c in COLOURS.values()}), np.float32)


class _Tokens(list):
    def to(self, device):
        return self


class _ColourModel(torch.nn.Module):
    """encode_text: the colour basis vector of each category word in the prompt (uniform when
    there is none, e.g. the generic prompts); encode_image: the crop's mean colour membership."""

    def encode_text(self, prompts):
        out = torch.zeros((len(prompts), len(BASIS)))
        for row, prompt in enumerate(prompts):
            for word, colour in COLOURS.items():
                if word in prompt and word != "field":
                    out[row] += torch.from_numpy(membership(np.array(colour, np.float32)))
            if not out[row].any():
                out[row] = 1.0
        return out

    def encode_image(self, pixels):
        return colour_membership(pixels).mean(dim=(2, 3))


def membership(colours: np.ndarray) -> np.ndarray:
    d2 = ((colours[..., None, :] - BASIS) ** 2).sum(-1)
    return np.exp(-d2 / (2 * 40.0 ** 2)).astype(np.float32)


def colour_membership(pixels: torch.Tensor) -> torch.Tensor:
    """Normalised pixels (B,3,H,W) -> (B,K,H,W) closeness to each basis colour."""
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    rgb = (pixels * std + mean).permute(0, 2, 3, 1).numpy()
    return torch.from_numpy(membership(rgb)).permute(0, 3, 1, 2)


class ColourClip:
    bias_lambda = -0.3

    def __init__(self):
        self.model = _ColourModel()
        self.tokenizer = lambda prompts: _Tokens(prompts)
        self.device = torch.device("cpu")

    def normalise(self, images):
        pixels = torch.from_numpy(np.ascontiguousarray(images)).float()
        return (pixels - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)

    def dense_features(self, pixels):
        tokens = F.avg_pool2d(colour_membership(pixels), 16)
        return tokens, tokens.mean(dim=(2, 3))


def scenes():
    """(image, expression, answer mask) with one right answer each."""
    ponds = pond_scene()
    north, south, road = (np.zeros(ponds.shape[:2], bool) for _ in range(3))
    north[30:80, 40:100] = True
    south[160:220, 120:200] = True
    road[110:130, :] = True
    labels = scene_labels()
    image = scene_image(labels).transpose(1, 2, 0)
    return [(ponds, "the pond north of the road", north),
            (ponds, "the largest pond", south), (ponds, "the road", road),
            (ponds, "the pond south of the road", south),
            (image, "the road", labels == 2), (image, "the pond", labels == 3),
            (image, "the round tree", labels == 4), (image, "the road east of the building",
                                                     labels == 2)]


def accuracy(region_crops: bool) -> float:
    localizer = Localizer(ColourClip(), LocalizerSettings(region_crops=region_crops))
    right = 0
    cases = scenes()
    for image, expression, answer in cases:
        session = ReferringSession(image, ColourPredictor(), localizer)
        results = session.query(expression)
        mask = results[0].mask if results else np.zeros_like(answer)
        right += np.count_nonzero(mask & answer) / np.count_nonzero(mask | answer) > 0.9
    return right / len(cases)


def test_pooled_region_scores_select_as_well_as_the_crop_pass():
    pooled, crops = accuracy(region_crops=False), accuracy(region_crops=True)
    print(f"selection accuracy on the oracle scenes: pooled {pooled:.2f}, crops {crops:.2f}")
    assert pooled >= crops and pooled >= 0.8
