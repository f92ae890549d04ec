"""COCO annotations as masks: compressed and plain RLE, polygons (no pycocotools)."""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import numpy as np

from ...errors import InputError


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
