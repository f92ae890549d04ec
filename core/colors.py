"""One stable colour per class name, so 'water' is the same blue in every run and every layer."""
from __future__ import annotations

import colorsys
import hashlib
from typing import Tuple

RGB = Tuple[int, int, int]

# Conventional land-cover colours for names users type most; anything else gets a hashed hue.
KNOWN_COLOURS = {
    "background": (0, 0, 0),
    "building": (220, 50, 47), "roof": (220, 50, 47), "house": (220, 50, 47),
    "road": (128, 128, 128), "street": (128, 128, 128), "pavement": (180, 180, 170),
    "impervious surface": (180, 180, 170), "parking lot": (160, 150, 140),
    "water": (38, 139, 210), "river": (38, 139, 210), "lake": (38, 139, 210), "sea": (20, 90, 170),
    "tree": (34, 120, 50), "forest": (34, 120, 50), "vegetation": (90, 170, 70),
    "low vegetation": (160, 210, 110), "grass": (150, 210, 90),
    "cropland": (240, 200, 80), "agricultural": (240, 200, 80), "farmland": (240, 200, 80),
    "barren": (190, 150, 100), "bareland": (190, 150, 100), "soil": (170, 120, 80),
    "car": (250, 130, 200), "vehicle": (250, 130, 200), "ship": (120, 60, 200),
    "clutter": (255, 200, 0), "sand": (230, 210, 150), "snow": (240, 240, 255),
}


def class_colour(name: str) -> RGB:
    key = name.strip().lower()
    if key in KNOWN_COLOURS:
        return KNOWN_COLOURS[key]
    digest = hashlib.sha1(key.encode("utf-8")).digest()
    hue = digest[0] / 255.0
    saturation = 0.55 + 0.35 * digest[1] / 255.0
    value = 0.70 + 0.25 * digest[2] / 255.0
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return int(r * 255), int(g * 255), int(b * 255)


def hex_colour(rgb: RGB) -> str:
    return "#%02x%02x%02x" % tuple(rgb)
