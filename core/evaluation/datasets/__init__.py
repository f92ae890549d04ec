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

import os
from pathlib import Path
from typing import Optional, Union

from ...errors import InputError
from .coco import polygons_to_mask, rle_counts_from_string, rle_decode, segmentation_to_mask
from .files import LABEL_READ_EXTS, binary_mask, read_array
from .labels import IGNORE_INDEX, LabelDecoder, describe_unexpected
from .ovss import OvssDataset, OvssSample, open_ovss
from .refer import ReferDataset, ReferSample, open_refer
from .safe_pickle import safe_load_pickle
from .specs import DATA_DIR, dataset_spec, list_datasets

__all__ = ["DATA_DIR", "IGNORE_INDEX", "LABEL_READ_EXTS", "LabelDecoder", "OvssDataset", "OvssSample",
           "ReferDataset", "ReferSample", "binary_mask", "dataset_spec", "describe_unexpected",
           "get_dataset", "list_datasets", "open_ovss", "open_refer", "polygons_to_mask",
           "read_array", "rle_counts_from_string", "rle_decode", "safe_load_pickle",
           "segmentation_to_mask"]


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
