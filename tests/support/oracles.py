"""Hand-made stand-ins for the models whose right answers are known: objects are uniform colour
regions, so a scorer, localizer or SAM predictor can recognise them by colour."""
from __future__ import annotations

import threading
import time

import numpy as np

from .rasters import FIELD, ROAD, SCENE_COLOURS, WATER

# The synthetic scene's prompt: its four classes with synonyms, and the background as 'field'.
SCENE_CLASSES = "building,roof; road,street; water; tree,forest; field"

# Category → colour known to the referring localizer stand-in.
CATEGORY_COLOURS = {"water": WATER, "road": ROAD}


class ColourOracleScorer:
    """Knows each class by its colour: per window, token logits = closeness of the token's mean
    colour to the class colour (a query 'roof' means the building colour, too)."""

    logit_scale = 50.0

    def __init__(self, colours=None, patch=8):
        self.colours = colours or SCENE_COLOURS
        self.patch = patch
        self.queries = []
        self.calls = 0
        self.windows = 0

    def set_queries(self, queries):
        aliases = {"roof": "building", "street": "road", "forest": "tree", "river": "water"}
        self.queries = [aliases.get(q, q) for q in queries]

    def score_windows(self, images):
        self.calls += 1
        self.windows += len(images)
        b, _, h, w = images.shape
        p = self.patch
        pooled = images.reshape(b, 3, h // p, p, w // p, p).astype(np.float32).mean(axis=(3, 5))
        logits = []
        for query in self.queries:
            colour = np.array(self.colours.get(query, (255, 0, 255)), np.float32)[None, :, None, None]
            distance = np.sqrt(((pooled - colour) ** 2).sum(axis=1))
            logits.append(1.0 - distance / 100.0)
        return np.stack(logits, axis=1).astype(np.float32)


def scene_oracle() -> ColourOracleScorer:
    """The colour oracle that also knows the scene's background colour as 'field'."""
    colours = dict(ColourOracleScorer().colours, field=FIELD)
    return ColourOracleScorer(colours)


def segment_scene(path, out_dir, scorer=None, **kw):
    """run_segmentation of `path` into out_dir/out.gpkg and out.tif with the scene's classes and
    the scene oracle (threshold 0); keywords override the request's fields."""
    from drseg.core.segment import SegmentationRequest, run_segmentation

    kw.setdefault("out_vector", str(out_dir / "out.gpkg"))
    kw.setdefault("out_raster", str(out_dir / "out.tif"))
    kw.setdefault("threshold", 0.0)
    request = SegmentationRequest(raster=path, classes=kw.pop("classes", SCENE_CLASSES), **kw)
    return run_segmentation(request, scorer=scorer or scene_oracle())


class ColourScorer:
    """Engine window scorer whose logits are the image's colour channels.

    Queries map to channels (building/roof: red, tree: green, water: blue), so the red half of
    `write_halves_raster` comes out as 'building' and the blue half as 'water', exactly.
    `delay` slows every call down; `started` is set on the first call (for cancel tests).
    """

    logit_scale = 50.0
    CHANNEL = {"building": 0, "roof": 0, "house": 0, "tree": 1, "forest": 1, "water": 2}

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.calls = 0
        self.queries = []
        self.started = threading.Event()

    def set_queries(self, queries):
        self.queries = list(queries)

    def score_windows(self, images):
        self.calls += 1
        self.started.set()
        if self.delay:
            time.sleep(self.delay)
        b, _, s, _ = images.shape
        patches = images.reshape(b, 3, s // 16, 16, s // 16, 16).mean(axis=(3, 5)) / 255.0
        logits = np.stack([patches[:, self.CHANNEL.get(q, 1)] for q in self.queries], axis=1)
        return logits.astype(np.float32)


class FakeModels:
    """Stands in for core.segment.build_scorer: records each request and returns a ColourScorer,
    deciding the method like the engine does ('auto': DR-Seg when DINO weights were given).
    `note` is the engine note it reports."""

    def __init__(self, note: str = "", delay: float = 0.0):
        self.requests = []
        self.note = note
        self.delay = delay      # seconds per scorer call (cancel tests)

    def __call__(self, request, monitor):
        self.requests.append(request)
        scorer = ColourScorer(self.delay)
        scorer.device = "cpu"
        method = request.method
        if method == "auto":
            method = "drseg" if request.dino_weights else "clip"
        if method == "drseg" and not request.dino_weights:
            from drseg.core.errors import InputError

            raise InputError("DR-Seg needs DINO weights (fake engine)")
        return scorer, method, self.note


class ColourLocalizer:
    """Activation = closeness of each pixel to the colour of the target's category."""

    def __init__(self):
        self.encodes = 0

    def encode(self, image, valid):
        self.encodes += 1
        return {"image": image.astype(np.float32)}

    def _map(self, features, category):
        colour = np.array(CATEGORY_COLOURS.get(category, (255, 0, 255)), np.float32)
        distance = np.sqrt(((features["image"] - colour) ** 2).sum(axis=-1))
        return np.clip(1.0 - distance / 150.0, 0.0, 1.0)

    def localize(self, features, parsed):
        return self._map(features, parsed.target.category)

    def phrase_activation(self, features, phrase):
        return self._map(features, phrase.category)


class ColourPredictor:
    """SAM stand-in: the uniform-colour region under the first positive point (or the box's
    centre); the three 'multimask' outputs are that region twice and a dilated version."""

    def __init__(self):
        self.set_calls = 0
        self.calls = []

    def set_image(self, image):
        self.image = np.asarray(image)
        self.set_calls += 1

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None,
                multimask_output=True):
        from drseg.core.refer.prompts import dilate, label_components

        self.calls.append(dict(points=point_coords, labels=point_labels, box=box,
                               mask_input=mask_input, multimask=multimask_output))
        h, w = self.image.shape[:2]
        if point_coords is not None and (np.asarray(point_labels) == 1).any():
            x, y = np.asarray(point_coords)[np.asarray(point_labels) == 1][0]
        elif box is not None:
            x, y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        else:
            x, y = w / 2, h / 2
        x, y = int(round(x)), int(round(y))
        same = np.all(self.image == self.image[y, x], axis=-1)
        labels, _ = label_components(same, connectivity=4)
        region = labels == labels[y, x]
        masks = np.stack([region, region, dilate(region, 3)])
        low = np.zeros((3, 256, 256), np.float32)
        if not multimask_output:
            return masks[:1], np.array([0.97]), low[:1]
        return masks, np.array([0.95, 0.9, 0.6]), low


def stub_models():
    """A (SAM stand-in, localizer stand-in) pair of the colour oracles."""
    return ColourPredictor(), ColourLocalizer()


def iou(a, b):
    """Intersection over union of two boolean masks (1 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return np.logical_and(a, b).sum() / union if union else 1.0
