"""What a run imports ahead in its worker thread (core.segment.model_libraries and
core.refer.run.model_libraries, imported by qgis_bridge.engine.import_model_libraries under
core.background_imports): each engine's own libraries too (DINO's timm, SAM 3's transformers
model), so a first DR-Seg or SAM 3 run keeps QGIS's event loop running like a first CLIP run."""
from __future__ import annotations

import textwrap

import pytest

from support.bare_qgis import run_script, script_env
from support.rasters import write_halves_raster
from drseg.core.models.registry import CLIP_LIBRARIES, DINO_LIBRARIES, SAM3_LIBRARIES, SAM_LIBRARIES
from drseg.core.refer.run import ReferringRequest, model_libraries as refer_libraries
from drseg.core.segment import SegmentationRequest, model_libraries

SAM3_MODULE = SAM3_LIBRARIES[-1]


@pytest.fixture
def dino_file(tmp_path):
    path = tmp_path / "dino.pth"
    path.write_bytes(b"a DINO checkpoint")  # only its presence matters here
    return str(path)


def request(tmp_path, **kw):
    kw.setdefault("cache_dir", str(tmp_path / "empty-cache"))   # no DINO weights downloaded
    return SegmentationRequest(raster="scene.tif", classes="water", **kw)


@pytest.mark.parametrize("engine, method, with_dino, expected", [
    (None, "clip", True, CLIP_LIBRARIES),
    (None, "auto", False, CLIP_LIBRARIES),                      # falls back to dense CLIP
    (None, "auto", True, CLIP_LIBRARIES + DINO_LIBRARIES),      # DR-Seg: DINO is set up
    (None, "drseg", True, CLIP_LIBRARIES + DINO_LIBRARIES),
    (None, "drseg", False, CLIP_LIBRARIES + DINO_LIBRARIES),    # refused by the run; named anyway
    ("drseg", "auto", True, CLIP_LIBRARIES + DINO_LIBRARIES),
    ("clip", "drseg", True, CLIP_LIBRARIES),                    # the engine decides
    ("sam3", "drseg", True, SAM3_LIBRARIES),                    # no CLIP branch, no DINO
    ("hybrid", "clip", True, SAM3_LIBRARIES),                   # SAM 3 + dense CLIP
    ("hybrid", "auto", True, SAM3_LIBRARIES + DINO_LIBRARIES),  # SAM 3 + DR-Seg
])
def test_a_segmentation_run_names_its_engines_libraries(tmp_path, dino_file, engine, method,
                                                       with_dino, expected):
    libraries = model_libraries(request(tmp_path, engine=engine, method=method,
                                        dino_weights=dino_file if with_dino else None))
    assert libraries == expected
    assert libraries[0] == "torch" and len(set(libraries)) == len(libraries)


def test_a_referring_run_names_its_engines_libraries():
    def libraries(engine):
        return refer_libraries(ReferringRequest(raster="r.tif", expressions=["x"],
                                                out_vector="o.gpkg", engine=engine))

    assert libraries("sam") == CLIP_LIBRARIES + SAM_LIBRARIES
    assert libraries("sam3") == SAM3_LIBRARIES


def test_an_optional_library_that_fails_to_import_is_left_to_the_run(monkeypatch):
    """Only the engine's required packages are a dependency problem here; a model's own library
    (e.g. a transformers without SAM 3) fails in the run, which names the model."""
    from drseg.qgis_bridge import engine

    engine.import_model_libraries(("json", "drseg_no_such_module.sub"))   # no error
    with pytest.raises(engine.MissingDependencies):
        engine.import_model_libraries(("torch.drseg_no_such_module",))


# A fresh process: the first SAM 3 run of a session, through the dock's task; each heavy module
# notes where it was first executed (main thread? inside the worker's background_imports?).
SCRIPT = """
import time
from support.bare_qgis import print_report, record_first_imports, start_bare_qgis
first = record_first_imports({heavy!r})
app, iface = start_bare_qgis()
from drseg.core.segment import SegmentationRequest
from drseg.qgis_bridge import tasks
request = SegmentationRequest(raster={raster!r}, classes="building; water", out_vector={output!r},
                              engine="sam3", sam3_model={sam3!r}, sam3_weights="random",
                              device="cpu", cache_dir={cache!r})
finished = []
task = tasks.start(tasks.SegmentationTask(request, on_finished=finished.append))
deadline = time.monotonic() + 240
while not finished and time.monotonic() < deadline:
    app.processEvents()
    time.sleep(0.01)
print_report(dict(first=first, ok=task.succeeded, error=task.error))
app.exitQgis()
"""


def test_a_first_sam3_run_imports_its_model_libraries_protected(tmp_path, tiny_sam3_json):
    heavy = ("torch", "open_clip", SAM3_MODULE)
    script = SCRIPT.format(heavy=heavy, raster=write_halves_raster(tmp_path / "scene.tif"),
                           output=str(tmp_path / "result.gpkg"), sam3=tiny_sam3_json,
                           cache=str(tmp_path / "cache"))
    env = script_env(DRSEG_CONFIG=str(tmp_path / "s.json"), DRSEG_CACHE_DIR=str(tmp_path / "cache"))
    report = run_script(textwrap.dedent(script), tmp_path, env)
    assert report["ok"], report["error"]
    assert set(report["first"]) == set(heavy), report["first"]
    for name, where in report["first"].items():
        assert not where["main"] and where["protected"], (name, where)
