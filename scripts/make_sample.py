"""Writes resources/sample_scene.tif: a small synthetic aerial-like scene (UTM 33N, 0.5 m pixels)
with houses, roads, trees, a pond and fields, for the README's first run. Deterministic."""
import os
import sys

import numpy as np
import rasterio
from rasterio.transform import from_origin


def make_scene(size=512, seed=7):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    image = np.zeros((size, size, 3), np.float32)
    image[:] = (118, 150, 72)                                      # grass
    image[(xx > 300) & (yy < 220)] = (176, 160, 104)               # a harvested field
    stripes = ((xx + yy // 3) // 6) % 2 == 0
    image[(xx > 300) & (yy < 220) & stripes] *= 0.92               # plough lines
    pond = ((xx - 390) / 80.0) ** 2 + ((yy - 380) / 55.0) ** 2 < 1
    image[pond] = (38, 70, 92)                                      # water
    road = (np.abs(yy - (250 + 0.15 * (xx - 256))) < 9) | (np.abs(xx - 270) < 8)
    image[road] = (128, 126, 122)                                   # asphalt
    for cy, cx, h, w, colour in [(60, 60, 40, 60, (172, 74, 60)), (60, 150, 44, 50, (150, 150, 156)),
                                 (140, 70, 50, 42, (182, 84, 66)), (150, 170, 36, 56, (160, 60, 50)),
                                 (330, 60, 46, 60, (166, 166, 170)), (410, 150, 40, 48, (176, 80, 62))]:
        image[cy:cy + h, cx:cx + w] = colour                        # roofs
        image[cy + h // 2 - 1:cy + h // 2 + 1, cx:cx + w] *= 0.8    # ridge line
    for _ in range(40):                                             # tree crowns
        cy, cx, r = rng.integers(0, size), rng.integers(0, 300), rng.integers(6, 14)
        crown = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
        if not (crown & (road | pond)).any():
            image[crown] = (40, 78, 36)
    image += rng.normal(0, 6, image.shape)                          # sensor noise and texture
    return np.clip(image, 0, 255).astype(np.uint8).transpose(2, 0, 1)


def main(path):
    data = make_scene()
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=3,
                       dtype="uint8", crs="EPSG:32633", transform=from_origin(500000, 5000000, 0.5, 0.5),
                       photometric="RGB", compress="deflate", tiled=True) as dst:
        dst.write(data)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else
         os.path.join(os.path.dirname(__file__), "..", "resources", "sample_scene.tif"))
