"""Referring with SAM 3 through the run entry point and the CLI (`refer --engine sam3`), with the
real SAM 3 architecture at tiny size: one GeoPackage layer with the usual fields in the raster's
CRS, and the area's image features kept for the next expression."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from conftest import write_raster
from drseg.core.errors import InputError
from drseg.core.refer import sam3_refer
from drseg.core.refer.run import ReferringRequest, run_referring
from drseg.core.refer.sessions import SESSIONS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def scene(tmp_path):
    image = np.random.default_rng(5).integers(0, 255, (3, 96, 128), np.uint8)
    return write_raster(tmp_path / "scene.tif", image, crs="EPSG:32632")


def _fields(path):
    with sqlite3.connect(path) as db:
        table = db.execute("SELECT table_name FROM gpkg_contents").fetchone()[0]
        columns = [row[1] for row in db.execute(f'PRAGMA table_info("{table}")')]
        srs = db.execute("SELECT organization_coordsys_id FROM gpkg_spatial_ref_sys "
                         "WHERE srs_id = (SELECT srs_id FROM gpkg_geometry_columns)").fetchone()[0]
        rows = db.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0]
    return columns, srs, rows


def test_run_referring_with_sam3_writes_the_layer_and_keeps_the_area(tmp_path, scene, tiny_sam3_json,
                                                                     monkeypatch):
    monkeypatch.setattr(sam3_refer, "MIN_INSTANCE_SCORE", 0.0)  # random weights: keep every query
    SESSIONS.clear()
    request = ReferringRequest(raster=scene, expressions=["all the buildings", "the largest tree"],
                               out_vector=str(tmp_path / "out.gpkg"), engine="sam3",
                               sam3_model=tiny_sam3_json, sam3_weights="random", device="cpu")
    result = run_referring(request)
    columns, srs, rows = _fields(result.vector_path)
    assert {"expression", "score", "area_m2"} <= set(columns) and srs == 32632
    assert rows == result.polygon_count > 0
    first, second = result.expressions
    assert not first.timing.cached and second.timing.cached   # the encoder ran once for the area
    again = run_referring(ReferringRequest(**{**request.__dict__, "expressions": ["all the cars"],
                                              "out_vector": str(tmp_path / "again.gpkg")}))
    assert again.expressions[0].timing.cached                 # the session was kept across runs


def test_unknown_referring_engine_is_an_input_error(tmp_path, scene):
    with pytest.raises(InputError, match="Unknown referring engine"):
        run_referring(ReferringRequest(raster=scene, expressions=["the pond"], engine="sam4",
                                       out_vector=str(tmp_path / "o.gpkg")))


def test_cli_refer_with_sam3(tmp_path, scene, tiny_sam3_json):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "drseg", "refer", scene, "-e", "all the buildings",
                           "--engine", "sam3", "--sam3-model", tiny_sam3_json, "--sam3-weights",
                           "random", "--device", "cpu", "--out", str(tmp_path / "o.gpkg"), "--quiet"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    columns, srs, _ = _fields(tmp_path / "o.gpkg")
    assert {"expression", "score", "area_m2"} <= set(columns) and srs == 32632
