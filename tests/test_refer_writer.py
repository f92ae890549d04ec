"""core/refer/writer.py: the referring GeoPackage layer, written atomically."""
import os

import pytest
from rasterio.crs import CRS
from shapely.geometry import box as shapely_box

from drseg.core.errors import RunCancelled
from drseg.core.progress import RunMonitor
from drseg.core.refer.writer import VECTOR_FIELDS, write_referring_layer
from support.outputs import read_referring_gpkg as read_gpkg

UTM = CRS.from_epsg(32633)


def test_rows_are_written_with_given_or_computed_areas(tmp_path):
    out = tmp_path / "r.gpkg"
    a = shapely_box(500000, 4100000, 500010, 4100020)          # 200 m² in UTM metres
    b = shapely_box(500100, 4100000, 500105, 4100004)          # 20 m²
    count = write_referring_layer(str(out), UTM, [(a, "the pond", 0.87654, 123.456),
                                                  (b, "all the ponds", 0.5)], "ponds")
    fields, epsg, name, rows = read_gpkg(out)
    assert count == 2 and fields == [f for f, _ in VECTOR_FIELDS]
    assert (epsg, name) == ("32633", "ponds")
    assert [(r["expression"], r["score"], r["area_m2"]) for r in rows] == [
        ("the pond", 0.8765, 123.46), ("all the ponds", 0.5, 20.0)]
    assert rows[0]["geometry"].equals(a)


def test_a_cancel_before_publishing_leaves_the_existing_file_untouched(tmp_path):
    out = tmp_path / "r.gpkg"
    out.write_bytes(b"an older result")
    monitor = RunMonitor(cancelled=lambda: True)
    with pytest.raises(RunCancelled):
        write_referring_layer(str(out), UTM, [(shapely_box(0, 0, 1, 1), "x", 0.5, 1.0)],
                              monitor=monitor)
    assert out.read_bytes() == b"an older result"
    assert sorted(os.listdir(tmp_path)) == ["r.gpkg"]
