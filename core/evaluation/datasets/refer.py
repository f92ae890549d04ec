"""Referring benchmark splits: RRSIS-D (REFER pickle + COCO instances), RefSegRS and RISBench
(phrase lists)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ...errors import InputError
from ..metrics import REFER_METRIC_DEFINITIONS
from .coco import segmentation_to_mask
from .files import binary_mask, read_array
from .safe_pickle import safe_load_pickle
from .specs import MAX_LISTED, SampleList, as_list, fill


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


class ReferDataset(SampleList):
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
    refs_path = _first_existing(root, as_list(spec.get("refs")))
    inst_path = _first_existing(root, as_list(spec.get("instances")))
    if refs_path is None or inst_path is None:
        raise InputError(f"{name} needs a REFER refs pickle ({' or '.join(as_list(spec.get('refs')))}) "
                         f"and COCO annotations ({' or '.join(as_list(spec.get('instances')))}) "
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
    image_dirs = as_list(spec.get("image_dirs")) or ["."]
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
                         f"{', '.join(missing[:MAX_LISTED])}")
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
    phrases = os.path.join(root, fill(spec.get("phrases", "output_phrase_{split}.txt"), split))
    image_dir = os.path.join(root, spec.get("image_dir", "images"))
    mask_dir = os.path.join(root, spec.get("mask_dir", "masks"))
    for what, path in (("expression list", phrases), ("image folder", image_dir),
                       ("mask folder", mask_dir)):
        if not os.path.exists(path):
            raise InputError(f"{name}: the {what} {path} is missing (expected the layout "
                             f"{spec.get('image_dir')}/, {spec.get('mask_dir')}/, "
                             f"{fill(spec.get('phrases', ''), split)} under the root)")
    image_exts = as_list(spec.get("image_ext")) or [".tif", ".png", ".jpg"]
    mask_exts = as_list(spec.get("mask_ext")) or [".tif", ".png"]
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
                         f"{mask_dir}: {'; '.join(missing[:MAX_LISTED])}")
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
