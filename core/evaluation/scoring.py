"""Score a predicted class raster against a reference over an area: per-class IoU and accuracy,
mIoU, mACC and aAcc (core/evaluation/metrics.py's confusion matrix, the protocol papers use).

The prediction's grid is the grid of the comparison. Both sides are read block by block, never
whole: a reference raster is warped onto the prediction's grid (nearest neighbour, in the
prediction's CRS) through a GDAL warped VRT; reference polygons (already in the prediction's CRS,
as GeoJSON-like geometries) are rasterized per block, a pixel belonging to a polygon when its
centre lies inside it.

Classes are those of the prediction: the `CLASS_i=name` tags our class rasters carry (0 is
background), or, for a raster without them, its pixel values. A reference label is matched to a
prediction class by name (case-insensitive, surrounding spaces ignored; synonyms are not
considered) or by value (class id). Reference pixels that cannot be matched to any predicted class
are not scored and are reported per label; so are reference nodata, the reference's ignore value
and pixels where the prediction has nodata.

Nothing here imports QGIS.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import rasterio
from rasterio import features, windows
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT

from ..errors import InputError, RunCancelled
from .metrics import IGNORE_INDEX, ConfusionMatrix, nanmean, percent

IGNORE = -1                # reference code of a pixel that is not scored
_UNMATCHED_BASE = -2       # reference codes -2, -3, ...: the k-th label without a predicted class
DEFAULT_IGNORE_VALUE = IGNORE_INDEX
BLOCK = 1024
MATCH_AUTO, MATCH_NAME, MATCH_ID = "auto", "name", "id"
UNCOVERED_BACKGROUND, UNCOVERED_IGNORE = "background", "ignore"
NO_LABEL = "(no class)"

Label = Union[str, int, float, None]


@dataclass
class ClassScore:
    index: int
    name: str
    iou: Optional[float]            # %, None where undefined (class in neither raster)
    accuracy: Optional[float]       # %, None where the reference has no pixel of the class
    true_positives: int
    reference_pixels: int
    predicted_pixels: int


@dataclass
class ScoreResult:
    classes: List[ClassScore]
    miou: Optional[float]
    macc: Optional[float]
    aacc: Optional[float]
    scored_pixels: int
    ignored_pixels: int             # reference nodata, ignore value, uncovered (when ignored)
    prediction_nodata: int          # reference pixels where the prediction has nodata
    unmatched: Dict[str, int]       # reference label without a predicted class -> pixels
    matching: str                   # how reference labels were matched, in words
    window: Tuple[int, int, int, int]   # col_off, row_off, width, height on the prediction grid
    confusion: ConfusionMatrix = field(repr=False, default=None)

    def to_dict(self) -> Dict:
        return {"mIoU": self.miou, "mACC": self.macc, "aAcc": self.aacc,
                "per_class": {c.name: c.iou for c in self.classes},
                "scored_pixels": self.scored_pixels, "ignored_pixels": self.ignored_pixels,
                "prediction_nodata": self.prediction_nodata, "unmatched": dict(self.unmatched),
                "matching": self.matching}


def _key(name) -> str:
    return str(name).strip().lower()


def class_names_of(dataset) -> Dict[int, str]:
    """{index: name} from `CLASS_i=name` tags (our class rasters), {} when there are none."""
    names = {}
    for tag, value in dataset.tags().items():
        if tag.upper().startswith("CLASS_") and tag[6:].isdigit():
            names[int(tag[6:])] = str(value)
    return names


@dataclass
class RasterReference:
    """A reference class raster (band 1). match: 'auto' (by name when it carries CLASS_i tags,
    else by value), 'name' or 'id'. Pixels equal to `ignore_value`, and nodata, are not scored."""

    path: str
    match: str = MATCH_AUTO
    ignore_value: Optional[float] = DEFAULT_IGNORE_VALUE


@dataclass
class PolygonReference:
    """Reference polygons as (GeoJSON-like geometry in the prediction's CRS, label) pairs; a
    label is a class name or id, None for no class. uncovered: what pixels outside every polygon
    are, 'background' (class 0) or 'ignore'. Later polygons win where polygons overlap."""

    polygons: Sequence[Tuple[dict, Label]]
    uncovered: str = UNCOVERED_BACKGROUND


class _Classes:
    """The prediction's classes and the matching of reference labels to them."""

    def __init__(self, names: Dict[int, str], count: int):
        self.names = names
        self.count = count
        self.by_name = {}
        for index, name in sorted(names.items()):
            self.by_name.setdefault(_key(name), index)
        self.unmatched: List[str] = []  # labels, in the order their codes were given

    def name(self, index: int) -> str:
        return self.names.get(index, f"class {index}")

    def _unmatched_code(self, label: str) -> int:
        if label not in self.unmatched:
            self.unmatched.append(label)
        return _UNMATCHED_BASE - self.unmatched.index(label)

    def code_for(self, label: Label, numeric_ids: bool = True) -> int:
        """Reference label -> class index, or a code of an unmatched label."""
        if label is None or (isinstance(label, float) and math.isnan(label)):
            return self._unmatched_code(NO_LABEL)
        if isinstance(label, (int, np.integer)) or (isinstance(label, float) and label.is_integer()):
            value = int(label)
            if 0 <= value < self.count and (numeric_ids or value in self.names):
                return value
            return self._unmatched_code(str(value))
        if isinstance(label, float):
            return self._unmatched_code(f"{label:g}")
        text = str(label).strip()
        if _key(text) in self.by_name:
            return self.by_name[_key(text)]
        if text.lstrip("-").isdigit() and not self.by_name:
            return self.code_for(int(text))
        if text.isdigit() and int(text) in self.names:  # an id written as text
            return int(text)
        return self._unmatched_code(text or NO_LABEL)


def _prediction_classes(src) -> _Classes:
    names = class_names_of(src)
    if names:
        names.setdefault(0, "background")
        return _Classes(names, max(names) + 1)
    if src.dtypes[0] not in ("uint8", "int8", "uint16", "int16", "uint32", "int32"):
        raise InputError(f"The predicted raster has pixel type {src.dtypes[0]} and no class names; "
                         "a class raster holds whole class numbers")
    nodata = src.nodata
    count = 255 if src.dtypes[0] in ("uint8", "int8") else 1024
    if nodata is not None and 0 < nodata < count:
        count = int(nodata)
    return _Classes({}, count)


def _area_window(src, extent) -> windows.Window:
    full = windows.Window(0, 0, src.width, src.height)
    if extent is None:
        return full
    xmin, ymin, xmax, ymax = extent
    if not (xmax > xmin and ymax > ymin):
        raise InputError(f"The extent {tuple(extent)} is empty")
    area = windows.from_bounds(xmin, ymin, xmax, ymax, transform=src.transform)
    # The pixels whose centre lies in the extent (at least the one under its centre).
    c0, r0 = area.col_off, area.row_off
    c1, r1 = c0 + area.width, r0 + area.height
    col0, row0 = math.ceil(c0 - 0.5 - 1e-9), math.ceil(r0 - 0.5 - 1e-9)
    col1, row1 = math.floor(c1 - 0.5 + 1e-9) + 1, math.floor(r1 - 0.5 + 1e-9) + 1
    if col1 <= col0:
        col0 = math.floor((c0 + c1) / 2)
        col1 = col0 + 1
    if row1 <= row0:
        row0 = math.floor((r0 + r1) / 2)
        row1 = row0 + 1
    col0, row0 = max(col0, 0), max(row0, 0)
    col1, row1 = min(col1, src.width), min(row1, src.height)
    if col1 <= col0 or row1 <= row0:
        raise InputError("The extent does not overlap the predicted raster")
    return windows.Window(col0, row0, col1 - col0, row1 - row0)


def _blocks(area: windows.Window, block: int) -> Iterable[windows.Window]:
    col0, row0 = int(area.col_off), int(area.row_off)
    width, height = int(area.width), int(area.height)
    for row in range(row0, row0 + height, block):
        for col in range(col0, col0 + width, block):
            yield windows.Window(col, row, min(block, col0 + width - col), min(block, row0 + height - row))


class _RasterSource:
    """Reads a reference raster on the prediction's grid and turns values into class codes."""

    def __init__(self, reference: RasterReference, pred, classes: _Classes):
        try:
            self.src = rasterio.open(reference.path)
        except rasterio.errors.RasterioIOError as exc:
            raise InputError(f"Cannot open the reference raster '{reference.path}': {exc}") from None
        src = self.src
        if src.crs is None:
            src.close()
            raise InputError(f"The reference raster '{reference.path}' has no coordinate reference "
                             "system")
        self.same_grid = (src.crs == pred.crs and src.transform == pred.transform
                          and (src.width, src.height) == (pred.width, pred.height))
        self.vrt = None
        if not self.same_grid:
            self.vrt = WarpedVRT(src, crs=pred.crs, transform=pred.transform, width=pred.width,
                                 height=pred.height, resampling=Resampling.nearest, add_alpha=True)
        self.ignore_value = reference.ignore_value
        match = reference.match
        ref_names = class_names_of(src)
        if match not in (MATCH_AUTO, MATCH_NAME, MATCH_ID):
            raise InputError(f"Unknown matching '{match}'; choose auto, name or id")
        if match == MATCH_NAME and not ref_names:
            raise InputError("The reference raster has no class names (CLASS_i tags) to match by "
                             "name; match by value instead")
        if match == MATCH_NAME or (match == MATCH_AUTO and ref_names):
            if not classes.names:
                raise InputError("The predicted raster has no class names (CLASS_i tags), so the "
                                 "reference cannot be matched by name; match by value instead")
            ref_names.setdefault(0, "background")
            self.matching = "reference raster values matched by class name (CLASS_i tags)"
            self.lookup = {value: classes.code_for(name) for value, name in ref_names.items()}
            self.by_name = True
        else:
            self.matching = "reference raster values matched by class id"
            self.lookup = {}
            self.by_name = False
        self.classes = classes

    def codes(self, window: windows.Window) -> np.ndarray:
        if self.same_grid:
            values = self.src.read(1, window=window)
            valid = self.src.read_masks(1, window=window) > 0
        else:
            values = self.vrt.read(1, window=window)
            valid = self.vrt.read(self.vrt.count, window=window) > 0
        codes = np.full(values.shape, IGNORE, np.int64)
        if self.ignore_value is not None:
            valid &= values != self.ignore_value
        if np.issubdtype(values.dtype, np.floating):
            whole = np.isfinite(values) & (values == np.round(values))
            if np.any(valid & ~whole):
                raise InputError("The reference raster holds values that are not whole class "
                                 "numbers; it must be a class raster")
        for value in np.unique(values[valid]):
            value = int(value)
            if self.by_name:
                code = self.lookup.get(value)
                if code is None:
                    code = self.classes.code_for(f"value {value}")
                    self.lookup[value] = code
            else:
                code = self.classes.code_for(value)
            codes[valid & (values == value)] = code
        return codes

    def close(self):
        if self.vrt is not None:
            self.vrt.close()
        self.src.close()


def _bounds_of(geometry: dict) -> Tuple[float, float, float, float]:
    coordinates = []

    def walk(node):
        if isinstance(node, (list, tuple)) and node and isinstance(node[0], (int, float)):
            coordinates.append(node[:2])
        elif isinstance(node, (list, tuple)):
            for child in node:
                walk(child)

    if geometry.get("type") == "GeometryCollection":
        boxes = [_bounds_of(g) for g in geometry.get("geometries", [])]
        boxes = [b for b in boxes if b is not None]
        if not boxes:
            return None
        return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
                max(b[3] for b in boxes))
    walk(geometry.get("coordinates", []))
    if not coordinates:
        return None
    xy = np.asarray(coordinates, np.float64)
    return float(xy[:, 0].min()), float(xy[:, 1].min()), float(xy[:, 0].max()), float(xy[:, 1].max())


class _PolygonSource:
    """Rasterizes reference polygons per block, in their order (later ones win)."""

    def __init__(self, reference: PolygonReference, pred, classes: _Classes):
        if reference.uncovered not in (UNCOVERED_BACKGROUND, UNCOVERED_IGNORE):
            raise InputError(f"Unknown choice '{reference.uncovered}' for uncovered pixels; "
                             "choose background or ignore")
        self.transform = pred.transform
        self.fill = 0 if reference.uncovered == UNCOVERED_BACKGROUND else IGNORE
        labels = [label for _geometry, label in reference.polygons]
        textual = any(isinstance(label, str) for label in labels)
        if textual and not classes.names and any(
                isinstance(label, str) and not label.strip().lstrip("-").isdigit() for label in labels):
            raise InputError("The predicted raster has no class names (CLASS_i tags), so reference "
                             "polygons cannot be matched by class name; use a field of class ids")
        self.shapes, boxes = [], []
        for geometry, label in reference.polygons:
            box = _bounds_of(geometry) if geometry else None
            if box is None:
                continue
            self.shapes.append((geometry, classes.code_for(label)))
            boxes.append(box)
        self.boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        self.matching = ("reference polygons matched by class name" if textual else
                         "reference polygons matched by class id")
        self.uncovered = reference.uncovered

    def codes(self, window: windows.Window) -> np.ndarray:
        shape = (int(window.height), int(window.width))
        transform = windows.transform(window, self.transform)
        left, top = transform.c, transform.f
        right, bottom = left + transform.a * shape[1], top + transform.e * shape[0]
        xmin, xmax = min(left, right), max(left, right)
        ymin, ymax = min(top, bottom), max(top, bottom)
        b = self.boxes
        hits = np.nonzero((b[:, 0] <= xmax) & (b[:, 2] >= xmin) & (b[:, 1] <= ymax)
                          & (b[:, 3] >= ymin))[0] if len(b) else []
        if len(hits) == 0:
            return np.full(shape, self.fill, np.int64)
        out = features.rasterize(((self.shapes[i][0], self.shapes[i][1]) for i in hits),
                                 out_shape=shape, transform=transform, fill=self.fill,
                                 dtype="int32", all_touched=False)
        return out.astype(np.int64)

    def close(self):
        pass


def score_classification(prediction: str, reference: Union[RasterReference, PolygonReference],
                         extent: Optional[Sequence[float]] = None, block: int = BLOCK,
                         progress: Optional[Callable[[float, str], None]] = None,
                         cancelled: Optional[Callable[[], bool]] = None) -> ScoreResult:
    """Score the class raster `prediction` against `reference` over `extent` (xmin, ymin, xmax,
    ymax in the prediction's CRS; None: the whole prediction)."""
    try:
        pred = rasterio.open(prediction)
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"Cannot open the predicted raster '{prediction}': {exc}") from None
    with pred:
        if pred.crs is None:
            raise InputError(f"The predicted raster '{prediction}' has no coordinate reference "
                             "system")
        classes = _prediction_classes(pred)
        area = _area_window(pred, extent)
        if isinstance(reference, RasterReference):
            source = _RasterSource(reference, pred, classes)
        elif isinstance(reference, PolygonReference):
            source = _PolygonSource(reference, pred, classes)
        else:
            raise InputError("The reference must be a raster or polygons")
        confusion = ConfusionMatrix(classes.count, ignore_index=IGNORE)
        unmatched_pixels: Dict[int, int] = {}
        ignored = prediction_nodata = 0
        blocks = list(_blocks(area, block))
        try:
            for done, window in enumerate(blocks, start=1):
                if cancelled is not None and cancelled():
                    raise RunCancelled()
                predicted = pred.read(1, window=window).astype(np.int64)
                pred_valid = pred.read_masks(1, window=window) > 0
                codes = source.codes(window)
                ignored += int(np.count_nonzero(codes == IGNORE))
                for code in np.unique(codes[codes <= _UNMATCHED_BASE]):
                    unmatched_pixels[int(code)] = unmatched_pixels.get(int(code), 0) + int(
                        np.count_nonzero(codes == code))
                scored = codes >= 0
                prediction_nodata += int(np.count_nonzero(scored & ~pred_valid))
                codes[~scored | ~pred_valid] = IGNORE
                confusion.update(codes, predicted)
                if progress is not None:
                    progress(done / len(blocks), f"Scored block {done}/{len(blocks)}")
        finally:
            source.close()

    unmatched = {classes.unmatched[_UNMATCHED_BASE - code]: count
                 for code, count in sorted(unmatched_pixels.items(), reverse=True)}
    return _result(confusion, classes, ignored, prediction_nodata, unmatched, source.matching,
                   area)


def _result(confusion, classes, ignored, prediction_nodata, unmatched, matching, area):
    iou, acc = confusion.iou(), confusion.accuracy()
    tp, gt, pr = confusion.true_positives, confusion.gt_pixels, confusion.pred_pixels
    indices = sorted(classes.names) if classes.names else [
        i for i in range(classes.count) if gt[i] or pr[i]]
    rows = [ClassScore(i, classes.name(i), percent(iou[i]), percent(acc[i]), int(tp[i]),
                       int(gt[i]), int(pr[i])) for i in indices]
    kept = np.asarray(indices, np.int64)
    total = int(gt.sum())
    return ScoreResult(
        classes=rows, miou=percent(nanmean(iou[kept])), macc=percent(nanmean(acc[kept])),
        aacc=percent(tp.sum() / total) if total else None, scored_pixels=total,
        ignored_pixels=ignored, prediction_nodata=prediction_nodata, unmatched=unmatched,
        matching=matching, window=(int(area.col_off), int(area.row_off), int(area.width),
                                   int(area.height)),
        confusion=confusion)
