"""Where is the thing an expression names? Activation maps and region scores from dense CLIP.

For one area (an H×W×3 uint8 image) the CLIP image encoder runs once (:meth:`Localizer.encode`):
the area is resized so its long side is ``clip_long_side`` (448 by default, the SegEarth-OV
protocol), cut into 224-px windows with stride 112 and each window's patch and CLS features are
kept (training-free dense CLIP, ``core/dense_clip.py``). Everything after that is text:

- a *query* is a set of phrases whose normalised text embeddings are averaged (the expression
  alone; the target noun with its first synonyms, ``pond, water, pool, lake``);
- its similarity map is ``patch·t + λ·cls·t`` per window, blended across windows with the same
  smooth weights as the segmentation engine (``core/sliding.py``);
- the part every image region shares with *generic* prompts (``a satellite image``, ``the
  ground``, ``background`` ...) is removed, CLIP-Surgery style: the map of the mean generic
  embedding is subtracted (subtracting the mean of the generic maps is the same, by linearity),
  so only what is specific to the target stays;
- :meth:`Localizer.localize` min-max normalises the expression map and the target map over the
  valid area, mixes them (``expression_weight``), bilinearly resizes to the area's pixel size and
  normalises again: an H×W float32 map in [0, 1], higher = more likely the target.

:meth:`Localizer.region_scores` scores candidate masks on context-aware crops: the mask's box,
grown by ``context`` × its size and made square, with the pixels outside the mask dimmed toward
CLIP's mean colour (kept as context, but weaker), through the standard CLIP image encoder, then
the probability of the expression (and of the target) against the generic prompts: in [0, 1].

Text embeddings are cached per phrase and similarity maps per query and area, so the second
expression on an area costs a few small matrix products (and crop encodings of its candidates).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..dense_clip import CLIP_MEAN, dense_logits, encode_prompts
from ..errors import InputError
from ..sliding import bilinear_matrix, blend_ramp, window_starts
from .parse import NounPhrase, ParsedExpression
from .sam_frames import normalize_activation

GENERIC_PROMPTS = ("a satellite image", "the ground", "background", "land")
# Short remote-sensing templates: an expression reads naturally in each of them. Few, because
# the text tower runs once per template and phrase (ViT-B: about 10 GFLOP each).
REFER_TEMPLATES = ("a satellite image of {}.", "an aerial photo of {}.")


@dataclass(frozen=True)
class LocalizerSettings:
    """clip_long_side: CLIP's working long side (None: the area's own size); window/stride: CLIP
    windows on that image; max_synonyms: synonyms of the target averaged into its query;
    expression_weight: share of the expression map in the activation (the rest is the target
    noun's); context: crop margin around a mask's box, × the box size per side; min_crop: the
    smallest crop side, px; dim_outside: how much pixels outside the mask are faded (0 keeps
    them, 1 removes them); region_logit_scale: CLIP's softmax temperature for region scores."""

    clip_long_side: Optional[int] = 448
    window: int = 224
    stride: int = 112
    batch_size: int = 8
    generic_prompts: Tuple[str, ...] = GENERIC_PROMPTS
    templates: Tuple[str, ...] = REFER_TEMPLATES
    max_synonyms: int = 3
    expression_weight: float = 0.4
    context: float = 0.5
    min_crop: int = 32
    dim_outside: float = 0.5
    region_logit_scale: float = 100.0
    max_cached_maps: int = 48


@dataclass
class AreaFeatures:
    """Dense CLIP features of one area, and the similarity maps computed from them so far."""

    height: int
    width: int
    clip_size: Tuple[int, int]            # (h, w) of the resized image CLIP saw
    canvas: Tuple[int, int]               # (h, w) covered by windows (≥ clip_size, ≥ window)
    windows: List[Tuple[int, int]]        # window origins (y, x) on the canvas
    patches: torch.Tensor                 # (N, D, gh, gw), L2-normalised over D
    cls: torch.Tensor                     # (N, D), L2-normalised
    valid: Optional[np.ndarray] = None    # (H, W) bool: pixels with data
    maps: "OrderedDict[Tuple, np.ndarray]" = field(default_factory=OrderedDict)


def target_phrases(target: NounPhrase, max_synonyms: int = 3) -> List[str]:
    """The phrases averaged into a noun's query: as written, then its first synonyms."""
    out: List[str] = []
    for text in (target.text, target.head, *target.synonyms[:max(0, max_synonyms)]):
        text = (text or "").strip()
        if text and text not in out:
            out.append(text)
    return out


class Localizer:
    """Activation maps and CLIP region scores for referring expressions (see module doc).

    clip: a ``DenseClip`` (its model, tokenizer, device and ``bias_lambda`` are used; its own
    templates are not: referring uses ``settings.templates``). Counters: ``image_encodes``
    (area encodings), ``crop_encodes`` (region-score batches), ``text_encodes`` (phrases).
    """

    def __init__(self, clip, settings: Optional[LocalizerSettings] = None):
        self.clip = clip
        self.settings = settings or LocalizerSettings()
        self.image_encodes = 0
        self.crop_encodes = 0
        self.text_encodes = 0
        self._texts: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        self._text_lock = threading.RLock()      # sessions on other threads share the cache
        self._resize: Dict[Tuple[int, int], torch.Tensor] = {}

    # -- text -------------------------------------------------------------------------------
    def encode_phrases(self, phrases: Sequence[str]) -> None:
        """Encode the phrases not cached yet, all templates of all of them in one batch."""
        with self._text_lock:
            self._encode_missing(phrases)

    def _encode_missing(self, phrases: Sequence[str]) -> None:
        missing = list(dict.fromkeys(p for p in phrases if p not in self._texts))
        if not missing:
            return
        embeddings = encode_prompts(self.clip.model, self.clip.tokenizer, self.clip.device,
                                    missing, self.settings.templates)
        for text, vector in zip(missing, embeddings):
            self._texts[text] = vector
        self.text_encodes += len(missing)
        while len(self._texts) > 512:
            self._texts.popitem(last=False)

    def text_embedding(self, text: str) -> torch.Tensor:
        """(D,) normalised mean over the templates of normalised embeddings; cached."""
        with self._text_lock:
            self._encode_missing([text])
            self._texts.move_to_end(text)
            return self._texts[text]

    def query_embedding(self, phrases: Sequence[str]) -> torch.Tensor:
        """(D,) mean of the phrases' embeddings, normalised (one concept)."""
        if not phrases:
            raise InputError("Nothing to localise: the phrase is empty.")
        self.encode_phrases(phrases)
        return F.normalize(torch.stack([self.text_embedding(p) for p in phrases]).mean(0), dim=0)

    def generic_embedding(self) -> torch.Tensor:
        """(D,) plain mean of the generic prompts' embeddings (not renormalised: its map is the
        mean of their maps)."""
        generic = self.settings.generic_prompts
        self.encode_phrases(generic)
        return torch.stack([self.text_embedding(p) for p in generic]).mean(0)

    def prefetch(self, parsed: ParsedExpression) -> None:
        """Encode every phrase an expression needs (expression, target, references, generic
        prompts) in one text-tower batch."""
        s = self.settings
        phrases = [parsed.text.strip()] if parsed.text.strip() else []
        phrases += target_phrases(parsed.target, s.max_synonyms) + list(s.generic_prompts)
        for relation in parsed.relations:
            for phrase in (relation.reference, relation.second):
                if phrase is not None:
                    phrases += target_phrases(phrase, s.max_synonyms)
        self.encode_phrases(phrases)

    # -- image ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, image: np.ndarray, valid: Optional[np.ndarray] = None) -> AreaFeatures:
        """Run the CLIP image encoder over the area once. image: (H, W, 3) uint8."""
        image = _hwc(image)
        s = self.settings
        height, width = image.shape[:2]
        if s.clip_long_side:
            scale = s.clip_long_side / max(height, width)
            ch, cw = max(1, int(round(height * scale))), max(1, int(round(width * scale)))
        else:
            ch, cw = height, width
        pixels = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()[None]
        if (ch, cw) != (height, width):
            pixels = F.interpolate(pixels, size=(ch, cw), mode="bilinear", align_corners=False,
                                   antialias=(ch < height or cw < width))
        canvas_h, canvas_w = max(ch, s.window), max(cw, s.window)
        ys = window_starts(canvas_h, s.window, s.stride)
        xs = window_starts(canvas_w, s.window, s.stride)
        device = self.clip.device
        # padding takes CLIP's mean colour: zero after normalisation
        canvas = torch.zeros((1, 3, canvas_h, canvas_w), device=device)
        canvas[:, :, :ch, :cw] = self.clip.normalise(pixels.clamp(0, 255).numpy())
        windows = [(y, x) for y in ys for x in xs]
        patches, cls = [], []
        for start in range(0, len(windows), s.batch_size):
            batch = torch.cat([canvas[:, :, y:y + s.window, x:x + s.window]
                               for y, x in windows[start:start + s.batch_size]]).to(device)
            p, c = self.clip.dense_features(batch)
            patches.append(F.normalize(p, dim=1))
            cls.append(F.normalize(c, dim=-1))
        self.image_encodes += 1
        return AreaFeatures(height, width, (ch, cw), (canvas_h, canvas_w), windows,
                            torch.cat(patches), torch.cat(cls),
                            None if valid is None else np.asarray(valid, bool))

    # -- maps -------------------------------------------------------------------------------
    @torch.no_grad()
    def similarity_map(self, features: AreaFeatures, vector: torch.Tensor) -> np.ndarray:
        """(h, w) blended ``patch·t + λ·cls·t`` on CLIP's resized grid for one text vector."""
        s = self.settings
        vector = vector.to(features.patches.device, features.patches.dtype)
        logits = dense_logits(features.patches, features.cls, vector[None],
                              self.clip.bias_lambda)[:, 0]
        logits = logits.float().cpu()
        canvas_h, canvas_w = features.canvas
        out = torch.zeros((canvas_h, canvas_w))
        weight = torch.zeros((canvas_h, canvas_w))
        ramp = torch.from_numpy(blend_ramp(s.window))
        gh, gw = logits.shape[1:]
        resize_y = self._resize_matrix(s.window, gh) * ramp[:, None]
        resize_x = self._resize_matrix(s.window, gw) * ramp[:, None]
        for (y, x), window_logits in zip(features.windows, logits):
            out[y:y + s.window, x:x + s.window] += resize_y @ window_logits @ resize_x.T
            weight[y:y + s.window, x:x + s.window] += torch.outer(ramp, ramp)
        ch, cw = features.clip_size
        return (out / weight.clamp(min=1e-12))[:ch, :cw].numpy()

    def _resize_matrix(self, size: int, tokens: int) -> torch.Tensor:
        key = (size, tokens)
        if key not in self._resize:
            self._resize[key] = torch.from_numpy(bilinear_matrix(size, tokens))
        return self._resize[key]

    def _cached_map(self, features: AreaFeatures, key: Tuple, make) -> np.ndarray:
        if key in features.maps:
            features.maps.move_to_end(key)
            return features.maps[key]
        value = make()
        features.maps[key] = value
        while len(features.maps) > self.settings.max_cached_maps:
            features.maps.popitem(last=False)
        return value

    def phrase_map(self, features: AreaFeatures, phrases: Sequence[str]) -> np.ndarray:
        """(h, w) similarity of the phrases' query minus that of the generic prompts."""
        phrases = tuple(phrases)
        generic = self._cached_map(features, ("generic",) + self.settings.generic_prompts,
                                   lambda: self.similarity_map(features, self.generic_embedding()))
        return self._cached_map(
            features, ("phrase",) + phrases,
            lambda: self.similarity_map(features, self.query_embedding(phrases)) - generic)

    def to_area(self, features: AreaFeatures, grid_map: np.ndarray) -> np.ndarray:
        """A map on CLIP's grid -> (H, W) at the area's pixel size, in [0, 1] over valid pixels."""
        t = torch.from_numpy(np.ascontiguousarray(grid_map, np.float32))[None, None]
        if t.shape[-2:] != (features.height, features.width):
            t = F.interpolate(t, size=(features.height, features.width), mode="bilinear",
                              align_corners=False)
        area = t[0, 0].numpy().astype(np.float64)
        if features.valid is not None and features.valid.shape == area.shape:
            area = np.where(features.valid, area, np.nan)
        return normalize_activation(area)

    def localize(self, features: AreaFeatures, parsed: ParsedExpression) -> np.ndarray:
        """(H, W) float32 activation in [0, 1] of the expression's target (module doc)."""
        w = float(np.clip(self.settings.expression_weight, 0.0, 1.0))
        self.prefetch(parsed)
        target = self._grid_normalised(
            self.phrase_map(features, target_phrases(parsed.target, self.settings.max_synonyms)),
            features)
        combined = (1.0 - w) * target
        if w > 0 and parsed.text.strip():
            combined = combined + w * self._grid_normalised(
                self.phrase_map(features, (parsed.text.strip(),)), features)
        return self.to_area(features, combined)

    def phrase_activation(self, features: AreaFeatures, phrase: NounPhrase) -> np.ndarray:
        """(H, W) float32 activation in [0, 1] of a named thing (a relation's reference)."""
        return self.to_area(features, self.phrase_map(
            features, target_phrases(phrase, self.settings.max_synonyms)))

    def _grid_normalised(self, grid_map: np.ndarray, features: AreaFeatures) -> np.ndarray:
        """Min-max over the valid part of CLIP's grid (so both maps get an equal say)."""
        values = grid_map.astype(np.float64)
        if features.valid is not None and not features.valid.all():
            small = torch.from_numpy(features.valid.astype(np.float32))[None, None]
            small = F.interpolate(small, size=grid_map.shape, mode="bilinear",
                                  align_corners=False)[0, 0].numpy()
            values = np.where(small > 0.5, values, np.nan)
        return np.nan_to_num(normalize_activation(values), nan=0.0)

    # -- regions ------------------------------------------------------------------------------
    @torch.no_grad()
    def region_scores(self, image: np.ndarray, masks: Sequence[np.ndarray],
                      parsed: ParsedExpression) -> List[float]:
        """CLIP region similarity of each mask in [0, 1] (module doc); one encoder batch."""
        if not len(masks):
            return []
        image = _hwc(image)
        s = self.settings
        crops = [context_crop(image, np.asarray(m, bool), s.context, s.min_crop, s.dim_outside,
                              s.window) for m in masks]
        pixels = self.clip.normalise(np.stack(crops).transpose(0, 3, 1, 2))
        model = self.clip.model
        features = []
        for start in range(0, len(crops), s.batch_size):
            batch = pixels[start:start + s.batch_size]
            features.append(F.normalize(model.encode_image(batch).float(), dim=-1))
        self.crop_encodes += 1
        image_features = torch.cat(features)
        positives = [self.query_embedding((parsed.text.strip(),)) if parsed.text.strip()
                     else None,
                     self.query_embedding(target_phrases(parsed.target, s.max_synonyms))]
        generic = torch.stack([self.text_embedding(p) for p in s.generic_prompts])
        generic_logits = s.region_logit_scale * image_features @ generic.to(image_features).T
        w = float(np.clip(s.expression_weight, 0.0, 1.0))
        scores = torch.zeros(len(crops))
        total = 0.0
        for weight, vector in ((w, positives[0]), (1.0 - w, positives[1])):
            if vector is None or weight <= 0:
                continue
            pos = s.region_logit_scale * image_features @ vector.to(image_features)
            logits = torch.cat([pos[:, None], generic_logits], dim=1)
            scores += weight * torch.softmax(logits, dim=1)[:, 0].cpu()
            total += weight
        return [float(v) for v in (scores / max(total, 1e-12))]


def context_crop(image: np.ndarray, mask: np.ndarray, context: float = 0.5, min_crop: int = 32,
                 dim_outside: float = 0.5, size: int = 224) -> np.ndarray:
    """(size, size, 3) uint8 crop around a mask: its box grown by ``context`` × the box size per
    side, made square (shifted to stay inside the image), pixels outside the mask faded toward
    CLIP's mean colour by ``dim_outside``, resized (antialiased bilinear)."""
    h, w = mask.shape
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        y0, y1, x0, x1 = 0, h, 0, w
    else:
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    side = max(y1 - y0, x1 - x0) * (1.0 + 2.0 * context)
    side = int(min(max(side, min_crop), max(h, w)))
    cy, cx = (y0 + y1) / 2.0, (x0 + x1) / 2.0
    top = int(round(min(max(cy - side / 2.0, 0), max(h - side, 0))))
    left = int(round(min(max(cx - side / 2.0, 0), max(w - side, 0))))
    crop = image[top:top + side, left:left + side]
    inside = mask[top:top + side, left:left + side]
    # resize first (a crop may be the whole area), then fade with the resized mask
    t = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))).float()[None]
    m = torch.from_numpy(np.ascontiguousarray(inside)).float()[None, None]
    if t.shape[-2:] != (size, size):
        shrink = t.shape[-1] > size or t.shape[-2] > size
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=shrink)
        m = F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=shrink)
    if dim_outside > 0:
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        faded = t * (1.0 - dim_outside) + mean * dim_outside
        t = m * t + (1.0 - m) * faded
    return t[0].clamp(0, 255).round().to(torch.uint8).numpy().transpose(1, 2, 0)


def _hwc(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"An area image must be H×W×3 uint8, got shape {image.shape}.")
    if image.dtype != np.uint8:
        raise InputError(f"An area image must be uint8, got {image.dtype}.")
    return image
