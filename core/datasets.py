"""Benchmark readers: the standard OVSS and referring-segmentation sets in their usual layouts.

Each data set is described by an editable JSON file in ``core/data/datasets/`` (or any JSON file
given by path): its class list with the synonyms DR-Seg's class text uses, background and ignore
index, ``prob_thd``, palette of colour-coded labels, and the folder layouts it is found in. A
layout says where the images are (globs relative to the root, ``{split}`` / ``{Split}`` filled in),
how a label path follows from an image path, which images belong to a split (a folder, a list
file, or tile ids) and how raw label values become class indices:

* ``"index_map": "identity"``       raw v -> v for 0 <= v < classes, everything else ignored;
* ``"index_map": {"shift": -1}``    mmseg's reduce_zero_label: raw 0 ignored, v -> v - 1;
* ``"index_map": {"values": {"1": 0, ...}}`` an explicit table (unlisted values ignored);
  any form may add ``"ignore_values": [...]`` for raw values known to mean "ignore";
* ``"colors": true``                RGB labels are decoded with the set's ``palette``; colours not
  in it become ``unmatched_color`` ("ignore" or a class index).

Decoded labels are ``uint8`` class indices with 255 (``IGNORE_INDEX``) where a pixel is not
scored. Values or colours a layout does not know are counted so the evaluation can warn that the
files may use another encoding.

Referring sets: RRSIS-D (REFER pickle ``refs(unc).p`` + COCO ``instances.json`` with RLE masks,
decoded here without pycocotools; the pickle is read by an unpickler that only builds builtin
containers), RefSegRS and RISBench (``output_phrase_<split>.txt`` lines ``<id> <sentence>``).

Nothing is read until asked for: a data set lists its files when opened, and each sample loads
its label or mask when ``load_label()`` / ``load_mask()`` is called.
"""
from __future__ import annotations

import glob
import io
import json
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import InputError
from .metrics import REFER_METRIC_DEFINITIONS
from .protocol import (BLENDS, PROTOCOL_BLEND, PROTOCOL_LONG_SIDE, PROTOCOL_STEPS, PROTOCOL_STRIDE,
                       PROTOCOL_WINDOW)

IGNORE_INDEX = 255
DATA_DIR = Path(__file__).resolve().parent / "data" / "datasets"
LABEL_READ_EXTS = (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg", ".gif")
_TIFF_EXTS = (".tif", ".tiff")
_MAX_LISTED = 3
_COLOR_BLOCK = 1 << 21  # pixels decoded per block of rows


# ------------------------------------------------------------------------------------------
# Reading label and mask files
# ------------------------------------------------------------------------------------------

def read_array(path: Union[str, Path]) -> np.ndarray:
    """A label/mask file as a 2-D array (single band, palette indices) or H x W x 3 (RGB)."""
    path = str(path)
    if not os.path.isfile(path):
        raise InputError(f"File not found: {path}")
    if path.lower().endswith(_TIFF_EXTS):
        return _read_tiff(path)
    from PIL import Image

    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode in ("RGBA", "LA", "PA"):
                image = image.convert("RGB" if mode == "RGBA" else "L")
            elif mode == "CMYK" or mode.startswith("YCbCr"):
                image = image.convert("RGB")
            array = np.asarray(image)
    except (OSError, ValueError) as exc:
        raise InputError(f"Cannot read {path}: {exc}")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    return array


def _read_tiff(path: str) -> np.ndarray:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                count = src.count
                data = src.read(list(range(1, min(count, 3) + 1)) if count >= 3 else 1)
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"Cannot read {path}: {exc}")
    if data.ndim == 3:
        data = np.moveaxis(data, 0, -1)
    return data


def binary_mask(array: np.ndarray) -> np.ndarray:
    """Foreground of a referring mask file: any non-zero pixel (in any band)."""
    array = np.asarray(array)
    if array.ndim == 3:
        return np.any(array != 0, axis=-1)
    return array != 0


# ------------------------------------------------------------------------------------------
# Raw label values -> class indices
# ------------------------------------------------------------------------------------------

def _pack_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


class LabelDecoder:
    """Turns a label file's raw values (or RGB colours) into uint8 class indices, 255 = ignored."""

    def __init__(self, num_classes: int, index_map=None, palette: Optional[Sequence[dict]] = None,
                 unmatched_color: Union[str, int] = "ignore", where: str = "dataset"):
        if not 1 <= num_classes <= 255:
            raise InputError(f"{where}: between 1 and 255 classes are supported, got {num_classes}")
        self.num_classes = num_classes
        self.where = where
        self.index_map = index_map
        self._lut, self._known = (self._build_lut(index_map) if index_map is not None
                                  else (None, None))
        self._palette = self._build_palette(palette) if palette else None
        self._unmatched = self._class_or_ignore(unmatched_color, "unmatched_color")

    # set-up ------------------------------------------------------------------------------
    def _class_or_ignore(self, value, what) -> int:
        if value is None or value == "ignore" or value == IGNORE_INDEX:
            return IGNORE_INDEX
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < self.num_classes:
            raise InputError(f"{self.where}: {what} must be a class index 0..{self.num_classes - 1} "
                             f"or \"ignore\", got {value!r}")
        return value

    def _build_lut(self, spec) -> Tuple[np.ndarray, np.ndarray]:
        n = self.num_classes
        size = 1 << 16
        lut = np.full(size, IGNORE_INDEX, np.uint8)
        known = np.zeros(size, bool)
        extra_ignored: Sequence[int] = ()
        if isinstance(spec, dict):
            extra_ignored = spec.get("ignore_values", ())
        if spec == "identity" or (isinstance(spec, dict) and spec.get("identity")):
            lut[:n] = np.arange(n, dtype=np.uint8)
            known[:n] = True
            known[IGNORE_INDEX] = True
        elif isinstance(spec, dict) and "shift" in spec:
            shift = spec["shift"]
            if isinstance(shift, bool) or not isinstance(shift, int):
                raise InputError(f"{self.where}: index_map shift must be an integer, got {shift!r}")
            raw = np.arange(size)
            shifted = raw + shift
            ok = (shifted >= 0) & (shifted < n)
            lut[ok] = shifted[ok].astype(np.uint8)
            known[ok] = True
            known[(shifted < 0)] = True          # e.g. raw 0 = no-data under reduce_zero_label
        elif isinstance(spec, dict) and "values" in spec:
            values = spec["values"]
            if not isinstance(values, dict) or not values:
                raise InputError(f"{self.where}: index_map values must be an object "
                                 "{\"raw value\": class index}")
            for key, target in values.items():
                try:
                    raw_value = int(key)
                except (TypeError, ValueError):
                    raise InputError(f"{self.where}: index_map key {key!r} is not an integer")
                if not 0 <= raw_value < size:
                    raise InputError(f"{self.where}: raw label value {raw_value} is out of range")
                lut[raw_value] = self._class_or_ignore(target, f"index_map value for {key}")
                known[raw_value] = True
        else:
            raise InputError(f"{self.where}: index_map must be \"identity\", {{\"shift\": N}} or "
                             f"{{\"values\": {{...}}}}, got {spec!r}")
        for value in extra_ignored:
            if not isinstance(value, int) or not 0 <= value < size:
                raise InputError(f"{self.where}: ignore_values must be integers, got {value!r}")
            lut[value] = IGNORE_INDEX
            known[value] = True
        return lut, known

    def _build_palette(self, palette) -> Tuple[np.ndarray, np.ndarray]:
        keys, values = [], []
        for entry in palette:
            try:
                r, g, b = (int(c) for c in entry["color"])
                target = entry["class"]
            except (KeyError, TypeError, ValueError):
                raise InputError(f"{self.where}: palette entries must look like "
                                 f"{{\"color\": [r, g, b], \"class\": index}}, got {entry!r}")
            if not all(0 <= c <= 255 for c in (r, g, b)):
                raise InputError(f"{self.where}: palette colour {entry['color']} is not 0..255")
            key = (r << 16) | (g << 8) | b
            if key in keys:
                raise InputError(f"{self.where}: palette colour {entry['color']} is listed twice")
            keys.append(key)
            values.append(self._class_or_ignore(target, f"palette class of {entry['color']}"))
        order = np.argsort(keys)
        return np.asarray(keys, np.int64)[order], np.asarray(values, np.uint8)[order]

    # decoding -----------------------------------------------------------------------------
    @property
    def accepts_colors(self) -> bool:
        return self._palette is not None

    @property
    def accepts_indices(self) -> bool:
        return self._lut is not None

    def decode(self, raw: np.ndarray, stats: Optional[Dict] = None, source: str = "label") -> np.ndarray:
        raw = np.asarray(raw)
        if raw.ndim == 3 and raw.shape[-1] == 1:
            raw = raw[..., 0]
        if raw.ndim == 3 and raw.shape[-1] >= 3:
            rgb = raw[..., :3]
            if self._palette is not None:
                return self._decode_colors(rgb, stats)
            if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
                raw = rgb[..., 0]                # a grey label saved as RGB
            else:
                raise InputError(f"{source} is an RGB image but {self.where} has no palette to "
                                 "decode colours; give class indices in a single band, or add a "
                                 "\"palette\" to the data set's JSON")
        if raw.ndim != 2:
            raise InputError(f"{source} has shape {raw.shape}; expected one band of class values "
                             "or an RGB colour-coded image")
        if self._lut is None:
            raise InputError(f"{source} has a single band but {self.where} expects RGB "
                             "colour-coded labels (see its palette)")
        return self._decode_indices(raw, stats)

    def _decode_indices(self, raw: np.ndarray, stats: Optional[Dict]) -> np.ndarray:
        if raw.dtype == np.uint8 or raw.dtype == np.uint16:
            out = self._lut[raw]                 # every uint8/uint16 value is inside the table
            unknown = ~self._known[raw] if stats is not None else None
            values = raw
        else:
            if raw.dtype.kind == "f":
                if not np.all(np.isfinite(raw)) or not np.all(raw == np.round(raw)):
                    raise InputError(f"{self.where}: label values must be integers")
            if raw.dtype.kind not in "fiu":
                raise InputError(f"{self.where}: label values must be numbers, got {raw.dtype}")
            values = raw.astype(np.int64)
            inside = (values >= 0) & (values < self._lut.size)
            safe = np.where(inside, values, 0)
            out = np.where(inside, self._lut[safe], IGNORE_INDEX).astype(np.uint8)
            unknown = (~inside | ~self._known[safe]) if stats is not None else None
        if unknown is not None and unknown.any():
            found, counts = np.unique(values[unknown], return_counts=True)
            bucket = stats.setdefault("values", {})
            for v, c in zip(found.tolist(), counts.tolist()):
                bucket[v] = bucket.get(v, 0) + c
        return out

    def _decode_colors(self, rgb: np.ndarray, stats: Optional[Dict]) -> np.ndarray:
        keys, values = self._palette
        out = np.empty(rgb.shape[:2], np.uint8)
        rows = max(1, _COLOR_BLOCK // max(1, rgb.shape[1]))   # bounded memory on huge tiles
        for top in range(0, rgb.shape[0], rows):
            packed = _pack_rgb(rgb[top:top + rows])
            pos = np.clip(np.searchsorted(keys, packed), 0, keys.size - 1)
            match = keys[pos] == packed
            out[top:top + rows] = np.where(match, values[pos], self._unmatched)
            if stats is not None and not match.all():
                colours, counts = np.unique(packed[~match], return_counts=True)
                bucket = stats.setdefault("colors", {})
                for v, c in zip(colours.tolist(), counts.tolist()):
                    key = ((v >> 16) & 255, (v >> 8) & 255, v & 255)
                    bucket[key] = bucket.get(key, 0) + c
        return out


def describe_unexpected(stats: Dict, limit: int = 8) -> List[str]:
    """Human-readable lines for the unknown raw values / colours a decoder counted."""
    lines = []
    values = stats.get("values") or {}
    if values:
        listed = ", ".join(f"{v} ({c} px)" for v, c in sorted(values.items())[:limit])
        more = "" if len(values) <= limit else f" and {len(values) - limit} more"
        lines.append(f"label values the layout does not define: {listed}{more}")
    colors = stats.get("colors") or {}
    if colors:
        top = sorted(colors.items(), key=lambda kv: -kv[1])[:limit]
        listed = ", ".join(f"{list(k)} ({c} px)" for k, c in top)
        more = "" if len(colors) <= limit else f" and {len(colors) - limit} more"
        lines.append(f"label colours not in the palette: {listed}{more}")
    return lines


# ------------------------------------------------------------------------------------------
# Data set descriptions (JSON)
# ------------------------------------------------------------------------------------------

def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def _load_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            spec = json.load(handle)
    except OSError as exc:
        raise InputError(f"Cannot read data set description {path}: {exc}")
    except json.JSONDecodeError as exc:
        raise InputError(f"Data set description {path} is not valid JSON: {exc}")
    if not isinstance(spec, dict) or "name" not in spec or spec.get("task") not in ("ovss", "refer"):
        raise InputError(f"Data set description {path} needs a \"name\" and a \"task\" of "
                         "\"ovss\" or \"refer\"")
    spec["_path"] = str(path)
    return spec


def _builtin_specs() -> Dict[str, dict]:
    specs = {}
    for path in sorted(DATA_DIR.glob("*.json")):
        spec = _load_json(path)
        specs[spec["name"]] = spec
    return specs


def list_datasets(task: Optional[str] = None) -> List[str]:
    """Names of the built-in data sets (``task`` "ovss" or "refer" to filter)."""
    return [name for name, spec in _builtin_specs().items() if task is None or spec["task"] == task]


def dataset_spec(name: str) -> dict:
    """The JSON description of a data set by name or alias (any case), or by JSON file path."""
    if str(name).lower().endswith(".json"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise InputError(f"Data set description file not found: {path}")
        return _load_json(path)
    wanted = _normalise(name)
    specs = _builtin_specs()
    for spec in specs.values():
        names = [spec["name"]] + list(spec.get("aliases", []))
        if wanted in (_normalise(n) for n in names):
            return spec
    raise InputError(f"Unknown data set '{name}'. Known: {', '.join(specs)} "
                     "(or give the path of a data set JSON file)")


# ------------------------------------------------------------------------------------------
# OVSS data sets
# ------------------------------------------------------------------------------------------

@dataclass
class OvssSample:
    """One image and its ground truth; the label is read only by ``load_label``."""

    key: str                 # label path relative to the root, without extension
    image_path: str
    label_path: str
    label_relpath: str       # label path relative to the root, with extension
    decoder: LabelDecoder = field(repr=False)

    def load_label(self, stats: Optional[Dict] = None) -> np.ndarray:
        return self.decoder.decode(read_array(self.label_path), stats, source=self.label_path)


class OvssDataset:
    """An open-vocabulary segmentation benchmark split: classes, protocol settings, samples."""

    task = "ovss"

    def __init__(self, spec: dict, root: str, split: str, layout: dict, samples: List[OvssSample],
                 decoder: LabelDecoder, warnings_: Optional[List[str]] = None):
        self.spec = spec
        self.name = spec["name"]
        self.root = root
        self.split = split
        self.layout = layout["name"]
        self.layout_spec = layout
        self.class_texts: List[str] = list(spec["classes"])
        self.classes: List[str] = list(spec.get("class_names") or
                                       [t.split(",")[0].strip() for t in self.class_texts])
        self.background_index: int = spec["background_index"]
        self.ignore_index: int = IGNORE_INDEX
        self.threshold: float = float(spec["prob_thd"])
        self.json_path: str = spec.get("_path", "")
        self.protocol: Dict = ovss_protocol(spec)
        self.decoder = decoder
        self.samples = samples
        self.warnings = list(warnings_ or [])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def prompt(self) -> str:
        """The class text for the engine: classes by ';', synonyms by ','."""
        return "; ".join(self.class_texts)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[OvssSample]:
        return iter(self.samples)

    def __getitem__(self, index: int) -> OvssSample:
        return self.samples[index]

    def load_label_file(self, path: Union[str, Path], stats: Optional[Dict] = None) -> np.ndarray:
        """Decode any file holding this data set's label values (used for predictions too)."""
        return self.decoder.decode(read_array(path), stats, source=str(path))

    def __repr__(self) -> str:
        return (f"OvssDataset({self.name!r}, split={self.split!r}, layout={self.layout!r}, "
                f"{len(self)} samples)")


def ovss_protocol(spec: dict) -> Dict:
    """The evaluation protocol pinned for an OVSS data set: its JSON's class texts (synonyms after
    commas), background handling, threshold and "protocol" geometry, plus the fixed steps."""
    pinned = spec.get("protocol") or {}
    return {
        "source": pinned.get("source", ""),
        "class_texts": list(spec["classes"]),
        "background_index": spec["background_index"],
        "background": pinned.get("background", ""),
        "prob_thd": float(spec["prob_thd"]),
        "long_side": pinned.get("long_side", PROTOCOL_LONG_SIDE),
        "window": pinned.get("window", PROTOCOL_WINDOW),
        "stride": pinned.get("stride", PROTOCOL_STRIDE),
        "blend": pinned.get("blend", PROTOCOL_BLEND),
        "steps": list(PROTOCOL_STEPS),
    }


def _check_protocol(where: str, pinned) -> None:
    if pinned is None:
        return
    if not isinstance(pinned, dict):
        raise InputError(f"{where}: \"protocol\" must be an object")
    for key in ("long_side", "window", "stride"):
        value = pinned.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "long_side" else 1):
            raise InputError(f"{where}: protocol \"{key}\" must be a whole number of pixels, "
                             f"got {value!r}")
    if pinned.get("stride", 1) > pinned.get("window", PROTOCOL_WINDOW):
        raise InputError(f"{where}: protocol \"stride\" must not exceed its \"window\"")
    if pinned.get("blend", PROTOCOL_BLEND) not in BLENDS:
        raise InputError(f"{where}: protocol \"blend\" must be one of {', '.join(BLENDS)}")


def _check_ovss_spec(spec: dict) -> None:
    where = spec.get("_path", spec.get("name"))
    classes = spec.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c.strip()
                                                               for c in classes):
        raise InputError(f"{where}: \"classes\" must be a non-empty list of class texts")
    names = spec.get("class_names")
    if names is not None and (not isinstance(names, list) or len(names) != len(classes)):
        raise InputError(f"{where}: \"class_names\" must list one name per class")
    bg = spec.get("background_index")
    if isinstance(bg, bool) or not isinstance(bg, int) or not 0 <= bg < len(classes):
        raise InputError(f"{where}: \"background_index\" must be a class index "
                         f"0..{len(classes) - 1}, got {bg!r}")
    if spec.get("ignore_index", IGNORE_INDEX) != IGNORE_INDEX:
        raise InputError(f"{where}: only ignore_index 255 is supported (decoded labels use 255)")
    thd = spec.get("prob_thd")
    if isinstance(thd, bool) or not isinstance(thd, (int, float)) or not 0 <= thd <= 1:
        raise InputError(f"{where}: \"prob_thd\" must be a number in [0, 1], got {thd!r}")
    _check_protocol(where, spec.get("protocol"))
    layouts = spec.get("layouts")
    if not isinstance(layouts, list) or not layouts:
        raise InputError(f"{where}: \"layouts\" must be a non-empty list")
    for layout in layouts:
        if not isinstance(layout, dict) or not layout.get("name") or not layout.get("images") \
                or not layout.get("labels"):
            raise InputError(f"{where}: every layout needs \"name\", \"images\" and \"labels\"")
        if not layout.get("colors") and layout.get("index_map") is None:
            raise InputError(f"{where}: layout '{layout['name']}' needs an \"index_map\" or "
                             "\"colors\": true")
        if layout.get("colors") and not spec.get("palette"):
            raise InputError(f"{where}: layout '{layout['name']}' decodes colours but the data "
                             "set has no \"palette\"")


def _as_list(value) -> List[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _fill(pattern: str, split: str, **extra) -> str:
    values = {"split": split, "Split": split[:1].upper() + split[1:], "SPLIT": split.upper()}
    values.update(extra)
    try:
        return pattern.format(**values)
    except (KeyError, IndexError, ValueError) as exc:
        raise InputError(f"Bad path pattern '{pattern}' in the data set description: {exc}")


def _glob_files(root: str, pattern: str, exts: Sequence[str]) -> List[str]:
    exts = tuple(e.lower() for e in exts)
    found = glob.glob(os.path.join(glob.escape(root), pattern))
    return sorted(p for p in found if os.path.isfile(p) and (not exts or p.lower().endswith(exts)))


def _rel(path: str, root: str) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def _split_filter(layout: dict, root: str, split: str, where: str):
    """A predicate on image paths for layouts whose split is not a folder, else None."""
    list_pattern = layout.get("split_list")
    if list_pattern:
        list_path = os.path.join(root, _fill(list_pattern, split))
        if not os.path.isfile(list_path):
            raise InputError(f"{where}: the split list {list_path} is missing (the "
                             f"'{layout['name']}' layout lists the images of split '{split}' there)")
        with open(list_path, encoding="utf-8") as handle:
            entries = {line.strip() for line in handle if line.strip()}
        stems = {os.path.splitext(e)[0] for e in entries}
        return lambda p: os.path.basename(p) in entries or Path(p).stem in stems
    split_ids = layout.get("split_ids")
    if split_ids:
        if split not in split_ids:
            raise InputError(f"{where}: unknown split '{split}' for the '{layout['name']}' layout; "
                             f"expected one of {', '.join(split_ids)}")
        ids = set(split_ids[split])
        pattern = re.compile(layout.get("id_pattern", r"(.+)"))

        def keep(p):
            match = pattern.search(Path(p).stem)
            return bool(match) and (match.group(1) if match.groups() else match.group(0)) in ids
        return keep
    return None


def _label_candidates(layout: dict, root: str, split: str, image: str) -> List[str]:
    rel = Path(os.path.relpath(image, root))
    stem = rel.stem
    base = stem
    suffix = layout.get("strip_suffix")
    if suffix and stem.endswith(suffix):
        base = stem[: -len(suffix)]
    image_dir = rel.parent.as_posix()
    out = []
    for template in _as_list(layout["labels"]):
        filled = _fill(template, split, image_dir=image_dir, stem=stem, name=rel.name, base=base)
        out.append(os.path.normpath(os.path.join(root, filled)))
    return out


def _find_layout_images(spec: dict, layout: dict, root: str, split: str) -> List[str]:
    """The layout's images of the split; [] when the layout's files are not there at all."""
    for pattern in _as_list(layout["images"]):
        files = _glob_files(root, _fill(pattern, split), _as_list(layout.get("image_ext")))
        if not files:
            continue
        keep = _split_filter(layout, root, split, spec["name"])
        return [f for f in files if keep(f)] if keep is not None else files
    return []


def _layout_summary(layout: dict, split: str) -> str:
    images = " or ".join(_fill(p, split) for p in _as_list(layout["images"]))
    extra = ""
    if layout.get("split_list"):
        extra = f" listed in {_fill(layout['split_list'], split)}"
    elif layout.get("split_ids"):
        extra = f" of the '{split}' tiles"
    return f"{layout['name']}: {images}{extra}"


def open_ovss(spec: dict, root: str, split: Optional[str] = None,
              layout: Optional[str] = None) -> OvssDataset:
    _check_ovss_spec(spec)
    name = spec["name"]
    split = split or spec.get("default_split", "val")
    known_splits = spec.get("splits")
    if known_splits and split not in known_splits:
        raise InputError(f"Unknown split '{split}' for {name}; expected one of "
                         f"{', '.join(known_splits)}")
    layouts = spec["layouts"]
    if layout:
        chosen = [l for l in layouts if l["name"] == layout]
        if not chosen:
            raise InputError(f"Unknown layout '{layout}' for {name}; expected one of "
                             f"{', '.join(l['name'] for l in layouts)}")
        layouts = chosen
    else:
        layouts = [l for l in layouts if l.get("auto", True)]

    for candidate in layouts:
        images = _find_layout_images(spec, candidate, root, split)
        if images:
            dataset = _build_ovss(spec, root, split, candidate, images)
            if layout or not candidate.get("alternative"):
                return dataset
            return _maybe_alternative(spec, root, split, dataset, images)
    tried = "; ".join(_layout_summary(l, split) for l in layouts)
    raise InputError(f"No {name} images of split '{split}' found under {root}. Looked for "
                     f"(relative to the root) {tried}. Point --root at the folder that holds "
                     "these, or pick another --split.")


def _build_ovss(spec: dict, root: str, split: str, layout: dict, images: List[str]) -> OvssDataset:
    name = spec["name"]
    decoder = LabelDecoder(len(spec["classes"]),
                           index_map=layout.get("index_map"),
                           palette=spec.get("palette") if layout.get("colors") else None,
                           unmatched_color=spec.get("unmatched_color", "ignore"),
                           where=f"{name} ({layout['name']} layout)")
    templates = _as_list(layout["labels"])
    first = _label_candidates(layout, root, split, images[0])
    chosen = next((i for i, p in enumerate(first) if os.path.isfile(p)), None)
    if chosen is None:
        raise InputError(f"No ground truth for {name} image {images[0]}: expected one of "
                         f"{', '.join(first)}. The '{split}' split may have no public labels.")
    samples, missing = [], []
    for image in images:
        label = _label_candidates(layout, root, split, image)[chosen]
        if not os.path.isfile(label):
            missing.append((image, label))
            continue
        rel = _rel(label, root)
        samples.append(OvssSample(key=os.path.splitext(rel)[0], image_path=image, label_path=label,
                                  label_relpath=rel, decoder=decoder))
    if missing:
        shown = "; ".join(f"{img} (expected {lab})" for img, lab in missing[:_MAX_LISTED])
        raise InputError(f"{len(missing)} of {len(images)} {name} images have no ground-truth "
                         f"label following '{templates[chosen]}': {shown}")
    return OvssDataset(spec, root, split, layout, samples, decoder)


def _maybe_alternative(spec: dict, root: str, split: str, dataset: OvssDataset,
                       images: List[str]) -> OvssDataset:
    """Same files, other encoding? A layout's ``alternative`` names raw values that prove the
    alternative encoding (``evidence_for``) or rule it out (``evidence_against``); a few label
    files spread over the split are read to decide."""
    alt = dataset.layout_spec["alternative"]
    others = {l["name"]: l for l in spec["layouts"]}
    if alt.get("layout") not in others:
        raise InputError(f"{dataset.json_path}: alternative layout {alt.get('layout')!r} of "
                         f"'{dataset.layout}' is not defined")
    against = set(alt.get("evidence_against", ()))
    for_alt = set(alt.get("evidence_for", ()))
    count = min(len(dataset.samples), int(alt.get("probe_files", 16)))
    picks = sorted(set(np.linspace(0, len(dataset.samples) - 1, count).round().astype(int)))
    for index in picks:
        raw = read_array(dataset.samples[index].label_path)
        if raw.ndim != 2:
            return dataset
        values = set(np.unique(raw).tolist())
        if values & against:
            return dataset
        if values & for_alt:
            switched = _build_ovss(spec, root, split, others[alt["layout"]], images)
            switched.warnings.append(
                f"{dataset.samples[index].label_relpath} holds {sorted(values & for_alt)}, so the "
                f"labels are read with the '{alt['layout']}' layout "
                f"({others[alt['layout']].get('description', '')})")
            return switched
    dataset.warnings.append(
        f"Could not tell from {len(picks)} label files whether they use the '{dataset.layout}' "
        f"or the '{alt['layout']}' encoding; assumed '{dataset.layout}'. Pass --layout "
        f"{alt['layout']} if that is wrong.")
    return dataset


# ------------------------------------------------------------------------------------------
# Referring segmentation: COCO RLE, polygons, restricted pickle
# ------------------------------------------------------------------------------------------

def rle_counts_from_string(counts: Union[str, bytes]) -> List[int]:
    """Decode COCO's compressed RLE string (LEB128-like, 6 bits per char, offset 48)."""
    data = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    out: List[int] = []
    p = 0
    while p < len(data):
        value = 0
        k = 0
        more = True
        while more:
            if p >= len(data):
                raise InputError("Corrupt RLE string: it ends in the middle of a number")
            c = data[p] - 48
            if not 0 <= c < 64:
                raise InputError(f"Corrupt RLE string: unexpected character {chr(data[p])!r}")
            value |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                value |= -1 << (5 * k)       # sign-extend
        if len(out) > 2:                     # counts after the third are deltas (as pycocotools)
            value += out[-2]
        out.append(value)
    return out


def rle_decode(rle: dict) -> np.ndarray:
    """A COCO RLE (``{"size": [h, w], "counts": list or string}``) as an h x w bool mask."""
    try:
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError):
        raise InputError(f"An RLE mask needs \"size\": [h, w] and \"counts\", got {rle!r:.80}")
    if isinstance(counts, (str, bytes)):
        counts = rle_counts_from_string(counts)
    counts = [int(c) for c in counts]
    if any(c < 0 for c in counts) or sum(counts) != h * w:
        raise InputError(f"Corrupt RLE mask: its runs cover {sum(counts)} pixels, not {h}x{w}")
    flat = np.zeros(h * w, bool)
    pos = 0
    for i, run in enumerate(counts):
        if i % 2:                            # runs alternate 0s, 1s, starting with 0s
            flat[pos:pos + run] = True
        pos += run
    return flat.reshape((w, h)).T            # column-major (Fortran) order


def polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """COCO polygons ``[[x1, y1, x2, y2, ...], ...]`` rasterised (pixel-centre rule of Pillow)."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (int(width), int(height)), 0)
    draw = ImageDraw.Draw(image)
    for poly in polygons:
        coords = [float(v) for v in poly]
        if len(coords) >= 6:
            draw.polygon(list(zip(coords[0::2], coords[1::2])), fill=1)
    return np.asarray(image, bool)


def segmentation_to_mask(segmentation, height: Optional[int], width: Optional[int]) -> np.ndarray:
    """A COCO ``segmentation`` (RLE dict, list of RLE dicts, or polygons) as one bool mask."""
    if isinstance(segmentation, dict):
        return rle_decode(segmentation)
    if isinstance(segmentation, list) and segmentation:
        if all(isinstance(s, dict) for s in segmentation):
            masks = [rle_decode(s) for s in segmentation]
            shape = masks[0].shape
            if any(m.shape != shape for m in masks):
                raise InputError("The RLE parts of one annotation have different sizes")
            return np.logical_or.reduce(masks)
        if all(isinstance(s, (list, tuple)) for s in segmentation):
            if not height or not width:
                raise InputError("A polygon annotation needs the image's height and width")
            return polygons_to_mask(segmentation, height, width)
    if isinstance(segmentation, list) and not segmentation and height and width:
        return np.zeros((int(height), int(width)), bool)
    raise InputError(f"Unsupported segmentation format: {str(segmentation)[:80]}")


_SAFE_BUILTINS = {"dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray",
                  "int", "float", "complex", "bool"}


class _ContainersOnlyUnpickler(pickle.Unpickler):
    """Builds only builtin containers and scalars; any other global is refused, so a pickle
    cannot run code while being read."""

    def find_class(self, module, name):
        if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            return super().find_class("builtins", name)
        if (module, name) == ("_codecs", "encode"):   # how protocol-2 pickles spell bytes
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")


def safe_load_pickle(path: Union[str, Path]):
    """Load a data pickle (REFER ``refs(*).p``) allowing builtin containers only."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise InputError(f"Cannot read {path}: {exc}")
    try:
        return _ContainersOnlyUnpickler(io.BytesIO(data), encoding="utf-8",
                                        errors="replace").load()
    except pickle.UnpicklingError as exc:
        raise InputError(f"{path} holds more than plain lists and dicts ({exc}); refusing to "
                         "load it, as unpickling arbitrary objects can run code")
    except (EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError,
            KeyError) as exc:
        raise InputError(f"{path} is not a readable refs pickle: {exc}")


# ------------------------------------------------------------------------------------------
# Referring data sets
# ------------------------------------------------------------------------------------------

@dataclass
class ReferSample:
    """One expression on one image; the target mask is read only by ``load_mask``."""

    key: str                       # unique within the split; predictions are named after it
    image_path: str
    expression: str
    mask_path: Optional[str] = None
    mask_loader: Optional[Callable[[], np.ndarray]] = field(default=None, repr=False)

    def load_mask(self) -> np.ndarray:
        if self.mask_loader is not None:
            return np.asarray(self.mask_loader(), bool)
        return binary_mask(read_array(self.mask_path))


class ReferDataset:
    """A referring-segmentation benchmark split."""

    task = "refer"

    def __init__(self, spec: dict, root: str, split: str, samples: List[ReferSample],
                 warnings_: Optional[List[str]] = None):
        self.spec = spec
        self.name = spec["name"]
        self.root = root
        self.split = split
        self.layout = spec.get("format", "")
        self.samples = samples
        self.threshold = None
        self.json_path = spec.get("_path", "")
        self.protocol: Dict = {"source": (spec.get("protocol") or {}).get("source", ""),
                               "metrics": dict(REFER_METRIC_DEFINITIONS)}
        self.warnings = list(warnings_ or [])

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[ReferSample]:
        return iter(self.samples)

    def __getitem__(self, index: int) -> ReferSample:
        return self.samples[index]

    def __repr__(self) -> str:
        return f"ReferDataset({self.name!r}, split={self.split!r}, {len(self)} samples)"


def _first_existing(root: str, candidates: Sequence[str]) -> Optional[str]:
    for rel in candidates:
        path = os.path.join(root, rel)
        if os.path.exists(path):
            return path
    return None


def _open_refer_pickle(spec: dict, root: str, split: str) -> ReferDataset:
    name = spec["name"]
    refs_path = _first_existing(root, _as_list(spec.get("refs")))
    inst_path = _first_existing(root, _as_list(spec.get("instances")))
    if refs_path is None or inst_path is None:
        raise InputError(f"{name} needs a REFER refs pickle ({' or '.join(_as_list(spec.get('refs')))}) "
                         f"and COCO annotations ({' or '.join(_as_list(spec.get('instances')))}) "
                         f"under {root}")
    refs = safe_load_pickle(refs_path)
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise InputError(f"{refs_path} should hold a list of refs (dicts)")
    instances = _load_json_file(inst_path)
    try:
        images = {img["id"]: img for img in instances["images"]}
        anns = {ann["id"]: ann for ann in instances["annotations"]}
    except (KeyError, TypeError):
        raise InputError(f"{inst_path} should be COCO-style JSON with \"images\" and "
                         "\"annotations\" lists")
    image_dirs = _as_list(spec.get("image_dirs")) or ["."]
    image_dir = _first_existing(root, image_dirs)
    if image_dir is None:
        raise InputError(f"{name} images folder not found under {root}; expected one of "
                         f"{', '.join(image_dirs)}")

    chosen = [r for r in refs if r.get("split") == split]
    if not chosen:
        found = sorted({str(r.get("split")) for r in refs})
        raise InputError(f"{refs_path} has no refs of split '{split}'; it has: {', '.join(found)}")
    samples: List[ReferSample] = []
    missing = []
    for ref in sorted(chosen, key=lambda r: r.get("ref_id", 0)):
        try:
            ann = anns[ref["ann_id"]]
            img = images[ref["image_id"]]
        except KeyError as exc:
            raise InputError(f"Ref {ref.get('ref_id')} in {refs_path} points to a missing "
                             f"annotation or image ({exc}) in {inst_path}")
        image_path = os.path.join(image_dir, img["file_name"])
        if not os.path.isfile(image_path):
            missing.append(image_path)
            continue
        loader = _annotation_loader(ann, img)
        for sent in ref.get("sentences", []):
            text = sent.get("raw") or sent.get("sent") or ""
            key = f"{ref.get('ref_id')}_{sent.get('sent_id')}"
            samples.append(ReferSample(key=key, image_path=image_path, expression=str(text).strip(),
                                       mask_loader=loader))
    if missing:
        raise InputError(f"{len(missing)} {name} images are missing, e.g. "
                         f"{', '.join(missing[:_MAX_LISTED])}")
    return ReferDataset(spec, root, split, samples)


def _annotation_loader(ann: dict, img: dict) -> Callable[[], np.ndarray]:
    def load():
        return segmentation_to_mask(ann.get("segmentation"), img.get("height"), img.get("width"))
    return load


def _load_json_file(path: str):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as exc:
        raise InputError(f"Cannot read {path}: {exc}")
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON: {exc}")


def _find_by_token(folder: str, token: str, exts: Sequence[str]) -> Optional[str]:
    direct = os.path.join(folder, token)
    if os.path.splitext(token)[1] and os.path.isfile(direct):
        return direct
    stem = os.path.splitext(token)[0] if os.path.splitext(token)[1].lower() in \
        tuple(e.lower() for e in exts) else token
    for ext in exts:
        for candidate in (stem + ext, stem + ext.upper()):
            path = os.path.join(folder, candidate)
            if os.path.isfile(path):
                return path
    return None


def _open_phrase_list(spec: dict, root: str, split: str) -> ReferDataset:
    name = spec["name"]
    phrases = os.path.join(root, _fill(spec.get("phrases", "output_phrase_{split}.txt"), split))
    image_dir = os.path.join(root, spec.get("image_dir", "images"))
    mask_dir = os.path.join(root, spec.get("mask_dir", "masks"))
    for what, path in (("expression list", phrases), ("image folder", image_dir),
                       ("mask folder", mask_dir)):
        if not os.path.exists(path):
            raise InputError(f"{name}: the {what} {path} is missing (expected the layout "
                             f"{spec.get('image_dir')}/, {spec.get('mask_dir')}/, "
                             f"{_fill(spec.get('phrases', ''), split)} under the root)")
    image_exts = _as_list(spec.get("image_ext")) or [".tif", ".png", ".jpg"]
    mask_exts = _as_list(spec.get("mask_ext")) or [".tif", ".png"]
    with open(phrases, encoding="utf-8", errors="replace") as handle:
        lines = handle.read().splitlines()
    samples, missing, notes, seen = [], [], [], {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.strip().split(None, 1)
        if len(parts) < 2:
            notes.append(f"{os.path.basename(phrases)} line {number} has no expression; skipped")
            continue
        token, sentence = parts
        image = _find_by_token(image_dir, token, image_exts)
        mask = _find_by_token(mask_dir, token, mask_exts)
        if image is None or mask is None:
            missing.append(f"line {number} '{token}' ({'image' if image is None else 'mask'})")
            continue
        stem = Path(mask).stem
        seen[stem] = seen.get(stem, 0) + 1
        key = stem if seen[stem] == 1 else f"{stem}__{seen[stem]}"
        samples.append(ReferSample(key=key, image_path=image, expression=sentence.strip(),
                                   mask_path=mask))
    if missing:
        raise InputError(f"{len(missing)} entries of {phrases} have no file in {image_dir} / "
                         f"{mask_dir}: {'; '.join(missing[:_MAX_LISTED])}")
    if not samples:
        raise InputError(f"{phrases} lists no samples")
    return ReferDataset(spec, root, split, samples, notes)


def open_refer(spec: dict, root: str, split: Optional[str] = None) -> ReferDataset:
    split = split or spec.get("default_split", "test")
    known = spec.get("splits")
    if known and split not in known:
        raise InputError(f"Unknown split '{split}' for {spec['name']}; expected one of "
                         f"{', '.join(known)}")
    fmt = spec.get("format")
    if fmt == "refer_pickle":
        return _open_refer_pickle(spec, root, split)
    if fmt == "phrase_list":
        return _open_phrase_list(spec, root, split)
    raise InputError(f"{spec.get('_path', spec['name'])}: unknown referring format {fmt!r}; "
                     "expected \"refer_pickle\" or \"phrase_list\"")


# ------------------------------------------------------------------------------------------

def get_dataset(name: str, root: Union[str, Path], split: Optional[str] = None,
                layout: Optional[str] = None) -> Union[OvssDataset, ReferDataset]:
    """Open split ``split`` (default: the set's evaluation split) of data set ``name`` at ``root``.

    ``name`` is a built-in name or alias (any case) or the path of a data set JSON file;
    ``layout`` forces one of the set's layouts instead of detecting it.
    """
    spec = dataset_spec(name)
    root = os.path.abspath(os.path.expanduser(str(root)))
    if not os.path.isdir(root):
        raise InputError(f"Data set root {root} does not exist or is not a folder")
    if spec["task"] == "ovss":
        return open_ovss(spec, root, split, layout)
    if layout:
        raise InputError(f"{spec['name']} has a single layout; --layout is for OVSS sets")
    return open_refer(spec, root, split)
