"""Training samples for the referring prompter and their batches.

Sources: the referring benchmark readers (RRSIS-D, RefSegRS, RISBench: ``core/evaluation/
datasets``), QGIS-style labels (a raster and a polygon layer with an ``expression`` field, one
object per feature, any CRS: read by the adapter's label reader ``core.adapt.data``, which
reprojects to the raster's CRS; rasterised on a context window around the polygon), or in-memory samples (the synthetic set).

A batch stretches every image to one square side (the model stretches to its encoders' inputs
anyway) and its mask with nearest-neighbour sampling.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError

EXPRESSION_FIELD = "expression"
CONTEXT_FACTOR = 3.0            # a label's window: its bounding box grown this many times
MIN_CONTEXT_PX = 64


@dataclass
class TrainingSample:
    """One expression, its image and target mask (loaded on demand by `load`)."""

    expression: str
    image: Optional[np.ndarray] = None        # H×W×3 uint8
    mask: Optional[np.ndarray] = None         # H×W bool
    loader: Optional[Callable[[], Tuple[np.ndarray, np.ndarray]]] = field(default=None, repr=False)
    key: str = ""

    def load(self) -> Tuple[np.ndarray, np.ndarray]:
        if self.image is not None and self.mask is not None:
            return self.image, self.mask
        image, mask = self.loader()
        return image, mask


def as_rgb(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] < 3:
        raise InputError(f"Expected an RGB image, got shape {array.shape}")
    array = array[:, :, :3]
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array)


def samples_from_dataset(name: str, root: str, split: Optional[str] = None
                         ) -> List[TrainingSample]:
    """The samples of a referring benchmark split through its reader (images read lazily)."""
    from ..evaluation.datasets import get_dataset, read_array

    dataset = get_dataset(name, root, split)
    if getattr(dataset, "task", "") != "refer":
        raise InputError(f"{name} is not a referring data set (RRSIS-D, RefSegRS, RISBench)")

    def loader(sample):
        def load():
            image = as_rgb(read_array(sample.image_path))
            mask = sample.load_mask()
            if mask.shape != image.shape[:2]:
                raise InputError(f"{sample.key}: mask {mask.shape} and image {image.shape[:2]} "
                                 "differ in size")
            return image, mask
        return load

    return [TrainingSample(s.expression, loader=loader(s), key=s.key) for s in dataset]


def samples_from_labels(raster: str, labels, field_name: str = EXPRESSION_FIELD,
                        bands: Sequence[int] = (1, 2, 3)) -> List[TrainingSample]:
    """One sample per polygon of `labels` (a vector file's first layer, or the polygons a front
    end holds: ``core.adapt.data.LabelFeatures``; reprojected to the raster's CRS by the
    adapter's label reader) with a non-empty `field_name`: the raster window around it
    (CONTEXT_FACTOR × its box) and the polygon rasterised on that window."""
    import rasterio
    from rasterio.features import rasterize
    from rasterio.windows import Window, from_bounds
    from shapely.geometry import shape as to_shape

    from ..adapt.data import read_labelled_polygons

    if not os.path.isfile(raster):
        raise InputError(f"Raster '{raster}' does not exist")
    samples: List[TrainingSample] = []
    with rasterio.open(raster) as src:
        if src.crs is None:
            raise InputError(f"Raster '{raster}' has no CRS")
        full = Window(0, 0, src.width, src.height)
        for index, (text, geometry) in enumerate(read_labelled_polygons(labels, field_name,
                                                                        src.crs)):
            shape = to_shape(geometry)
            if shape.is_empty or shape.area <= 0:
                continue
            xmin, ymin, xmax, ymax = shape.bounds
            cx, cy = (xmin + xmax) / 2, (ymin + ymax) / 2
            half_w = max((xmax - xmin) * CONTEXT_FACTOR, MIN_CONTEXT_PX * abs(src.transform.a)) / 2
            half_h = max((ymax - ymin) * CONTEXT_FACTOR, MIN_CONTEXT_PX * abs(src.transform.e)) / 2
            window = from_bounds(cx - half_w, cy - half_h, cx + half_w, cy + half_h, src.transform)
            window = window.round_offsets().round_lengths().intersection(full)
            if window.width < 2 or window.height < 2:
                continue
            image = as_rgb(src.read(list(bands), window=window).transpose(1, 2, 0))
            mask = rasterize([(shape, 1)], out_shape=(int(window.height), int(window.width)),
                             transform=src.window_transform(window), fill=0,
                             dtype="uint8").astype(bool)
            if mask.any():
                samples.append(TrainingSample(text, image, mask, key=f"feature_{index}"))
    if not samples:
        raise InputError(f"No polygon of '{labels}' with an '{field_name}' overlaps '{raster}'")
    return samples


def make_batch(samples: Sequence[TrainingSample], size: int, device=None
               ) -> Tuple[torch.Tensor, torch.Tensor, List[str]]:
    """-> (images (B,3,size,size) float 0..255, masks (B,1,size,size) float 0/1, expressions)."""
    images, masks = [], []
    for sample in samples:
        image, mask = sample.load()
        pixels = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()[None]
        target = torch.from_numpy(np.asarray(mask, np.float32))[None, None]
        images.append(F.interpolate(pixels, size=(size, size), mode="bilinear",
                                    align_corners=False))
        masks.append(F.interpolate(target, size=(size, size), mode="nearest"))
    return (torch.cat(images).to(device), torch.cat(masks).to(device),
            [s.expression for s in samples])
