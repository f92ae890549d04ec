"""The sam3 and hybrid engines through the front ends, with the real SAM 3 and CLIP architectures
at tiny size (random weights): `python -m drseg segment --engine ...` and the Processing algorithm
drseg:openvocabsegmentation (output grid, CRS, fields, the engine reported back)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from conftest_qgis import drseg_provider, isolated_settings, run_algorithm, tiny_clip  # noqa: F401
from conftest_qgis import write_raster as write_qgis_raster
from qgis.core import QgsApplication, QgsProcessingException, QgsVectorLayer

from conftest import write_raster

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALG = "drseg:openvocabsegmentation"


def drseg(*args, **env_extra):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "drseg", *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.parametrize("engine", ["sam3", "hybrid"])
def test_cli_engine_writes_outputs_on_the_input_grid(tmp_path, tiny_clip_config, tiny_sam3_json, engine):
    data = np.random.default_rng(0).integers(0, 255, (3, 120, 140), dtype=np.uint8)
    path = write_raster(tmp_path / "in.tif", data, crs="EPSG:3857")
    proc = drseg("segment", path, "--classes", "building,roof; water", "--engine", engine,
                 "--out", str(tmp_path / "o.gpkg"), "--raster-out", str(tmp_path / "o.tif"),
                 "--sam3-model", tiny_sam3_json, "--sam3-weights", "random", "--method", "clip",
                 "--clip-model", tiny_clip_config, "--clip-weights", "random", "--device", "cpu",
                 "--threshold", "0", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert f"{engine} on cpu" in proc.stdout
    with rasterio.open(tmp_path / "o.tif") as out, rasterio.open(path) as ref:
        assert (out.width, out.height, out.transform, out.crs) == (ref.width, ref.height,
                                                                   ref.transform, ref.crs)
        assert set(np.unique(out.read(1))) <= {1, 2}
    layer = QgsVectorLayer(str(tmp_path / "o.gpkg"), "o", "ogr")
    assert layer.isValid() and layer.crs().authid() == "EPSG:3857"
    assert {"class", "class_id", "score", "area_m2"} <= set(layer.fields().names())
    assert sum(f["area_m2"] for f in layer.getFeatures()) == pytest.approx(
        120 * 140 * 0.25, rel=1e-6)  # every pixel (0.5 m) is in exactly one polygon


def test_cli_without_sam3_weights_says_how_to_import_them(tmp_path):
    path = write_raster(tmp_path / "in.tif", np.zeros((3, 20, 20), np.uint8))
    proc = drseg("segment", path, "--classes", "water", "--engine", "sam3",
                 "--out", str(tmp_path / "o.gpkg"), "--quiet",
                 DRSEG_CACHE_DIR=str(tmp_path / "cache"), DRSEG_MODEL_MIRROR="http://127.0.0.1:9/")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("error: ") and "python -m drseg models import sam3 FILE" in message
    assert "SAM License" in message
    assert not os.path.exists(tmp_path / "o.gpkg")


def test_cli_rejects_an_unknown_engine(tmp_path):
    proc = drseg("segment", "x.tif", "--classes", "water", "--engine", "sam4", "--out", "o.gpkg")
    assert proc.returncode == 2 and "invalid choice: 'sam4'" in proc.stderr


# --------------------------------------------------------------- Processing

def test_processing_offers_the_engines(drseg_provider):  # noqa: F811
    alg = QgsApplication.processingRegistry().algorithmById(ALG)
    assert len(alg.parameterDefinition("ENGINE").options()) == 3
    assert alg.parameterDefinition("SAM3_MODEL").defaultValue() == "sam3"
    assert "SAM License" in alg.shortHelpString()


@pytest.mark.parametrize("engine_index, engine", [(1, "sam3"), (2, "hybrid")])
def test_processing_runs_the_engine(drseg_provider, tiny_clip, tiny_sam3_json, tmp_path,  # noqa: F811
                                    engine_index, engine):
    raster = write_qgis_raster(tmp_path / "scene.tif", width=96, height=64)
    out_raster = str(tmp_path / "classes.tif")
    result = run_algorithm(ALG, {
        "INPUT": raster, "CLASSES": "building,roof; water", "CLIP_MODEL": tiny_clip,
        "CLIP_WEIGHTS": "random", "DEVICE": 1, "METHOD": 2, "ENGINE": engine_index,
        "SAM3_MODEL": tiny_sam3_json, "SAM3_WEIGHTS": "random", "THRESHOLD": 0.0,
        "OUTPUT": str(tmp_path / "polygons.gpkg"), "OUTPUT_RASTER": out_raster})
    assert result["USED_METHOD"] == engine
    layer = QgsVectorLayer(result["OUTPUT"], "polygons", "ogr")
    assert layer.isValid() and layer.crs().authid() == "EPSG:32633"
    assert {"class", "class_id", "score", "area_m2"} <= set(layer.fields().names())
    assert {f["class"] for f in layer.getFeatures()} <= {"building", "water"}
    assert sum(f["area_m2"] for f in layer.getFeatures()) == pytest.approx(96 * 64)
    with rasterio.open(raster) as src, rasterio.open(out_raster) as out:
        assert (out.width, out.height, out.transform, out.crs) == (src.width, src.height,
                                                                   src.transform, src.crs)


def test_processing_sam3_errors_are_processing_exceptions(drseg_provider, tiny_clip, tmp_path):  # noqa: F811
    raster = write_qgis_raster(tmp_path / "scene.tif", width=32, height=32)
    with pytest.raises(QgsProcessingException, match="Unknown SAM 3 model"):
        run_algorithm(ALG, {"INPUT": raster, "CLASSES": "water", "DEVICE": 1, "ENGINE": 1,
                            "SAM3_MODEL": "sam4", "SAM3_WEIGHTS": "random",
                            "OUTPUT": str(tmp_path / "polygons.gpkg")})
    assert not os.path.exists(tmp_path / "polygons.gpkg")


def test_processing_referring_with_sam3(drseg_provider, tiny_sam3_json, tmp_path):  # noqa: F811
    from drseg.core.refer.sessions import SESSIONS

    SESSIONS.clear()
    raster = write_qgis_raster(tmp_path / "scene.tif", width=96, height=64)
    alg = QgsApplication.processingRegistry().algorithmById("drseg:referringsegmentation")
    assert len(alg.parameterDefinition("ENGINE").options()) == 2
    result = run_algorithm("drseg:referringsegmentation", {
        "INPUT": raster, "EXPRESSION": "all the buildings", "DEVICE": 1, "ENGINE": 1,
        "SAM3_MODEL": tiny_sam3_json, "SAM3_WEIGHTS": "random",
        "OUTPUT": str(tmp_path / "objects.gpkg")})
    layer = QgsVectorLayer(result["OUTPUT"], "objects", "ogr")
    assert layer.isValid() and layer.crs().authid() == "EPSG:32633"
    assert {"expression", "score", "area_m2"} <= set(layer.fields().names())
