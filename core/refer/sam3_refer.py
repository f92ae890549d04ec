"""Referring segmentation with SAM 3: the expression's target is a concept prompt, SAM 3 returns
every instance, and the selection rules (`select.py`) apply the position, relation, size, order
and count modifiers.

    session = Sam3ReferringSession(image, sam3_scorer)       # image: H×W×3 uint8, one area
    answer = session.query("the largest tank north of the road")
    answer = session.query("all the cars")                   # image encoder not run again

The concept prompt is the parser's target noun phrase (colours first, then the head noun:
"red car"); a relation's reference ("the road") is a concept prompt too, and the union of its
instances is the reference mask. The area is scored as one SAM 3 image (SAM 3 resizes any image to
its input size, as its own processor does); its image features are computed at the first query
and kept, so later expressions cost the text encoder and the decoders (`encoder_calls`).
The instance source is a seam (`detect(phrase) -> (candidates, activation)`) so the selection can
be checked with known instances.

The session answers like `pipeline.ReferringSession` (`query(..., local_only)`, `last_timings`,
`encoded`, `to_geometry`, `refine`, `pixel_of`), so `run.run_referring` serves request.engine
'sam3' with it, tiled or not, and the dock refines its results with clicks: SAM 3's tracker head
(`core/models/sam3_clicks.py`, from the same checkpoint) decodes the clicks, with the result's
mask as the prior, on the backbone tokens kept from the area's encoding (no encoder runs again).
Weights without the tracker part (a detector-only export) get `Sam1Clicks` instead: SAM
(segment_anything, loaded at the first click) decodes the clicks on the same area, and the
session's `click_note` says so; with neither, `refine` says why it cannot.
"""
from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from .parse import ParsedExpression, parse_expression
from .pipeline import GeoreferencedArea, QueryTimings, ReferringResult, _points
from .select import Candidate, ScoredCandidate, SelectionWeights, select_candidates

MIN_INSTANCE_SCORE = 0.3   # σ(score)·σ(presence) below this is not an instance
MASK_THRESHOLD = 0.5       # σ(mask logit) at or above this is inside the instance
PRIOR_LOGIT = 10.0         # a result's mask as the click decoder's prior: ±this inside/outside
NO_CLICK_HEAD = ("these SAM 3 weights have no tracker (point-prompt) part; use the released "
                 "facebook/sam3 model.safetensors, which holds it")

Detection = Tuple[List[Candidate], Optional[np.ndarray]]


def concept_prompt(parsed: ParsedExpression) -> str:
    """The SAM 3 concept prompt of the target: its colours, then its head noun."""
    return " ".join(tuple(parsed.colours) + (parsed.target.head,)).strip()


class Sam3ReferringSession(GeoreferencedArea):
    """One area image and SAM 3 (a `core.sam3_engine.Sam3Scorer`), or a `detect` seam."""

    def __init__(self, image: np.ndarray, scorer=None, *,
                 detect: Optional[Callable[[str], Detection]] = None, clicks=None,
                 min_score: Optional[float] = None,
                 weights: Optional[SelectionWeights] = None,
                 valid: Optional[np.ndarray] = None, transform=None, crs=None):
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise InputError(f"The area image must be H×W×3, not {image.shape}")
        if scorer is None and detect is None:
            raise ValueError("give a SAM 3 scorer or a detect function")
        self.image = np.ascontiguousarray(image, dtype=np.uint8)
        self.valid = (np.ones(image.shape[:2], bool) if valid is None else np.asarray(valid, bool))
        self.transform, self.crs = transform, crs
        self.last_timings = QueryTimings()
        self._lock = threading.RLock()
        self.scorer = scorer
        self.min_score = float(MIN_INSTANCE_SCORE if min_score is None else min_score)
        self.weights = weights
        self._detect = detect or self._sam3_instances
        self._features = None
        self._encode_seconds = 0.0
        self._detections: Dict[str, Detection] = {}
        self.encoder_calls = 0
        # Clicks: SAM 3's click head (or a stand-in with its interface), the backbone tokens of
        # the area kept for it, and its features computed at the first refinement.
        self.clicks = clicks
        self._tokens = None
        self._click_features = None
        self.refinements = 0

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def encoded(self) -> bool:
        return self._features is not None or self.scorer is None

    # -- queries -------------------------------------------------------------------------------
    def select(self, expression: Union[str, ParsedExpression], *,
               local_only: bool = False) -> List[ScoredCandidate]:
        """The instance(s) `expression` refers to, best first (empty when SAM 3 finds none).

        local_only: ignore absolute position and order and return every instance (a tiled run
        applies those across tiles afterwards)."""
        parsed = expression if isinstance(expression, ParsedExpression) else parse_expression(expression)
        selection = parsed
        if local_only:
            selection = replace(parsed, position=None, order=None, plural=True, count=None)
        candidates, activation = self.detect(concept_prompt(parsed))
        if not candidates:
            return []
        references = {}
        for relation in parsed.relations:
            for phrase in (relation.reference, relation.second):
                if phrase is not None and phrase.text not in references:
                    references[phrase.text] = self._union(self.detect(phrase.head)[0])
        return select_candidates(candidates, activation, selection, references or None,
                                 self.weights)

    def query(self, expression: Union[str, ParsedExpression], *,
              local_only: bool = False) -> List[ReferringResult]:
        """`select` as `pipeline.ReferringResult`s, with this query's `last_timings`."""
        text = expression.text if isinstance(expression, ParsedExpression) else str(expression)
        with self._lock:
            started = time.perf_counter()
            before = self.encoder_calls
            chosen = self.select(expression, local_only=local_only)
            timings = QueryTimings(cached=self.encoder_calls == before)
            timings.sam_encode = self._encode_seconds if not timings.cached else 0.0
            timings.total = time.perf_counter() - started
            timings.decode = timings.total - timings.sam_encode
            timings.candidates = len(chosen)
            self.last_timings = timings
        return [ReferringResult(mask=c.mask, score=float(c.score), expression=text.strip(),
                                target_score=c.target_score, modifier_score=c.modifier_score,
                                terms=dict(c.terms), source="sam3", component=c.component)
                for c in chosen]

    # -- clicks --------------------------------------------------------------------------------
    @property
    def cannot_refine(self) -> str:
        """Why clicks cannot refine this session's results ('' when they can)."""
        return NO_CLICK_HEAD if self.clicks is None else ""

    @property
    def click_note(self) -> str:
        """What the user should know about how clicks are decoded ('' for SAM 3's own head)."""
        return getattr(self.clicks, "note", "")

    def refine(self, result: ReferringResult, positive_points=(), negative_points=()
               ) -> ReferringResult:
        """Decode the result's clicks so far plus these (area pixel (x, y), e.g. from `pixel_of`)
        with SAM 3's click head on the area's cached features; the result's mask (or its last
        refinement's logits) is the prior. The returned result carries every click."""
        if self.clicks is None:
            raise InputError(f"Refining with clicks is not available: {self.cannot_refine}")
        if isinstance(self.clicks, Sam1Clicks):
            return self.clicks.refine(self, result, positive_points, negative_points)
        positive, negative = _points(positive_points), _points(negative_points)
        new = np.concatenate([positive, negative])
        if not len(new):
            raise InputError("Add at least one click (positive or negative) to refine a result.")
        if not ((new[:, 0] >= -0.5) & (new[:, 0] < self.width - 0.5) & (new[:, 1] >= -0.5)
                & (new[:, 1] < self.height - 0.5)).all():
            raise InputError("A click lies outside the area the result was computed on.")
        old_labels = (np.zeros(0, np.int64) if result.labels is None
                      else np.asarray(result.labels, np.int64).reshape(-1))
        points = np.concatenate([_points(result.points), positive, negative])
        labels = np.concatenate([old_labels, np.ones(len(positive), np.int64),
                                 np.zeros(len(negative), np.int64)])
        with self._lock:
            features = self._click_inputs()
            size = self.clicks.image_size
            scale = np.array([size / self.width, size / self.height])
            prior = self._prior(result)
            logits, iou = self.clicks.decode(features, (points + 0.5) * scale - 0.5, labels, prior)
            self.refinements += 1
        logits = torch.as_tensor(logits, dtype=torch.float32).reshape(1, 1, *logits.shape[-2:])
        area = F.interpolate(logits, size=(self.height, self.width), mode="bilinear",
                             align_corners=False)[0, 0]
        terms = dict(result.terms)
        terms["sam_iou"] = float(iou)
        return ReferringResult(mask=(area > 0).numpy() & self.valid, score=result.score,
                               expression=result.expression, target_score=result.target_score,
                               modifier_score=result.modifier_score, terms=terms,
                               source="refined", component=result.component, points=points,
                               labels=labels, low_res=logits[0].numpy())

    def _click_inputs(self):
        if self._click_features is None:
            if self.scorer is not None and self._tokens is None:
                self._encode_area()
            self._click_features = self.clicks.features(self._tokens)
            self._tokens = None                 # the click features replace them
        return self._click_features

    def _prior(self, result: ReferringResult) -> Optional[torch.Tensor]:
        """The decoder's mask prior: the last refinement's logits, else the result's mask as
        logits at the click head's mask size (±PRIOR_LOGIT); None for an empty result (a first
        click where the query found nothing)."""
        size = self.clicks.mask_size
        low = None if result.low_res is None else np.asarray(result.low_res, np.float32)
        if low is not None and low.shape[-2:] == (size, size):
            return torch.from_numpy(low.reshape(size, size))
        if not np.any(result.mask):
            return None
        inside = torch.from_numpy(np.asarray(result.mask, np.float32))[None, None]
        inside = F.interpolate(inside, size=(size, size), mode="bilinear", align_corners=False,
                               antialias=True)[0, 0]
        return (2.0 * inside - 1.0) * PRIOR_LOGIT

    def detect(self, phrase: str) -> Detection:
        """Instances of one concept (cached per phrase for this area)."""
        if phrase not in self._detections:
            self._detections[phrase] = self._detect(phrase)
        return self._detections[phrase]

    def _union(self, candidates: Sequence[Candidate]) -> Optional[np.ndarray]:
        if not candidates:
            return None
        return np.logical_or.reduce([c.mask for c in candidates])

    # -- SAM 3 ---------------------------------------------------------------------------------
    def _encode_area(self) -> None:
        """The area as one SAM 3 tile through the image encoder (once per session)."""
        size = self.scorer.window
        pixels = torch.from_numpy(self.image).permute(2, 0, 1)[None].float()
        pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
        tile = pixels.round().clamp(0, 255).to(torch.uint8).numpy()
        started = time.perf_counter()
        self._features, tokens = self.scorer.encode_tile(tile)
        if self.clicks is not None and self._click_features is None:
            self._tokens = tokens
        self._encode_seconds = time.perf_counter() - started
        self.encoder_calls += 1

    @torch.no_grad()
    def _sam3_instances(self, phrase: str) -> Detection:
        from transformers.modeling_outputs import BaseModelOutputWithPooling
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        from ..sam3_engine import combine_concept

        scorer = self.scorer
        if self._features is None:
            self._encode_area()
        levels, positions = self._features
        ids = scorer.tokenizer([phrase]).to(scorer.device)
        mask = (ids != 0).long()
        text = scorer.model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
        out = scorer.model(vision_embeds=Sam3VisionEncoderOutput(fpn_hidden_states=levels,
                                                                 fpn_position_encoding=positions),
                           text_embeds=BaseModelOutputWithPooling(pooler_output=text),
                           attention_mask=mask)
        height, width = self.image.shape[:2]
        scores = (torch.sigmoid(out.pred_logits[0].float())
                  * torch.sigmoid(out.presence_logits[0].float().reshape(())))
        masks = F.interpolate(out.pred_masks[0][None].float(), size=(height, width),
                              mode="bilinear", align_corners=False)[0]
        candidates = [Candidate(mask=(torch.sigmoid(masks[i]) >= MASK_THRESHOLD).numpy() & self.valid,
                                sam_iou=float(scores[i]), source=f"sam3/{i}")
                      for i in range(len(scores)) if float(scores[i]) >= self.min_score]
        activation = combine_concept(out.pred_masks[0], out.pred_logits[0], out.presence_logits[0],
                                     out.semantic_seg[0, 0])
        activation = F.interpolate(activation[None, None], size=(height, width), mode="bilinear",
                                   align_corners=False)[0, 0].numpy()
        return candidates, activation


class Sam1Clicks:
    """Clicks on SAM 3 results decoded by SAM (segment_anything) on the same area, for SAM 3
    weights without the tracker part. `load_sam()` gives the SAM model; it is called at the first
    click only, and each area gets one SAM session (its embedding kept for the next clicks)."""

    note = ("these SAM 3 weights have no tracker (point-prompt) part, so SAM decodes the clicks "
            "on the same area")

    def __init__(self, load_sam: Callable[[], object]):
        self.load_sam = load_sam
        self._sam = None

    def refine(self, area: Sam3ReferringSession, result: ReferringResult, positive_points=(),
               negative_points=()) -> ReferringResult:
        from .pipeline import ReferringSession

        with area._lock:
            inner = getattr(area, "_sam1_session", None)
            if inner is None:
                if self._sam is None:
                    self._sam = self.load_sam()
                inner = ReferringSession(area.image, self._sam, None, valid=area.valid,
                                         transform=area.transform, crs=area.crs, disk_cache=None)
                area._sam1_session = inner
            refined = inner.refine(result, positive_points, negative_points)
            area.refinements += 1
        return refined
