"""Referring segmentation of one area: CLIP localises, SAM delineates, selection decides.

    session = ReferringSession(image, sam, Localizer(dense_clip), valid=valid,
                               transform=grid.transform, crs=grid.crs)
    results = session.query("the largest pond north of the road")   # encoders run here
    results = session.query("all the storage tanks")                 # both encoders skipped
    better = session.refine(results[0], positive_points=[(120, 48)], negative_points=[(90, 60)])
    geometry = session.to_geometry(better)                            # shapely, in `crs`

A session belongs to one area image (H×W×3 uint8, the working grid of a raster window). The SAM
image embedding (``SamPredictor.set_image``) and the dense CLIP features are computed at the first
query and kept, so later queries and refinements only run text encoding (cached per phrase), the
similarity maps, SAM's prompt encoder and mask decoder and CLIP on the candidates' crops.
``sam_encoder_calls`` and ``clip_encoder_calls`` count the two image encoders.

A query: parse -> activation map (``localize.py``) -> prompts (``prompts.py``: peak points,
low points, a box, the activation as SAM's dense prompt; one prompt set per activated blob for
plural or ordered expressions) -> SAM multimask candidates -> CLIP region scores -> selection
with the expression's modifiers (``select.py``; relation references are localised too and
thresholded into reference masks). Runs share sessions through ``sessions.SESSIONS``.
"""
from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from ..disk_cache import USE_DEFAULT, array_digest, model_fingerprint, resolve_cache
from ..errors import InputError
from ..threads import light_work
from .parse import ParsedExpression, parse_expression
from .prompts import build_prompts, instance_prompts, threshold_region
from .sam_frames import SamFrame, corner_to_index, mask_input_from_activation, sam_input_side
from .select import Candidate, SelectionWeights, select_candidates


@dataclass(frozen=True)
class ReferringSettings:
    """n_positive / n_negative: prompt points; prompt_threshold: share of the activation's range
    that counts as the target region (points, box, dense prompt); max_instances: prompt sets for
    plural/ordered expressions; reference_threshold: the same for relation references;
    max_mask_fraction: candidates covering more of the valid area are background and dropped;
    duplicate_iou: candidates this similar are scored once; region_scores: CLIP region scores
    on/off (mask-pooled cached features by default, see ``LocalizerSettings.region_crops``)."""

    n_positive: int = 3
    n_negative: int = 2
    prompt_threshold: float = 0.5
    negative_threshold: float = 0.2
    max_instances: int = 8
    reference_threshold: float = 0.5
    max_mask_fraction: float = 0.9
    min_mask_pixels: int = 4
    duplicate_iou: float = 0.95
    region_scores: bool = True
    weights: SelectionWeights = field(default_factory=SelectionWeights)


@dataclass(eq=False)
class ReferringResult:
    """One object an expression refers to, in the session's area pixels.

    ``mask`` H×W bool; ``score`` in [0, 1] (target × modifiers, see ``select.py``); ``terms``
    every score term; ``points``/``labels``/``box`` the SAM prompts that produced it (area pixel
    index coordinates, x then y), ``low_res`` SAM's 1×256×256 logits of it (for refinement)."""

    mask: np.ndarray
    score: float
    expression: str
    target_score: float = 0.0
    modifier_score: float = 1.0
    terms: Dict[str, float] = field(default_factory=dict)
    source: str = ""
    component: Optional[int] = None
    points: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    box: Optional[np.ndarray] = None
    low_res: Optional[np.ndarray] = None

    @property
    def pixels(self) -> int:
        return int(np.count_nonzero(self.mask))


@dataclass
class QueryTimings:
    """Seconds spent in one query. ``cached``: no image encoder ran during it."""

    clip_encode: float = 0.0
    sam_encode: float = 0.0
    localize: float = 0.0      # text encoding (cached per phrase) and activation maps
    decode: float = 0.0        # prompts and SAM decoding
    region: float = 0.0        # CLIP region scores of the candidates
    select: float = 0.0
    total: float = 0.0
    candidates: int = 0
    cached: bool = False

    @property
    def prompting(self) -> float:
        """Everything after the encoders: maps, prompts, decoding, region scores, selection."""
        return self.localize + self.decode + self.region + self.select

    def as_dict(self) -> Dict[str, float]:
        data = dict(self.__dict__)
        data["prompting"] = self.prompting
        return data


@dataclass
class _Prompted:
    points: Optional[np.ndarray]
    labels: Optional[np.ndarray]
    box: Optional[np.ndarray]
    low_res: Optional[np.ndarray]


def _decode(predictor, coords, labels, boxes, masks_in, dense_pe=None):
    """``SamPredictor.predict_torch(..., multimask_output=True)`` for one image and a batch of
    prompt sets, through :func:`~.sam_decoder.decode_masks` when the decoder is SAM's.
    dense_pe: ``prompt_encoder.get_dense_pe()`` computed before (it depends on the weights
    only), else computed here."""
    import torch

    from .sam_decoder import decode_masks, supports

    model = getattr(predictor, "model", None)
    if model is None or not supports(getattr(model, "mask_decoder", None)):
        return predictor.predict_torch(coords, labels, boxes, masks_in, multimask_output=True)
    with torch.no_grad():
        sparse, dense = model.prompt_encoder(
            points=None if coords is None else (coords, labels), boxes=boxes, masks=masks_in)
        if dense_pe is None:
            dense_pe = model.prompt_encoder.get_dense_pe()
        low, ious = decode_masks(model.mask_decoder, predictor.features, dense_pe, sparse, dense,
                                 multimask_output=True)
        masks = model.postprocess_masks(low, predictor.input_size, predictor.original_size)
    return masks > model.mask_threshold, ious, low


def make_predictor(sam):
    """A segment_anything ``Sam`` -> a new ``SamPredictor``; a predictor-like object (with
    ``set_image`` and ``predict``) is used as is; any other callable is a factory."""
    import torch

    if isinstance(sam, torch.nn.Module):
        from segment_anything import SamPredictor

        from ..interrupt import install_cancel_points

        install_cancel_points(sam)  # a cancelled run stops between the image encoder's blocks
        return SamPredictor(sam)
    if hasattr(sam, "set_image") and hasattr(sam, "predict"):
        return sam
    if callable(sam):
        return sam()
    raise TypeError(f"Expected a SAM model or predictor, got {type(sam).__name__}")


def _as_hwc(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] == 3 and image.shape[2] != 3:
        image = image.transpose(1, 2, 0)            # rasterio's (3, H, W)
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"The area image must be H×W×3, got shape {image.shape}.")
    if image.dtype != np.uint8:
        raise InputError(f"The area image must be uint8, got {image.dtype}.")
    return np.ascontiguousarray(image)


def _points(points) -> np.ndarray:
    if points is None:
        return np.zeros((0, 2))
    arr = np.asarray(points, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 2))
    arr = arr.reshape(-1, 2) if arr.ndim == 1 else arr
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise InputError(f"Clicks must be (x, y) pairs, got an array of shape {arr.shape}.")
    return arr


class GeoreferencedArea:
    """Clicks and results of a referring session in map coordinates, through `self.transform`
    (the area's affine transform; None: an area without georeferencing). Shared by the CLIP + SAM
    and SAM 3 sessions."""

    transform = None

    def pixel_of(self, x: float, y: float) -> Tuple[float, float]:
        """Map coordinates (the area's CRS) -> area pixel-index (x, y) for clicks."""
        if self.transform is None:
            raise InputError("This session has no georeferencing.")
        col, row = ~self.transform * (x, y)
        return tuple(float(v) for v in corner_to_index([col, row]))

    def to_geometry(self, result: Union[ReferringResult, np.ndarray]):
        """A result (or mask) as a shapely (Multi)Polygon in the area's CRS (pixel edges);
        None when empty."""
        if self.transform is None:
            raise InputError("This session has no georeferencing.")
        mask = result.mask if isinstance(result, ReferringResult) else np.asarray(result, bool)
        return mask_to_geometry(mask, self.transform)


class ReferringSession(GeoreferencedArea):
    """Referring queries on one area with cached encoders (module doc).

    image: H×W×3 uint8 (a (3, H, W) array is transposed); sam: a segment_anything ``Sam``, a
    predictor-like object or a factory of one (see :func:`make_predictor`); localizer: a
    ``Localizer`` or any object with ``encode(image, valid)``, ``localize(features, parsed)``,
    ``phrase_activation(features, phrase)`` and optionally ``region_scores(image, masks,
    parsed, features=...)``; valid: H×W bool (False = nodata; masks never cover it); transform/crs: the area's
    georeferencing (rasterio Affine and CRS) for :meth:`to_geometry` and :meth:`pixel_of`.
    """

    def __init__(self, image: np.ndarray, sam, localizer, *, valid: Optional[np.ndarray] = None,
                 transform=None, crs=None, settings: Optional[ReferringSettings] = None,
                 disk_cache=USE_DEFAULT, area_key=None, prompter=None):
        self.image = _as_hwc(image)
        self.height, self.width = self.image.shape[:2]
        if valid is None:
            valid = np.ones((self.height, self.width), bool)
        self.valid = np.asarray(valid, bool)
        if self.valid.shape != (self.height, self.width):
            raise InputError(f"The validity mask is {self.valid.shape}, the image "
                             f"{(self.height, self.width)}.")
        self.predictor = make_predictor(sam)
        self.localizer = localizer
        self.transform = transform
        self.crs = crs
        self.settings = settings or ReferringSettings()
        self.frame = SamFrame(self.height, self.width, sam_input_side(self.predictor))
        self.sam_encoder_calls = 0
        self.clip_encoder_calls = 0
        self.decoder_calls = 0
        self.queries = 0
        self.refinements = 0
        self.last_timings: Optional[QueryTimings] = None
        self.last_activation: Optional[np.ndarray] = None
        self._features = None
        self._sam_ready = False
        self._dense_pe = None
        self._lock = threading.RLock()
        # On-disk embeddings (core/disk_cache.py): keyed by the area (the raster's identity and
        # window from sessions.py, else the pixels' hash) and the models.
        self._disk = disk_cache
        self._area_key = area_key
        self.disk_loads = 0
        # A trained head (learned.LearnedPrompter): its prompts replace the training-free ones.
        self.prompter = prompter
        self._learned_features = None

    @property
    def area_key(self):
        if self._area_key is None:
            self._area_key = {"pixels": array_digest(self.image, self.valid)}
        return self._area_key

    def _disk_get(self, kind: str, key):
        stored = self._disk.get(kind, key)
        if stored is not None:
            self.disk_loads += 1
        return stored

    def _disk_put(self, kind: str, key, tensors) -> None:
        if self._disk is not None:
            self._disk.put(kind, key, tensors)

    def _clip_disk_key(self):
        self._disk = resolve_cache(self._disk)
        if self._disk is None or not hasattr(self.localizer, "feature_key"):
            return None                        # a localizer without a stable identity
        return {"area": self.area_key, "localizer": self.localizer.feature_key()}

    def _sam_disk_key(self):
        self._disk = resolve_cache(self._disk)
        model = getattr(self.predictor, "model", None)
        if self._disk is None or model is None or not hasattr(self.predictor, "features"):
            return None                        # not a SamPredictor: nothing to restore
        return {"area": self.area_key, "sam": model_fingerprint(model),
                "image_size": int(getattr(model.image_encoder, "img_size", 0))}

    # -- encoders (once per session) ----------------------------------------------------------
    def _clip_features(self, timings: Optional[QueryTimings] = None):
        if self._features is None:
            started = time.perf_counter()
            key = self._clip_disk_key()
            stored = None if key is None else self._disk_get("refer-clip", key)
            if stored is not None:
                from .localize import AreaFeatures

                self._features = AreaFeatures.from_tensors(stored, self.valid,
                                                           self.localizer.clip.device)
            else:
                self._features = self.localizer.encode(self.image, self.valid)
                self.clip_encoder_calls += 1
                if key is not None:
                    self._disk_put("refer-clip", key, self._features.to_tensors())
            if timings is not None:
                timings.clip_encode += time.perf_counter() - started
        return self._features

    def _sam_embedding(self, timings: Optional[QueryTimings] = None) -> None:
        # A predictor object handed in may be shared by several sessions: re-set its image when
        # another session used it last (a SamPredictor made here belongs to this session only).
        owner = getattr(self.predictor, "_drseg_session", None)
        if not self._sam_ready or owner is None or owner() is not self:
            started = time.perf_counter()
            key = self._sam_disk_key()
            stored = None if key is None else self._disk_get("refer-sam", key)
            if stored is not None:
                self._restore_sam(stored)
            else:
                self.predictor.set_image(self.image)
                self.sam_encoder_calls += 1
                if key is not None:
                    import torch

                    self._disk_put("refer-sam", key, {
                        "features": self.predictor.features,
                        "input_size": torch.tensor(self.predictor.input_size)})
            self._sam_ready = True
            try:
                self.predictor._drseg_session = weakref.ref(self)
            except AttributeError:          # a predictor with __slots__: assume it is ours
                pass
            if timings is not None:
                timings.sam_encode += time.perf_counter() - started

    def _restore_sam(self, stored) -> None:
        """A SamPredictor in the state ``set_image`` leaves it, from a stored embedding."""
        predictor = self.predictor
        predictor.reset_image()
        predictor.features = stored["features"].to(predictor.device)
        predictor.original_size = (self.height, self.width)
        predictor.input_size = tuple(int(v) for v in stored["input_size"])
        predictor.is_image_set = True

    def prepare(self) -> "ReferringSession":
        """Run both image encoders now (e.g. while the user is still typing)."""
        with self._lock:
            self._clip_features()
            self._sam_embedding()
        return self

    @property
    def encoded(self) -> bool:
        if self.prompter is not None:
            return self._learned_features is not None
        return self._features is not None and self._sam_ready

    # -- queries ------------------------------------------------------------------------------
    def query(self, expression: Union[str, ParsedExpression], *,
              local_only: bool = False) -> List[ReferringResult]:
        """The object(s) `expression` refers to, best first (empty when nothing was found).

        local_only: ignore absolute position and order and return every instance (the tiled
        whole-layer run applies those across tiles afterwards). Raises InputError for an empty
        expression or one without a target.
        """
        if isinstance(expression, ParsedExpression):
            parsed, text = expression, expression.text.strip()
        else:
            text = str(expression or "").strip()
            parsed = parse_expression(text)
        if self.prompter is not None:
            from .learned import learned_query

            with self._lock:
                return learned_query(self, text)
        selection = parsed
        if local_only:
            selection = replace(parsed, position=None, order=None, plural=True, count=None)
        with self._lock:
            timings = QueryTimings()
            started = time.perf_counter()
            encoders_before = (self.sam_encoder_calls, self.clip_encoder_calls)
            features = self._clip_features(timings)
            self._sam_embedding(timings)
            # what follows is small tensor work: one thread (core/threads.py)
            with light_work():
                results, activation = self._answer(text, parsed, selection, features, timings)
            timings.cached = encoders_before == (self.sam_encoder_calls, self.clip_encoder_calls)
            timings.total = time.perf_counter() - started
            self.last_timings = timings
            self.queries += 1
            self.last_activation = activation
            return results

    def _answer(self, text: str, parsed: ParsedExpression, selection: ParsedExpression,
                features, timings: QueryTimings) -> Tuple[List[ReferringResult], np.ndarray]:
        """Everything of a query after the encoders: activation, prompts and SAM candidates,
        references, region scores, selection -> (results best first, activation)."""
        tick = time.perf_counter()
        activation = self.localizer.localize(features, parsed)
        timings.localize += time.perf_counter() - tick
        tick = time.perf_counter()
        candidates, prompted = self._candidates(activation, selection)
        timings.decode += time.perf_counter() - tick
        timings.candidates = len(candidates)
        results: List[ReferringResult] = []
        if candidates:
            tick = time.perf_counter()
            references = self._references(features, parsed)
            timings.localize += time.perf_counter() - tick
            tick = time.perf_counter()
            if self.settings.region_scores and hasattr(self.localizer, "region_scores"):
                scores = self.localizer.region_scores(self.image, [c.mask for c in candidates],
                                                      parsed, features=features)
                if scores is not None:
                    for candidate, score in zip(candidates, scores):
                        candidate.clip_score = float(score)
            timings.region += time.perf_counter() - tick
            tick = time.perf_counter()
            chosen = select_candidates(candidates, activation, selection, references,
                                       self.settings.weights)
            for sc in chosen:
                p = prompted[sc.index]
                results.append(ReferringResult(
                    mask=sc.mask & self.valid, score=float(sc.score), expression=text,
                    target_score=float(sc.target_score),
                    modifier_score=float(sc.modifier_score), terms=dict(sc.terms),
                    source=candidates[sc.index].source, component=sc.component,
                    points=p.points, labels=p.labels, box=p.box,
                    low_res=p.low_res if sc.component is None else None))
            timings.select += time.perf_counter() - tick
        return results, activation

    def _predict(self, points, labels, box, mask_input, multimask: bool):
        self.decoder_calls += 1
        return self.predictor.predict(point_coords=points, point_labels=labels, box=box,
                                      mask_input=mask_input, multimask_output=multimask)

    def _predict_sets(self, sets) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Multimask outputs (masks, IoU predictions, low-res logits) of each (points, labels,
        box, dense prompt) set, in order. With a ``SamPredictor``, sets of the same make-up (as
        many points, a box or not, a dense prompt or not) share one decoder call, which shares
        the image-side work among them (``sam_decoder.py``)."""
        if not (hasattr(self.predictor, "predict_torch") and hasattr(self.predictor, "transform")):
            return [self._predict(p, l, b, d, multimask=True) for p, l, b, d in sets]
        import torch

        groups: Dict[Tuple, List[int]] = {}
        for k, (points, _, box, dense) in enumerate(sets):
            shape = None if points is None else np.asarray(points).shape
            groups.setdefault((shape, box is None, dense is None), []).append(k)
        predictor = self.predictor
        device = predictor.device
        outputs: List = [None] * len(sets)
        for (shape, no_box, no_dense), members in groups.items():
            coords = labels = boxes = masks_in = None
            if shape is not None:
                coords = torch.as_tensor(np.stack([predictor.transform.apply_coords(
                    np.asarray(sets[k][0], np.float64), predictor.original_size)
                    for k in members]), dtype=torch.float, device=device)
                labels = torch.as_tensor(np.stack([np.asarray(sets[k][1]) for k in members]),
                                         dtype=torch.int, device=device)
            if not no_box:
                boxes = torch.as_tensor(np.stack([predictor.transform.apply_boxes(
                    np.asarray(sets[k][2], np.float64), predictor.original_size)[0]
                    for k in members]), dtype=torch.float, device=device)
            if not no_dense:
                masks_in = torch.as_tensor(np.stack([np.asarray(sets[k][3], np.float32)
                                                     for k in members]), device=device)
            self.decoder_calls += 1
            if self._dense_pe is None and hasattr(getattr(predictor, "model", None),
                                                  "prompt_encoder"):
                with torch.no_grad():   # SAM's positional encoding of its 64×64 grid: once
                    self._dense_pe = predictor.model.prompt_encoder.get_dense_pe()
            masks, ious, low = _decode(predictor, coords, labels, boxes, masks_in, self._dense_pe)
            for j, k in enumerate(members):
                outputs[k] = (masks[j].cpu().numpy(), ious[j].float().cpu().numpy(),
                              low[j].float().cpu().numpy())
        return outputs

    def _candidates(self, activation: np.ndarray, parsed: ParsedExpression
                    ) -> Tuple[List[Candidate], List[_Prompted]]:
        s = self.settings
        try:
            main = build_prompts(activation, n_positive=s.n_positive, n_negative=s.n_negative,
                                 threshold=s.prompt_threshold,
                                 negative_threshold=s.negative_threshold,
                                 long_side=self.frame.long_side)
        except InputError:                 # a flat map: nothing is localised here
            return [], []
        # (name, points, labels, box, dense prompt, keep only SAM's best of the three)
        sets = []
        mask_input = None if main.mask_input is None else main.mask_input[0]
        sets.append(("full", main.point_coords, main.point_labels, main.box, mask_input, False))
        if main.point_labels is not None and (main.point_labels == 1).any():
            peak = main.point_coords[main.point_labels == 1][:1]
            sets.append(("peak", peak, np.ones(1, np.int64), None, None, False))
        # Modifiers tell instances apart: give SAM one prompt set per activated blob, so the
        # instance they point at is among the candidates even when another one is brighter.
        if parsed.plural or parsed.order is not None or parsed.relations or parsed.position:
            for k, p in enumerate(instance_prompts(activation, s.max_instances,
                                                   threshold=s.prompt_threshold,
                                                   long_side=self.frame.long_side)):
                sets.append((f"instance{k}", p.point_coords, p.point_labels, p.box, None, True))
        valid_px = max(1, int(np.count_nonzero(self.valid)))
        candidates: List[Candidate] = []
        prompted: List[_Prompted] = []
        thumbs: List[np.ndarray] = []
        outputs = self._predict_sets([(points, labels, box, dense)
                                      for _, points, labels, box, dense, _ in sets])
        for (name, points, labels, box, dense, best_only), (masks, ious, low) in zip(sets, outputs):
            order = [int(np.argmax(ious))] if best_only else range(len(masks))
            for k in order:
                mask = np.asarray(masks[k], bool) & self.valid
                pixels = int(np.count_nonzero(mask))
                if pixels < s.min_mask_pixels or pixels > s.max_mask_fraction * valid_px:
                    continue
                thumb = mask[::4, ::4]
                duplicate = None
                for j, other in enumerate(thumbs):
                    union = np.count_nonzero(thumb | other)
                    if union and np.count_nonzero(thumb & other) / union > s.duplicate_iou:
                        duplicate = j
                        break
                iou = float(ious[k])
                if duplicate is not None:
                    if iou > (candidates[duplicate].sam_iou or 0.0):
                        candidates[duplicate] = Candidate(mask, iou, source=f"{name}/mask{k}")
                        prompted[duplicate] = _Prompted(points, labels, box, low[k:k + 1])
                        thumbs[duplicate] = thumb
                    continue
                candidates.append(Candidate(mask, iou, source=f"{name}/mask{k}"))
                prompted.append(_Prompted(points, labels, box, np.asarray(low[k:k + 1])))
                thumbs.append(thumb)
        return candidates, prompted

    def _references(self, features, parsed: ParsedExpression) -> Dict[str, np.ndarray]:
        """Masks of the things relations name: their activation, thresholded."""
        references: Dict[str, np.ndarray] = {}
        for relation in parsed.relations:
            for phrase in (relation.reference, relation.second):
                if phrase is None or phrase.text in references:
                    continue
                activation = self.localizer.phrase_activation(features, phrase)
                references[phrase.text] = threshold_region(
                    activation, self.settings.reference_threshold, "all") & self.valid
        return references

    # -- refinement ---------------------------------------------------------------------------
    def refine(self, result: ReferringResult, positive_points=(), negative_points=()
               ) -> ReferringResult:
        """Re-run SAM on the cached embedding with extra clicks (area pixel (x, y), e.g. from
        :meth:`pixel_of`); the result's own prompts and mask are kept as context. The returned
        result carries all clicks so far, so refinements can be chained."""
        positive, negative = _points(positive_points), _points(negative_points)
        clicks = np.concatenate([positive, negative])
        if not len(clicks):
            raise InputError("Add at least one click (positive or negative) to refine a result.")
        inside = ((clicks[:, 0] >= -0.5) & (clicks[:, 0] < self.width - 0.5)
                  & (clicks[:, 1] >= -0.5) & (clicks[:, 1] < self.height - 0.5))
        if not inside.all():
            raise InputError("A click lies outside the area the result was computed on.")
        old_points = _points(result.points)
        old_labels = (np.zeros(0, np.int64) if result.labels is None
                      else np.asarray(result.labels, np.int64).reshape(-1))
        points = np.concatenate([old_points, positive, negative])
        labels = np.concatenate([old_labels, np.ones(len(positive), np.int64),
                                 np.zeros(len(negative), np.int64)])
        box = result.box
        if box is not None and len(positive):
            x0, y0, x1, y1 = np.asarray(box, np.float64)
            if not ((positive[:, 0] >= x0) & (positive[:, 0] <= x1) & (positive[:, 1] >= y0)
                    & (positive[:, 1] <= y1)).all():
                box = None                  # a click outside the box: the box would forbid it
        mask_input = result.low_res
        if mask_input is None:
            mask_input = mask_input_from_activation(np.asarray(result.mask, np.float64),
                                                    self.frame, normalize=False)[0]
        with self._lock:
            self._sam_embedding()
            with light_work():
                masks, ious, low = self._predict(points, labels, box, mask_input, multimask=False)
            self.refinements += 1
        terms = dict(result.terms)
        terms["sam_iou"] = float(ious[0])
        return ReferringResult(mask=np.asarray(masks[0], bool) & self.valid, score=result.score,
                               expression=result.expression, target_score=result.target_score,
                               modifier_score=result.modifier_score, terms=terms,
                               source="refined", points=points, labels=labels, box=box,
                               low_res=np.asarray(low[0:1]))



def mask_to_geometry(mask: np.ndarray, transform):
    """H×W bool -> shapely (Multi)Polygon in the transform's coordinates (4-connected regions,
    exact pixel edges), or None when the mask is empty."""
    import shapely
    from rasterio import features

    mask = np.asarray(mask, bool)
    if not mask.any():
        return None
    # all rings in one coordinate array, built into polygons by shapely in one call each (a
    # speckled mask has thousands of regions: one Python object per ring would take seconds)
    points: List = []
    ring_sizes: List[int] = []
    ring_polygon: List[int] = []
    for k, (geom, _) in enumerate(features.shapes(mask.astype(np.uint8), mask=mask,
                                                  connectivity=4, transform=transform)):
        for ring in geom["coordinates"]:       # the shell, then the holes
            points.extend(ring)
            ring_sizes.append(len(ring))
            ring_polygon.append(k)
    rings = shapely.linearrings(np.asarray(points, np.float64),
                                indices=np.repeat(np.arange(len(ring_sizes)), ring_sizes))
    polygons = shapely.polygons(rings, indices=np.asarray(ring_polygon))
    # 4-connected regions of one mask never share an edge (they would be one region), so the
    # parts meet at corners at most: the MultiPolygon is valid when each part is (checking the
    # whole, with its part-against-part tests, takes seconds for thousands of parts)
    invalid = ~shapely.is_valid(polygons)
    if invalid.any():
        polygons[invalid] = shapely.make_valid(polygons[invalid])
        return shapely.make_valid(shapely.GeometryCollection(list(polygons)))
    return polygons[0] if len(polygons) == 1 else shapely.MultiPolygon(list(polygons))
