"""processing/base.py: what the three algorithms share, and the one-way dependency
processing → qgis_bridge → core (Processing never loads the dock's widgets)."""
from __future__ import annotations

import ast
import glob
import os
import subprocess
import sys

import pytest
from conftest_qgis import REPO_ROOT, drseg_provider, isolated_settings  # noqa: F401
from qgis.core import QgsProcessingException

from drseg.core.errors import InputError, ModelError, RunCancelled
from drseg.processing.base import CANCELLED, engine_errors, gpkg_destination
from drseg.qgis_bridge.engine import MissingDependencies


def imported_modules(path):
    """Absolute dotted names (relative to the package root `drseg`) a file imports."""
    package = os.path.relpath(os.path.dirname(path), REPO_ROOT).replace(os.sep, ".").split(".")
    names = []
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                names.append(".".join(base + ([node.module] if node.module else [])))
            else:
                names.append(node.module or "")
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("room", ["processing", "qgis_bridge"])
def test_processing_and_the_bridge_import_no_widget_module(room):
    files = glob.glob(os.path.join(REPO_ROOT, room, "*.py"))
    assert files
    for path in files:
        for name in imported_modules(path):
            assert not (name == "ui" or name.startswith("ui.") or name.startswith("drseg.ui")), (
                f"{os.path.relpath(path, REPO_ROOT)} imports {name}")


def test_loading_the_algorithms_loads_no_widget_module(tmp_path):
    script = ("import sys\n"
              "from qgis.core import QgsApplication\n"
              "app = QgsApplication([], False)\n"
              "app.initQgis()\n"
              "from drseg.processing.provider import DrSegProvider\n"
              "provider = DrSegProvider()\n"
              "QgsApplication.processingRegistry().addProvider(provider)\n"
              "names = sorted(a.id() for a in provider.algorithms())\n"
              "print('ALGS', ' '.join(names))\n"
              "print('UI', ' '.join(sorted(m for m in sys.modules if m.startswith('drseg.ui'))))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=str(tmp_path), capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, QT_QPA_PLATFORM="offscreen"))
    lines = dict(line.split(" ", 1) if " " in line else (line, "")
                 for line in done.stdout.splitlines() if line.startswith(("ALGS", "UI")))
    assert lines.get("ALGS") == ("drseg:adaptmodel drseg:openvocabsegmentation "
                                 "drseg:referringsegmentation drseg:scoreclassification"), \
        done.stdout + done.stderr
    assert lines.get("UI") == ""


@pytest.mark.parametrize("error, message", [
    (RunCancelled(), CANCELLED),
    (InputError("The class prompt is empty"), "The class prompt is empty"),
    (ModelError("The DINO weights 'x' are not downloaded"), "The DINO weights 'x' are not downloaded"),
    (MissingDependencies("DR-Seg needs the Python packages torch"),
     "DR-Seg needs the Python packages torch"),
])
def test_engine_errors_become_one_line_processing_errors(error, message):
    with pytest.raises(QgsProcessingException) as caught:
        with engine_errors():
            raise error
    assert str(caught.value) == message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # no chained traceback


def test_a_cancelled_run_can_be_named_and_bugs_are_not_disguised():
    with pytest.raises(QgsProcessingException, match="^Scoring cancelled$"):
        with engine_errors(cancelled="Scoring cancelled"):
            raise RunCancelled()
    with pytest.raises(ZeroDivisionError):       # a bug keeps its traceback for the log
        with engine_errors():
            1 / 0


@pytest.mark.parametrize("dest, expected", [
    ("/data/out.gpkg", ("/data/out.gpkg", None)),
    ("ogr:dbname='/data/out.gpkg' table=\"ponds\" (geom)", ("/data/out.gpkg", "ponds")),
    ("ogr:dbname='/data/out.gpkg'", ("/data/out.gpkg", None)),
])
def test_gpkg_destination_reads_file_and_table(dest, expected):
    assert gpkg_destination(dest) == expected


def test_identity_comes_from_the_class_attributes(drseg_provider):
    algorithms = {a.name(): a for a in drseg_provider.algorithms()}
    assert set(algorithms) == {"adaptmodel", "openvocabsegmentation", "referringsegmentation",
                               "scoreclassification"}
    for name, algorithm in algorithms.items():
        copy = algorithm.createInstance()
        assert type(copy) is type(algorithm) and copy is not algorithm
        assert (copy.name(), copy.displayName(), copy.shortHelpString()) == (
            name, algorithm.DISPLAY_NAME, algorithm.HELP)
        assert algorithm.displayName() and algorithm.shortHelpString() and "drseg" in algorithm.tags()
    assert {a.groupId() for a in algorithms.values()} == {"segmentation", "evaluation", "adaptation"}
    assert algorithms["scoreclassification"].group() == "Evaluation"
