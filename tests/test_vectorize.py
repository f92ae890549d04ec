"""Vectorizing block by block gives the polygons of the whole raster polygonised at once; areas
are in square metres, also on a geographic CRS."""
import numpy as np
import pytest
import rasterio
import shapely
from rasterio import features
from rasterio.transform import from_origin
from shapely.geometry import shape

from support.oracles import segment_scene
from support.outputs import read_class_polygons
from support.rasters import scene_image, scene_labels, write_raster
from drseg.core.vectorize import vectorize

NODATA = 255
PIXEL_AREA = 0.25  # support.rasters.write_raster: 0.5 m pixels, EPSG:32633


def road_grid_scene(height=300, width=260):
    """Classes: 1 building, 2 road (a grid spanning the raster), 3 isolated pixels, 4 a pond;
    0 background, 255 nodata. Built to cross the 64- and 128-px block seams in every way."""
    ys, xs = np.mgrid[:height, :width]
    classes = np.zeros((height, width), np.uint8)
    for top in range(8, height, 50):             # a building in every street block
        for left in range(7, width, 45):
            classes[top:top + 30, left:left + 28] = 1
    classes[(ys % 50 < 4) | (xs % 45 < 3)] = 2   # roads every 50 / 45 px (not block multiples)
    # A building with a courtyard across the 128-px seams: its hole exists only once joined.
    classes[106:147, 104:135] = 1
    classes[114:137, 112:131] = 0
    classes[70:80, 64:68] = 4                    # another class beside a building, across a seam
    # Same-class pixels touching only diagonally across a seam, and across a block corner:
    # 4-connected regions, so they stay apart.
    for y, x in ((63, 20), (127, 127), (191, 191)):
        classes[y - 2:y + 4, x - 2:x + 4] = 0
        classes[y, x] = classes[y + 1, x + 1] = 3
    classes[(ys - 230) ** 2 + (xs - 64) ** 2 < 22 ** 2] = 4   # a pond on a block corner
    classes[256:272, 110:134] = NODATA                       # nodata across a seam
    return classes


def score_map(shape_):
    ys, xs = np.mgrid[:shape_[0], :shape_[1]]
    return (((ys * 7 + xs * 3) % 101) / 100.0).astype(np.float32)


@pytest.fixture
def rasters(tmp_path):
    classes = road_grid_scene()
    scores = score_map(classes.shape)
    class_path = write_raster(tmp_path / "classes.tif", classes, nodata=NODATA)
    score_path = write_raster(tmp_path / "scores.tif", scores)
    return class_path, score_path, classes, scores


def whole_raster_polygons(classes, scores, transform):
    """The oracle: one `shapes()` call over the whole raster; score sums burnt from each polygon."""
    mask = (classes != 0) & (classes != NODATA)
    found = []
    for geojson, value in features.shapes(classes, mask=mask, connectivity=4, transform=transform):
        inside = features.rasterize([geojson], out_shape=classes.shape, transform=transform) > 0
        found.append((int(value), shape(geojson), int(inside.sum()),
                      float(scores[inside].astype(np.float64).sum())))
    return found


def by_position(items):
    """Sorted by class, then area and bounds: the same order for the same polygons."""
    return sorted(items, key=lambda t: (t[0], round(t[1].area, 6),
                                        tuple(round(v, 6) for v in t[1].bounds)))


def assert_same_polygons(found, expected):
    assert len(found) == len(expected)
    for (cls_a, geom_a, px_a, sum_a), (cls_b, geom_b, px_b, sum_b) in zip(found, expected):
        assert cls_a == cls_b
        assert geom_a.is_valid and geom_a.geom_type == "Polygon"
        assert abs(geom_a.area - geom_b.area) <= 1e-9 * geom_b.area
        assert shapely.equals(shapely.normalize(geom_a), shapely.normalize(geom_b))
        assert px_a == px_b
        assert sum_a == pytest.approx(sum_b, rel=1e-12, abs=1e-9)


def vectorized(class_path, score_path, block):
    return by_position([(r.class_index, r.geometry, r.pixels, r.score_sum)
                        for r in vectorize(class_path, score_path, block=block)])


def test_blocks_of_any_size_give_the_whole_raster_polygons(rasters):
    class_path, score_path, classes, scores = rasters
    with rasterio.open(class_path) as src:
        transform = src.transform
    expected = by_position(whole_raster_polygons(classes, scores, transform))
    # The road grid is one polygon with a hole per street block; the courtyard is a hole; the
    # diagonal pixel pairs are six polygons.
    roads = [e for e in expected if e[0] == 2]
    assert len(roads) == 1 and len(roads[0][1].interiors) > 20
    assert sum(1 for e in expected if e[0] == 3) == 6
    whole = vectorized(class_path, score_path, 4096)
    assert_same_polygons(whole, expected)
    for block in (64, 128, 97):
        assert_same_polygons(vectorized(class_path, score_path, block), expected)


def test_areas_and_scores_of_joined_regions(rasters):
    class_path, score_path, classes, scores = rasters
    regions = list(vectorize(class_path, score_path, block=64))
    road = next(r for r in regions if r.class_index == 2)
    assert road.pixels == int((classes == 2).sum())
    assert road.area_m2 == pytest.approx(PIXEL_AREA * road.pixels, rel=1e-12)
    assert road.score == pytest.approx(scores[classes == 2].astype(np.float64).mean(), rel=1e-12)


def test_finished_regions_come_out_before_the_last_block_row(rasters):
    """Bounded memory: a region is handed out as soon as no later block can reach it."""
    class_path, score_path, _, _ = rasters

    class Monitor:
        fraction = 0.0

        def report(self, fraction, message):
            self.fraction = fraction

    monitor = Monitor()
    seen = [(region.class_index, region.geometry.bounds, monitor.fraction)
            for region in vectorize(class_path, score_path, monitor=monitor, block=64)]
    last_row_starts = 15 / 20       # 5 × 5 blocks of 64 px: the last row is blocks 20..24
    with rasterio.open(class_path) as src:
        seam_x = src.transform.c + 64 * src.transform.a
        top = src.bounds.top
    # A building of the top block row cut by the first vertical seam comes out early.
    early = [s for s in seen if s[0] == 1 and s[1][0] < seam_x < s[1][2] and s[1][3] == top - 4]
    assert early and all(s[2] < last_row_starts for s in early)


def test_geographic_crs_areas_are_in_square_metres(tmp_path):
    labels = scene_labels(300, 260)
    degrees = 1e-5  # about 1.11 m at the equator
    path = write_raster(tmp_path / "geo.tif", scene_image(labels), crs="EPSG:4326",
                        transform=from_origin(10.0, 0.0015, degrees, degrees))
    result = segment_scene(path, tmp_path)
    rows, _ = read_class_polygons(result.vector_path)
    water = sum(r["area_m2"] for r in rows if r["class"] == "water")
    pixel_m2 = (degrees * 111_320) * (degrees * 110_574)
    assert water == pytest.approx((labels == 3).sum() * pixel_m2, rel=0.06)


def test_polygons_do_not_depend_on_the_vectorizing_block(scene, tmp_path):
    """Regions cut by block seams (both directions) are joined again, with their scores."""
    from drseg.core.vectorize import vectorize

    path, _ = scene
    result = segment_scene(path, tmp_path, out_vector=None)
    with rasterio.open(result.raster_path) as src:
        profile = src.profile
        scores = (src.read(1) % 7 / 7.0).astype("float32")  # any per-pixel score will do
    profile.update(dtype="float32", nodata=None)
    score_path = str(tmp_path / "score.tif")
    with rasterio.open(score_path, "w", **profile) as dst:
        dst.write(scores[None])

    def regions(block):
        found = sorted((r.class_index, round(r.area_m2, 6), round(r.score, 9), r.pixels)
                       for r in vectorize(result.raster_path, score_path, block=block))
        return found

    whole = regions(4096)
    assert regions(64) == whole
    assert regions(97) == whole
    assert len(whole) >= 5
