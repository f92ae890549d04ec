"""The referring output: one GeoPackage polygon layer, fields ``expression``, ``score``,
``area_m2``, in the raster's CRS, written under a temporary name and renamed when complete, so
a cancelled or failed run leaves nothing."""
from __future__ import annotations

from typing import Iterable, Optional, Tuple

import shapely

from ..gpkg import PolygonLayerWriter
from ..outputs import WorkDir, check_destination, publish
from ..progress import RunMonitor
from ..vectorize import AreaMeter
from .request import DEFAULT_LAYER

VECTOR_FIELDS = [("expression", "str"), ("score", "real"), ("area_m2", "real")]


def write_referring_layer(out_vector: str, crs, rows: Iterable[Tuple], layer_name: str = DEFAULT_LAYER,
                          monitor: Optional[RunMonitor] = None) -> int:
    """Write rows ``(geometry, expression, score[, area_m2])`` as one polygon layer, atomically
    (temporary name, renamed when complete). Area is computed when not given. -> feature count."""
    out_vector = check_destination(out_vector, (".gpkg",))
    rows = list(rows)
    work = WorkDir(out_vector)
    try:
        temporary = work.file("referring.gpkg")
        writer = PolygonLayerWriter(temporary, layer_name, crs, VECTOR_FIELDS, destination=out_vector)
        try:
            missing = [row[0] for row in rows if len(row) < 4]
            if missing:
                bounds = shapely.union_all(missing).bounds
                computed = iter(AreaMeter(crs, bounds).area(missing))
            for row in rows:
                geometry, expression, score = row[:3]
                area = row[3] if len(row) >= 4 else next(computed)
                writer.add(geometry, expression=str(expression), score=round(float(score), 4),
                           area_m2=round(float(area), 2))
        except BaseException:
            writer.abort()
            raise
        writer.close()
        if monitor is not None:
            monitor.check()            # last chance to cancel before the output appears
        publish(temporary, out_vector)
        return writer.count
    finally:
        work.cleanup()
