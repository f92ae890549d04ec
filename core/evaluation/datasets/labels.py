"""Raw label values (or RGB colours) -> uint8 class indices, 255 where a pixel is not scored."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ...errors import InputError
from ..metrics import IGNORE_INDEX

_COLOR_BLOCK = 1 << 21  # pixels decoded per block of rows


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
