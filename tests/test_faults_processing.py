"""A representative part of the fault matrix (tests/test_faults.py) through Processing: each case
is a QgsProcessingException with the engine's one-line message, no traceback in the log, no
changed input and nothing left beside the outputs. One case is one line of CASES."""
from __future__ import annotations

import hashlib
import os

import pytest
from conftest_qgis import (drseg_provider, files_under, isolated_settings,  # noqa: F401
                           run_algorithm, tiny_clip, write_raster)
from qgis.core import QgsProcessingException, QgsProcessingFeedback

from test_faults import build_nan_weights, make_read_only, truncated_raster, _umount

ALG = "drseg:openvocabsegmentation"


def _digest(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


class _Place:
    def __init__(self, tmp):
        self.extra = {}
        self.tmp = tmp


# (name, prepare(tmp_path) -> parameter overrides, message substring, files that must not change)
CASES = [
    ("truncated GeoTIFF", lambda tmp: {"INPUT": truncated_raster(tmp / "cut.tif")},
     "cannot be read", ()),
    ("class raster is the input", lambda tmp: {"OUTPUT_RASTER": str(tmp / "scene.tif")},
     "is the input", ("scene.tif",)),
    ("output folder read-only", lambda tmp: {"OUTPUT": make_read_only(tmp / "ro") + "/o.gpkg"},
     "not writable", ()),
    ("NaN weights", lambda tmp: _nan_weights(tmp), "NaN or infinity", ()),
    ("class raster folder read-only",
     lambda tmp: {"OUTPUT_RASTER": make_read_only(tmp / "ro") + "/o.tif"}, "not writable", ()),
]


def _nan_weights(tmp):
    place = _Place(tmp)
    build_nan_weights(place, tmp)
    return {"CLIP_WEIGHTS": place.extra["nan"]}


@pytest.mark.parametrize("name,prepare,message,unchanged", CASES, ids=[c[0] for c in CASES])
def test_fault_through_processing(name, prepare, message, unchanged, drseg_provider, tiny_clip,
                                  tmp_path):
    from qgis.core import QgsApplication

    raster = write_raster(tmp_path / "scene.tif")
    try:
        overrides = prepare(tmp_path)
        alg = QgsApplication.processingRegistry().algorithmById(ALG)
        known = {p.name() for p in alg.parameterDefinitions()}
        if not set(overrides) <= known:
            pytest.skip(f"the algorithm has no {sorted(set(overrides) - known)} parameter")
        before = {p: _digest(tmp_path / p) for p in unchanged}
        parameters = {"INPUT": raster, "CLASSES": "building,roof; water", "CLIP_MODEL": tiny_clip,
                      "CLIP_WEIGHTS": "random", "DEVICE": 1, "OUTPUT": str(tmp_path / "polygons.gpkg")}
        parameters.update(overrides)
        feedback = QgsProcessingFeedback()
        with pytest.raises(QgsProcessingException) as failure:
            run_algorithm(ALG, parameters, feedback=feedback)
        text = f"{failure.value}\n{feedback.textLog()}"
        # Errors found before the run (prepareAlgorithm) reach the user through the log, under
        # QGIS's own "There were errors executing the algorithm."; later ones in the exception.
        assert message in text, text
        assert "Traceback" not in text
        assert {p: _digest(tmp_path / p) for p in unchanged} == before
        assert not os.path.exists(tmp_path / "polygons.gpkg")
        assert [f for f in files_under(tmp_path) if ".drseg-" in f] == []
    finally:
        if os.path.ismount(tmp_path / "ro"):
            _umount(tmp_path / "ro")
