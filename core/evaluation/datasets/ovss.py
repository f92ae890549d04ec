"""OVSS benchmark splits: finding a layout's images and labels, decoding, picking the encoding."""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from ...errors import InputError
from ...protocol import (BLENDS, PROTOCOL_BLEND, PROTOCOL_LONG_SIDE, PROTOCOL_STEPS, PROTOCOL_STRIDE,
                         PROTOCOL_WINDOW)
from .files import read_array
from .labels import IGNORE_INDEX, LabelDecoder
from .specs import MAX_LISTED, SampleList, as_list, fill


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


class OvssDataset(SampleList):
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
        value, least = pinned.get(key, 1), 0 if key == "long_side" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
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
        list_path = os.path.join(root, fill(list_pattern, split))
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
    for template in as_list(layout["labels"]):
        filled = fill(template, split, image_dir=image_dir, stem=stem, name=rel.name, base=base)
        out.append(os.path.normpath(os.path.join(root, filled)))
    return out


def _find_layout_images(spec: dict, layout: dict, root: str, split: str) -> List[str]:
    """The layout's images of the split; [] when the layout's files are not there at all."""
    for pattern in as_list(layout["images"]):
        files = _glob_files(root, fill(pattern, split), as_list(layout.get("image_ext")))
        if not files:
            continue
        keep = _split_filter(layout, root, split, spec["name"])
        return [f for f in files if keep(f)] if keep is not None else files
    return []


def _layout_summary(layout: dict, split: str) -> str:
    images = " or ".join(fill(p, split) for p in as_list(layout["images"]))
    extra = ""
    if layout.get("split_list"):
        extra = f" listed in {fill(layout['split_list'], split)}"
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
    templates = as_list(layout["labels"])
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
        shown = "; ".join(f"{img} (expected {lab})" for img, lab in missing[:MAX_LISTED])
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
