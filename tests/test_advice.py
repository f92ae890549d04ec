"""Offline and missing-file messages speak to the front end in use: command lines get commands,
QGIS gets its settings dialog (Import file…) and field names; a missing weights path is said so."""
from __future__ import annotations

import pytest

from conftest_qgis import drseg_provider, isolated_settings  # noqa: F401 (fixtures)

from drseg.core.models import download
from drseg.core.advice import QGIS, speaking_to
from drseg.core.models.clip import load_clip
from drseg.core.errors import InputError, ModelError


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("DRSEG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(download, "server_reachable", lambda url, *a, **k: False)


def offline_message(front_end=None) -> str:
    with pytest.raises(ModelError) as failure:
        if front_end is None:
            load_clip("ViT-B-32", "remoteclip-vit-b-32")
        else:
            with speaking_to(front_end):
                load_clip("ViT-B-32", "remoteclip-vit-b-32")
    return str(failure.value)


def test_offline_advice_on_the_command_line(offline):
    text = offline_message()
    assert "python -m drseg models download remoteclip-vit-b-32" in text
    assert "python -m drseg models import remoteclip-vit-b-32 FILE" in text
    assert "Import file…" not in text and "QGIS" not in text


def test_offline_advice_in_qgis(offline):
    text = offline_message(QGIS)
    assert "Import file… in DR-Seg settings › Download models…" in text
    assert "python -m drseg" not in text and "--clip-weights" not in text


def test_the_advice_belongs_to_the_thread_that_asks(offline):
    import threading

    seen = {}
    with speaking_to(QGIS):
        other = threading.Thread(target=lambda: seen.setdefault("text", offline_message()))
        other.start()
        other.join()
    assert "python -m drseg models import" in seen["text"]


def test_a_failed_download_mentions_import_file_in_qgis(monkeypatch, tmp_path):
    import urllib.error

    from drseg.core.models.catalog import get_model

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(download.urllib.request, "urlopen", refuse)
    with speaking_to(QGIS), pytest.raises(ModelError) as failure:
        download.download(get_model("remoteclip-vit-b-32"), str(tmp_path))
    assert "Could not reach" in str(failure.value) and "Import file…" in str(failure.value)


@pytest.mark.parametrize("path", ["/nowhere/clip.pt", "~/missing/model.safetensors",
                                  "weights/clip.bin", "clip.pth"])
def test_a_missing_weights_path_is_file_not_found(path):
    with pytest.raises(InputError) as failure:
        load_clip("ViT-B-16", path)
    assert str(failure.value) == f"CLIP weights file not found: {path}"


def test_processing_offline_says_what_to_do_in_qgis(offline, tmp_path, drseg_provider):
    from support.rasters import write_halves_raster as write_raster
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    raster = write_raster(tmp_path / "scene.tif")
    feedback = QgsProcessingFeedback()
    import processing

    with pytest.raises(QgsProcessingException) as failure:
        processing.run("drseg:openvocabsegmentation",
                       {"INPUT": raster, "CLASSES": "water", "METHOD": 2, "DEVICE": 1,
                        "CLIP_WEIGHTS": "remoteclip-vit-b-32", "OUTPUT": "TEMPORARY_OUTPUT"},
                       feedback=feedback)
    text = f"{failure.value}\n{feedback.textLog()}"
    assert "Import file… in DR-Seg settings › Download models…" in text
    assert "python -m drseg" not in text
