"""Georeferenced rasters written on the fly, and synthetic scenes with known ground truth."""
from __future__ import annotations

import numpy as np
import rasterio
from rasterio.transform import from_origin

# Colours of the synthetic scene's classes; the oracle recognises a class by its colour.
SCENE_COLOURS = {"building": (200, 60, 50), "road": (245, 245, 245), "water": (30, 90, 200),
                 "tree": (40, 140, 50)}

# The QGIS-side tests' rasters: a UTM grid at this origin.
UTM = "EPSG:32633"
ORIGIN = (500000.0, 6000000.0)

# The grid write_raster puts a raster on unless told otherwise: this corner, 0.5 m pixels.
WRITE_ORIGIN = (500000.0, 4100000.0)
WRITE_PIXEL = 0.5

# Colours of the referring pond scene.
WATER, POND2, ROAD, FIELD = (30, 90, 200), (40, 100, 190), (245, 245, 245), (215, 205, 150)


def write_raster(path, data, crs="EPSG:32633", transform=None, nodata=None, dtype=None):
    """Write `data` (bands × rows × columns, or one band) as a GeoTIFF at 0.5 m in UTM 33N."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    transform = transform or from_origin(*WRITE_ORIGIN, WRITE_PIXEL, WRITE_PIXEL)
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                   dtype=dtype or data.dtype, crs=crs, transform=transform)
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return str(path)


def write_halves_raster(path, width=96, height=64, bands=3, crs=UTM, pixel=1.0,
                        dtype="uint8") -> str:
    """Georeferenced test raster: left half red, right half blue (extra bands: grey ramp)."""
    data = np.zeros((bands, height, width), dtype)
    half = width // 2
    if bands >= 3:
        data[0, :, :half] = 200
        data[2, :, half:] = 200
    else:
        data[0, :, :half] = 200
        data[0, :, half:] = 40
    for band in range(3, bands):
        data[band] = np.linspace(0, 250, width, dtype=np.float32)[None, :].astype(dtype)
    with rasterio.open(str(path), "w", driver="GTiff", width=width, height=height, count=bands,
                       dtype=dtype, crs=crs, transform=from_origin(*ORIGIN, pixel, pixel)) as dst:
        dst.write(data)
    return str(path)


def pixel_box(col0, row0, col1, row1):
    """Map-coordinate box of write_raster's pixels [col0, col1) × [row0, row1)."""
    from shapely.geometry import box

    x0, y0 = WRITE_ORIGIN
    return box(x0 + col0 * WRITE_PIXEL, y0 - row1 * WRITE_PIXEL, x0 + col1 * WRITE_PIXEL,
               y0 - row0 * WRITE_PIXEL)


def scene_labels(height=600, width=520):
    """Ground truth of a synthetic scene: 0 background field, 1 building, 2 road, 3 water, 4 tree."""
    labels = np.zeros((height, width), np.uint8)
    labels[:, 240:300] = 2                          # a road crossing the whole scene
    labels[60:230, 40:200] = 1                      # a building block west of the road
    labels[380:560, 330:500] = 3                    # a pond east of the road
    yy, xx = np.mgrid[:height, :width]
    labels[(yy - 150) ** 2 + (xx - 420) ** 2 < 70 ** 2] = 4   # a round tree crown
    labels[420:540, 60:180] = 1                     # a second building
    return labels


def scene_image(labels):
    image = np.full((3,) + labels.shape, 200, np.uint8)  # bright background
    image[:] = np.array((215, 205, 150), np.uint8)[:, None, None]
    for index, name in enumerate(SCENE_COLOURS, start=1):
        image[:, labels == index] = np.array(SCENE_COLOURS[name], np.uint8)[:, None]
    return image


def pond_scene():
    """North pond (slightly off-colour: less activated), a road, a larger south pond."""
    image = np.empty((240, 240, 3), np.uint8)
    image[:] = FIELD
    image[110:130, :] = ROAD
    image[30:80, 40:100] = POND2
    image[160:220, 120:200] = WATER
    return image
