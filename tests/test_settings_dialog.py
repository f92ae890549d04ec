"""The settings dialog offscreen: load, edit, validate, save; environment overrides; the device
check; the model list with cached state, a download from a file:// mirror and an import."""
from __future__ import annotations


import pytest
import torch
from conftest_qgis import wait_for
from qgis.PyQt.QtWidgets import QDialog, QDialogButtonBox

from drseg.core import disk_cache
from drseg.core import settings as st
from drseg.core.models.catalog import list_models
from drseg.core.settings import Settings, load_settings, save_settings
from drseg.qgis_bridge import tasks as bridge_tasks
from drseg.ui import settings_dialog as sd
from drseg.ui.settings_dialog import SettingsDialog


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in (st.CONFIG_ENV, st.CACHE_ENV, st.MIRROR_ENV):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def make_dialog(qgis_app, tmp_path):
    dialogs = []

    def make(**kw):
        kw.setdefault("path", str(tmp_path / "settings.json"))
        kw.setdefault("device_describer", lambda name: f"described {name}")
        dialog = SettingsDialog(**kw)
        dialogs.append(dialog)
        return dialog

    yield make
    for dialog in dialogs:
        dialog._detach_task()
        dialog.deleteLater()


def save_button(dialog):
    return dialog.button_box.button(QDialogButtonBox.StandardButton.Save)


def test_defaults_shown_and_saved(make_dialog, tmp_path):
    dialog = make_dialog()
    assert dialog.load_problem is None
    assert dialog.settings() == Settings()
    assert dialog.overlap_label.text().startswith("112 px")
    saved = []
    dialog.settingsSaved.connect(saved.append)
    save_button(dialog).click()
    assert dialog.result() == QDialog.DialogCode.Accepted
    assert saved == [Settings()]
    assert load_settings(str(tmp_path / "settings.json")) == Settings()


def test_edits_round_trip_through_the_file(make_dialog, tmp_path):
    path = str(tmp_path / "settings.json")
    save_settings(Settings(device="cpu", window=336, stride=224, extra={"later": 1}), path)
    dialog = make_dialog()
    assert dialog.device_combo.currentData() == "cpu" and dialog.window_spin.value() == 336
    dialog.cache_dir_widget.setFilePath(str(tmp_path / "models"))
    dialog.mirror_edit.setText("https://mirror.example/models")
    dialog.clip_weights_combo.setEditText("remoteclip-vit-b-32")
    dialog.dino_model_combo.setCurrentText("dinov2_vitb14")
    dialog.dino_weights_combo.setEditText("dinov2-vit-b14")
    dialog.sam_model_combo.setCurrentText("vit_l")
    dialog.sam_weights_combo.setEditText("sam-vit-l")
    dialog.device_combo.setCurrentIndex(dialog.device_combo.findData("cuda"))
    dialog.block_spin.setValue(1024)
    dialog.batch_spin.setValue(4)
    assert not dialog.fast_check.isChecked()
    dialog.fast_check.setChecked(True)                 # 336-px windows: fast stride 252
    assert "fast mode: stride 252 px" in dialog.overlap_label.text()
    save_button(dialog).click()
    assert dialog.result() == QDialog.DialogCode.Accepted, dialog.errors_label.text()
    loaded = load_settings(path)
    assert loaded.fast is True
    assert (loaded.cache_dir, loaded.mirror_url, loaded.clip_weights) == \
        (str(tmp_path / "models"), "https://mirror.example/models", "remoteclip-vit-b-32")
    assert (loaded.dino_model, loaded.dino_weights, loaded.sam_model, loaded.sam_weights) == \
        ("dinov2_vitb14", "dinov2-vit-b14", "vit_l", "sam-vit-l")
    assert (loaded.device, loaded.window, loaded.stride, loaded.block, loaded.batch_size) == \
        ("cuda", 336, 224, 1024, 4)
    assert loaded.extra == {"later": 1}


def test_invalid_values_are_listed_and_nothing_is_saved(make_dialog, tmp_path):
    dialog = make_dialog()
    dialog.show()
    dialog.window_spin.setValue(128)
    dialog.stride_spin.setValue(200)
    assert "gaps" in dialog.overlap_label.text()
    dialog.dino_model_combo.setCurrentText("dinov2_vits14")    # weights stay dino-vit-b8
    dialog.sam_weights_combo.setEditText(str(tmp_path / "missing_sam.pth"))
    save_button(dialog).click()
    assert dialog.isVisible() and dialog.result() != QDialog.DialogCode.Accepted
    text = dialog.errors_label.text()
    assert "Stride (200)" in text and "not the DINO model 'dinov2_vits14'" in text
    assert "missing_sam.pth' does not exist" in text
    assert not (tmp_path / "settings.json").exists()
    dialog.button_box.button(QDialogButtonBox.StandardButton.RestoreDefaults).click()
    assert dialog.settings() == Settings() and not dialog.errors_label.isVisibleTo(dialog)
    dialog.close()


def test_broken_file_opens_with_defaults_and_says_so(make_dialog, tmp_path):
    (tmp_path / "settings.json").write_text("{oops")
    dialog = make_dialog()
    assert dialog.settings() == Settings()
    assert "not valid JSON" in dialog.errors_label.text()


def test_environment_overrides_are_shown_and_not_saved(make_dialog, tmp_path, monkeypatch):
    monkeypatch.setenv(st.CACHE_ENV, str(tmp_path / "env_cache"))
    save_settings(Settings(cache_dir=str(tmp_path / "mine")), str(tmp_path / "settings.json"))
    dialog = make_dialog()
    assert not dialog.cache_dir_widget.isEnabled() and dialog.mirror_edit.isEnabled()
    assert st.CACHE_ENV in dialog.override_label.text()
    assert dialog.cache_dir_widget.filePath() == str(tmp_path / "mine")
    save_button(dialog).click()
    assert load_settings(str(tmp_path / "settings.json")).cache_dir == str(tmp_path / "mine")


def test_device_check_describes_the_chosen_device(make_dialog):
    """Described in a background task when the dialog opens and when the choice changes."""
    asked = []
    dialog = make_dialog(device_describer=lambda name: asked.append(name) or f"{name} is fine")
    assert wait_for(lambda: dialog.device_info_label.text() == "auto is fine", 30)
    dialog.device_combo.setCurrentIndex(dialog.device_combo.findData("cpu"))
    assert wait_for(lambda: dialog.device_info_label.text() == "cpu is fine", 30)
    assert asked[-1] == "cpu"
    dialog.detect_button.click()
    assert dialog.device_info_label.text() == sd.CHECKING_DEVICE   # until the task has answered
    assert wait_for(lambda: dialog.device_info_label.text() == "cpu is fine", 30)
    assert asked == ["auto", "cpu", "cpu"]


def test_only_the_current_choice_is_described(make_dialog):
    """A check of an earlier choice that answers late does not overwrite the current one."""
    import threading

    entered, release = threading.Event(), threading.Event()

    def slow_for_auto(name):
        if name == "auto":
            entered.set()
            release.wait(30)
        return f"{name} is fine"

    dialog = make_dialog(device_describer=slow_for_auto)
    first = dialog.device_task
    assert wait_for(entered.is_set, 30)                  # the check of 'auto' is under way
    dialog.device_combo.setCurrentIndex(dialog.device_combo.findData("cpu"))
    assert wait_for(lambda: dialog.device_info_label.text() == "cpu is fine", 30)
    release.set()
    assert wait_for(lambda: first not in bridge_tasks.running(), 30)
    assert dialog.device_info_label.text() == "cpu is fine" and first.text == "auto is fine"


def test_the_default_describer_names_the_device():
    assert sd.describe_device("cpu") == "CPU: chosen in the settings"
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in sd.describe_device("cuda")


def torch_checkpoint(path):
    torch.save({"blocks.0.weight": torch.zeros(3)}, str(path))
    return path


def test_model_list_shows_cached_state(make_dialog, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    dialog = make_dialog(settings=Settings(cache_dir=str(cache)))
    names = [e.name for e in list_models()]
    assert dialog.model_tree.topLevelItemCount() == len(names)
    assert all(dialog.model_state(n) == sd.STATE_MISSING for n in names)
    entry = next(e for e in list_models("dino") if e.name == "dino-vit-s8")
    torch_checkpoint(cache / entry.file)
    sam = next(e for e in list_models("sam") if e.name == "sam-vit-b")
    (cache / (sam.download_name + ".part")).write_bytes(b"12345")
    (cache / sam.file).write_bytes(b"too short")        # wrong size: not counted as downloaded
    dialog.refresh_button.click()
    assert dialog.model_state("dino-vit-s8") == sd.STATE_DOWNLOADED
    assert dialog.model_state("sam-vit-b") == sd.STATE_PARTIAL
    assert dialog.model_state("dino-vit-b8") == sd.STATE_MISSING
    assert not dialog.download_button.isEnabled()          # nothing selected yet
    dialog.select_model("dino-vit-b8")
    assert dialog.download_button.isEnabled() and dialog.import_button.isEnabled()


def test_download_from_a_file_mirror_runs_in_the_background(make_dialog, tmp_path):
    mirror, cache = tmp_path / "mirror", tmp_path / "cache"
    mirror.mkdir()
    entry = next(e for e in list_models("dino") if e.name == "dino-vit-s8")
    torch_checkpoint(mirror / entry.download_name)
    dialog = make_dialog(settings=Settings(cache_dir=str(cache), mirror_url=mirror.as_uri()))
    finished = []
    dialog.transferFinished.connect(finished.append)
    dialog.select_model("dino-vit-s8")
    dialog.download_button.click()
    assert dialog.task is not None and dialog.cancel_transfer_button.isEnabled()
    assert not dialog.download_button.isEnabled()
    assert wait_for(lambda: finished, 30), dialog.transfer_label.text()
    task = finished[0]
    assert task.error is None and task.path == str(cache / entry.file)
    assert dialog.model_state("dino-vit-s8") == sd.STATE_DOWNLOADED
    assert dialog.transfer_label.text().startswith("Done:")
    assert dialog.download_button.isEnabled() and not dialog.cancel_transfer_button.isEnabled()


def test_failed_download_is_reported_and_leaves_nothing(make_dialog, tmp_path):
    mirror, cache = tmp_path / "empty_mirror", tmp_path / "cache"
    mirror.mkdir()
    dialog = make_dialog(settings=Settings(cache_dir=str(cache), mirror_url=mirror.as_uri()))
    finished = []
    dialog.transferFinished.connect(finished.append)
    dialog.select_model("dino-vit-b8")
    dialog.download_selected()
    assert wait_for(lambda: finished, 30)
    assert finished[0].error
    assert dialog.transfer_label.text().startswith("Download of dino-vit-b8 failed: ")
    assert dialog.model_state("dino-vit-b8") == sd.STATE_MISSING
    assert not cache.exists() or not any(cache.iterdir())


def test_bad_mirror_is_refused_before_downloading(make_dialog, tmp_path):
    dialog = make_dialog(settings=Settings(cache_dir=str(tmp_path)))
    dialog.mirror_edit.setText("ftp://nope")
    dialog.select_model("dino-vit-b8")
    assert dialog.download_selected() is None and dialog.task is None
    assert "must start with http://" in dialog.transfer_label.text()


def test_import_of_a_file_on_disk(make_dialog, tmp_path, monkeypatch):
    from support.tiny_models import TINY_DINO_DIMS
    from drseg.core.models import weights_fit
    from drseg.core.drseg.dino import build_timm_vit

    def tiny_meta(entry):  # the real DINO ViT-B/8 is 340 MB: the same definition, tiny widths
        with torch.device("meta"):
            return build_timm_vit(weights_fit.dino_name(entry.architecture), **TINY_DINO_DIMS)

    monkeypatch.setattr(weights_fit, "build_meta_model", tiny_meta)
    cache = tmp_path / "cache"
    dialog = make_dialog(settings=Settings(cache_dir=str(cache)))
    finished = []
    dialog.transferFinished.connect(finished.append)
    dialog.select_model("dino-vit-b8")
    source = tmp_path / "my_dino.pth"
    torch.save(build_timm_vit("dino_vitb8", **TINY_DINO_DIMS).state_dict(), str(source))
    assert dialog.import_selected(str(source)) is not None
    assert wait_for(lambda: finished, 30)
    assert finished[0].error is None, finished[0].error
    assert dialog.model_state("dino-vit-b8") == sd.STATE_DOWNLOADED
    assert source.exists()                                   # the original is not moved


def slow_download(started):
    from drseg.core.errors import RunCancelled

    def download(name, cache, mirror=None, progress=None, cancelled=None, status=None):
        started.append(name)
        for done in range(1000):
            if cancelled():
                raise RunCancelled()
            progress(done, 1000)
            import time
            time.sleep(0.01)
        raise AssertionError("the transfer was not cancelled")

    return download


def test_cancelling_a_transfer(make_dialog, tmp_path, monkeypatch):
    from drseg.core.models import download

    started = []
    monkeypatch.setattr(download, "download", slow_download(started))
    dialog = make_dialog(settings=Settings(cache_dir=str(tmp_path)))
    finished = []
    dialog.transferFinished.connect(finished.append)
    dialog.select_model("sam-vit-h")
    dialog.download_button.click()
    assert wait_for(lambda: started and dialog.transfer_progress.value() > 0, 10)
    dialog.cancel_transfer_button.click()
    assert wait_for(lambda: finished, 10)
    assert finished[0].was_cancelled and dialog.task is None
    assert dialog.transfer_label.text().startswith("Cancelled")


def test_closing_the_dialog_cancels_and_detaches_the_transfer(make_dialog, tmp_path, monkeypatch):
    from drseg.core.models import download

    started = []
    monkeypatch.setattr(download, "download", slow_download(started))
    dialog = make_dialog(settings=Settings(cache_dir=str(tmp_path)))
    calls = []
    dialog.transferFinished.connect(calls.append)
    dialog.select_model("sam-vit-h")
    task = dialog.download_selected()
    assert wait_for(lambda: started, 10)
    dialog.reject()
    assert task in bridge_tasks.running() and dialog.task is None   # still kept alive
    assert wait_for(lambda: task not in bridge_tasks.running(), 10)
    assert task.was_cancelled and calls == []     # the closed dialog is not called back


def test_embedding_cache_settings_and_the_clear_button(make_dialog, tmp_path, monkeypatch):
    monkeypatch.delenv(disk_cache.EMBEDDINGS_ENV, raising=False)
    folder = tmp_path / "models" / disk_cache.SUBFOLDER
    stored = disk_cache.DiskCache(str(folder))
    stored.put("t", "a", {"x": torch.zeros(10)})
    stored.put("t", "b", {"x": torch.ones(10)})
    path = str(tmp_path / "settings.json")
    save_settings(Settings(cache_dir=str(tmp_path / "models"), embedding_cache=False,
                           embedding_cache_mb=512), path)
    dialog = make_dialog(path=path)
    assert not dialog.embedding_cache_check.isChecked()
    assert dialog.embedding_cache_spin.value() == 512
    assert dialog.cache_info_label.text().startswith("2 entries")
    assert dialog.clear_embedding_cache() == 2 and stored.info().entries == 0
    assert dialog.cache_info_label.text().startswith("0 entries")
    dialog.embedding_cache_check.setChecked(True)
    dialog.embedding_cache_spin.setValue(1024)
    save_button(dialog).click()
    saved = load_settings(path)
    assert saved.embedding_cache and saved.embedding_cache_mb == 1024


def test_the_dialog_fits_a_1366x768_screen_with_save_visible(make_dialog):
    """Its form scrolls; the buttons stay below it, inside a window the height a 1366×768 screen
    leaves (about 700 px)."""
    from qgis.PyQt.QtWidgets import QScrollArea

    dialog = make_dialog()
    assert dialog.minimumSizeHint().height() <= 700
    dialog.resize(720, 700)
    dialog.show()
    from qgis.core import QgsApplication

    QgsApplication.processEvents()
    save = save_button(dialog)
    assert save.isVisible()
    bottom = save.mapTo(dialog, save.rect().bottomLeft()).y()
    assert 0 < bottom <= dialog.height()
    (scroll,) = [s for s in dialog.findChildren(QScrollArea) if s.widget() is not None
                 and s.widget().isAncestorOf(dialog.window_spin)]
    assert not scroll.isAncestorOf(save)
    dialog.close()
