"""Predictors: what the evaluation loops score, and the engine wrapped as one.

A predictor is a plain callable (the loops in loops.py call it once per sample):

* OVSS: ``predict(image_path) -> H x W class indices`` in the order of ``dataset.classes``;
* referring: ``predict(image_path, expression) -> H x W mask`` (non-zero = target).

A front end that runs a method gets its predictor from a ``PredictorFactory`` it is handed
explicitly; `engine_predictor` builds ours. The model code is imported only when a predictor is
built, so the loops and the command line load without torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, Union

import numpy as np

from ..errors import InputError
from .datasets import IGNORE_INDEX


class OvssPredictor(Protocol):
    def __call__(self, image_path: str) -> np.ndarray: ...


class ReferPredictor(Protocol):
    def __call__(self, image_path: str, expression: str) -> np.ndarray: ...


Predictor = Union[OvssPredictor, ReferPredictor]


@dataclass(frozen=True)
class EngineSettings:
    """The engine's models and options for an evaluation run (the front end fills every field)."""

    clip_model: str
    clip_weights: str
    device: str
    long_side: Optional[int] = None          # OVSS: None the data set's protocol, 0 keep the size
    sam_model: Optional[str] = None          # referring only
    sam_weights: Optional[str] = None


class PredictorFactory(Protocol):
    """Builds the predictor of ``task`` ("ovss" or "refer") for an opened data set."""

    def __call__(self, task: str, dataset, settings: EngineSettings) -> Predictor: ...


def engine_to_dataset_labels(class_map, background_index: int, num_classes: int) -> np.ndarray:
    """The engine's class raster (0 = not sure enough -> background, 1..K = the K prompt
    classes in order, 255 = no data) as the data set's class indices, when the engine was
    prompted with ``dataset.prompt`` and ``dataset.threshold``: k -> k - 1, 0 -> the data
    set's background index, 255 stays "no class"."""
    class_map = np.asarray(class_map)
    if not 0 <= background_index < num_classes:
        raise InputError(f"background index {background_index} is not a class index "
                         f"0..{num_classes - 1}")
    out = np.full(class_map.shape, IGNORE_INDEX, np.uint8)
    classes = (class_map >= 1) & (class_map <= num_classes)
    out[classes] = (class_map[classes] - 1).astype(np.uint8)
    out[class_map == 0] = background_index
    return out


def engine_predictor(task: str, dataset, settings: EngineSettings) -> Predictor:
    """Our engine as a `PredictorFactory`: dense CLIP for OVSS, the referring pipeline else."""
    if task == "refer":
        return refer_predictor(settings)
    return ovss_predictor(dataset, settings)


def _read_rgb(image_path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(image_path) as img:
        return np.asarray(img.convert("RGB"))


def ovss_predictor(dataset, settings: EngineSettings) -> OvssPredictor:
    """predict(image_path) -> the data set's class indices (the benchmark protocol of
    core/array_segment.py, with the data set's class texts, threshold and pinned geometry).

    `predict.settings` says what the engine used, for the report beside the pinned protocol."""
    from ..array_segment import segment_array
    from ..models.shared import dense_clip_scorer

    scorer = dense_clip_scorer(settings.clip_model, settings.clip_weights, settings.device)
    protocol = dataset.protocol
    long_side = protocol["long_side"] if settings.long_side is None else settings.long_side
    window, stride, blend = protocol["window"], protocol["stride"], protocol["blend"]

    def predict(image_path: str) -> np.ndarray:
        class_map = segment_array(_read_rgb(image_path), dataset.prompt, scorer,
                                  threshold=dataset.threshold, long_side=long_side or None,
                                  window=window, stride=stride, blend=blend)
        return engine_to_dataset_labels(class_map, dataset.background_index, dataset.num_classes)

    predict.settings = {"long_side": long_side, "window": window, "stride": stride, "blend": blend,
                        "prob_thd": dataset.threshold, "clip_model": settings.clip_model,
                        "clip_weights": settings.clip_weights}
    return predict


def refer_predictor(settings: EngineSettings) -> ReferPredictor:
    """predict(image_path, expression) -> mask of every object the expression refers to.

    One ReferringSession per image (its SAM embedding and CLIP features), reused while the data
    set's expressions for the same image follow each other."""
    from ..models.shared import dense_clip_scorer, sam_model
    from ..refer.localize import Localizer
    from ..refer.pipeline import ReferringSession

    sam = sam_model(settings.sam_model, settings.sam_weights, settings.device)
    localizer = Localizer(dense_clip_scorer(settings.clip_model, settings.clip_weights,
                                            settings.device))
    current = {}

    def predict(image_path: str, expression: str) -> np.ndarray:
        if current.get("path") != image_path:
            current.update(path=image_path,
                           session=ReferringSession(_read_rgb(image_path), sam, localizer))
        session = current["session"]
        mask = np.zeros((session.height, session.width), bool)
        for result in session.query(expression):
            mask |= result.mask
        return mask

    return predict
