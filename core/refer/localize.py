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

:meth:`Localizer.region_scores` scores candidate masks: by default from the area's cached dense
features (each mask's share of every patch token weights the normalised patch features; the
normalised sum is the region's embedding: no encoder runs), or, with ``region_crops``, on
context-aware crops (the mask's box grown by ``context`` × its size and made square, pixels
outside the mask dimmed toward CLIP's mean colour) through the standard CLIP image encoder. Either
embedding gives the probability of the expression (and of the target) against the generic
prompts: in [0, 1].

Text embeddings are cached per phrase and similarity maps per query and area, so the second
expression on an area costs a few small matrix products.
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
from ..disk_cache import USE_DEFAULT, model_fingerprint, resolve_cache
from ..errors import InputError
from ..protocol import DEFAULT_BATCH_SIZE, DEFAULT_STRIDE, DEFAULT_WINDOW
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
    them, 1 removes them); region_crops: score regions on crops through the CLIP encoder (one
    ViT pass per candidate) instead of pooling the cached dense features;
    region_logit_scale: CLIP's softmax temperature for region scores."""

    clip_long_side: Optional[int] = 448
    window: int = DEFAULT_WINDOW
    stride: int = DEFAULT_STRIDE
    batch_size: int = DEFAULT_BATCH_SIZE
    generic_prompts: Tuple[str, ...] = GENERIC_PROMPTS
    templates: Tuple[str, ...] = REFER_TEMPLATES
    max_synonyms: int = 3
    expression_weight: float = 0.4
    context: float = 0.5
    min_crop: int = 32
    dim_outside: float = 0.5
    region_crops: bool = False
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

    def to_tensors(self) -> Dict[str, torch.Tensor]:
        """What the disk cache stores (the maps are cheap to recompute)."""
        return {"patches": self.patches, "cls": self.cls,
                "geometry": torch.tensor([self.height, self.width, *self.clip_size, *self.canvas]),
                "windows": torch.tensor(self.windows, dtype=torch.int64).reshape(-1, 2)}

    @classmethod
    def from_tensors(cls, tensors: Dict[str, torch.Tensor], valid: Optional[np.ndarray],
                     device) -> "AreaFeatures":
        height, width, ch, cw, canvas_h, canvas_w = (int(v) for v in tensors["geometry"])
        windows = [(int(y), int(x)) for y, x in tensors["windows"].tolist()]
        return cls(height, width, (ch, cw), (canvas_h, canvas_w), windows,
                   tensors["patches"].to(device), tensors["cls"].to(device),
                   None if valid is None else np.asarray(valid, bool))


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

    def __init__(self, clip, settings: Optional[LocalizerSettings] = None,
                 disk_cache=USE_DEFAULT):
        self.clip = clip
        self.settings = settings or LocalizerSettings()
        self._disk = disk_cache            # text embeddings on disk (core/disk_cache.py)
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

    @property
    def disk_cache(self):
        self._disk = resolve_cache(self._disk)
        return self._disk

    def _text_key(self, phrase: str) -> Dict[str, object]:
        return {"clip": model_fingerprint(self.clip.model),
                "templates": list(self.settings.templates), "phrase": phrase}

    def feature_key(self) -> Dict[str, object]:
        """What an area's features depend on besides its pixels (the disk cache's key)."""
        s = self.settings
        return {"clip": model_fingerprint(self.clip.model),
                "attention": getattr(self.clip, "attention", None),
                "clip_long_side": s.clip_long_side, "window": s.window, "stride": s.stride}

    def _encode_missing(self, phrases: Sequence[str]) -> None:
        missing = list(dict.fromkeys(p for p in phrases if p not in self._texts))
        disk = self.disk_cache if missing else None
        if disk is not None:
            for text in list(missing):
                stored = disk.get("refer-text", self._text_key(text))
                if stored is not None and "embedding" in stored:
                    self._texts[text] = stored["embedding"].to(self.clip.device)
                    missing.remove(text)
        if not missing:
            return
        embeddings = encode_prompts(self.clip.model, self.clip.tokenizer, self.clip.device,
                                    missing, self.settings.templates)
        for text, vector in zip(missing, embeddings):
            # its own storage, as one read back from disk has: a row of the batch would sit at
            # another alignment and round differently in the map products
            vector = vector.clone()
            self._texts[text] = vector
            if disk is not None:
                disk.put("refer-text", self._text_key(text), {"embedding": vector})
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
        ramp = torch.from_numpy(blend_ramp(s.window))
        gh, gw = logits.shape[1:]
        resize_y = self._resize_matrix(s.window, gh) * ramp[:, None]
        resize_x = self._resize_matrix(s.window, gw) * ramp[:, None]
        upsampled = resize_y[None] @ logits @ resize_x.T[None]      # all windows in one product
        for (y, x), window in zip(features.windows, upsampled):
            out[y:y + s.window, x:x + s.window] += window
        ch, cw = features.clip_size
        # the blend weights depend on the windows only: once per area
        total = self._cached_map(features, ("blend-weight",), lambda: self._blend_total(features))
        return (out[:ch, :cw] / total).numpy()

    def _blend_total(self, features: AreaFeatures) -> torch.Tensor:
        window = self.settings.window
        ramp = torch.from_numpy(blend_ramp(window))
        weight = torch.zeros(features.canvas)
        tile = torch.outer(ramp, ramp)
        for y, x in features.windows:
            weight[y:y + window, x:x + window] += tile
        ch, cw = features.clip_size
        return weight[:ch, :cw].clamp(min=1e-12)

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
                      parsed: ParsedExpression,
                      features: Optional[AreaFeatures] = None) -> List[float]:
        """CLIP region similarity of each mask in [0, 1] (module doc). With the area's
        ``features`` and ``settings.region_crops`` off: mask-pooled dense features, no encoder
        run; otherwise one encoder batch of context crops."""
        if not len(masks):
            return []
        if features is not None and not self.settings.region_crops:
            return self._region_probabilities(self.pooled_embeddings(features, masks), parsed)
        return self._region_probabilities(self.crop_embeddings(image, masks), parsed)

    @torch.no_grad()
    def pooled_embeddings(self, features: AreaFeatures, masks: Sequence[np.ndarray]
                          ) -> torch.Tensor:
        """(K, D) normalised region embeddings: each mask's share of every patch token (the mask
        resampled, area-weighted, onto CLIP's resized canvas and pooled over each window's token
        cells) weights the cached normalised patch features. A mask covering no token gets a
        zero vector (similarity 0 to everything)."""
        s = self.settings
        ch, cw = features.clip_size
        canvas_h, canvas_w = features.canvas
        gh, gw = features.patches.shape[-2:]
        cell = s.window // gh
        patches = features.patches.float().cpu()
        aligned = (s.window == cell * gh == cell * gw
                   and all(y % cell == 0 and x % cell == 0 for y, x in features.windows))
        embeddings = []
        for start in range(0, len(masks), 8):      # bounded memory: 8 area-sized float masks
            chunk = torch.from_numpy(np.stack([np.asarray(m, np.float32)
                                               for m in masks[start:start + 8]]))[:, None]
            if chunk.shape[-2:] != (ch, cw):
                chunk = F.interpolate(chunk, size=(ch, cw), mode="area")
            canvas = torch.zeros((chunk.shape[0], 1, canvas_h, canvas_w))
            canvas[:, :, :ch, :cw] = chunk
            if aligned:        # windows on the token grid: pool the canvas once, slice windows
                cells = F.avg_pool2d(canvas, cell)[:, 0]
                shares = torch.stack([cells[:, y // cell:y // cell + gh, x // cell:x // cell + gw]
                                      for y, x in features.windows], dim=1)
            else:
                shares = torch.stack([F.avg_pool2d(canvas[:, :, y:y + s.window, x:x + s.window],
                                                   cell) for y, x in features.windows],
                                     dim=1)[:, :, 0]
            embeddings.append(torch.einsum("knhw,ndhw->kd", shares, patches))
        return F.normalize(torch.cat(embeddings), dim=-1)

    @torch.no_grad()
    def crop_embeddings(self, image: np.ndarray, masks: Sequence[np.ndarray]) -> torch.Tensor:
        """(K, D) normalised CLIP image embeddings of the masks' context crops."""
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
        return torch.cat(features)

    def _region_probabilities(self, image_features: torch.Tensor, parsed: ParsedExpression
                              ) -> List[float]:
        """Probability of the expression (and of its target) against the generic prompts."""
        s = self.settings
        positives = [self.query_embedding((parsed.text.strip(),)) if parsed.text.strip()
                     else None,
                     self.query_embedding(target_phrases(parsed.target, s.max_synonyms))]
        generic = torch.stack([self.text_embedding(p) for p in s.generic_prompts])
        generic_logits = s.region_logit_scale * image_features @ generic.to(image_features).T
        w = float(np.clip(s.expression_weight, 0.0, 1.0))
        scores = torch.zeros(len(image_features))
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
