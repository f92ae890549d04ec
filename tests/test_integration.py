"""What plugin.py calls: the start-up dependency check (message bar with 'Install…') and the
dialogs, against pytest-qgis's iface."""
from __future__ import annotations

import sys

import pytest
from conftest_qgis import install_buttons, plugin_iface  # noqa: F401 (a fixture)
from qgis.core import Qgis
from qgis.PyQt.QtWidgets import QDialogButtonBox

from drseg.core import dependencies, settings as st
from drseg.ui import integration
from drseg.ui.dependencies_dialog import DependenciesDialog
from drseg.ui.settings_dialog import SettingsDialog


@pytest.fixture
def iface(plugin_iface, monkeypatch, tmp_path):
    monkeypatch.setenv(st.CONFIG_ENV, str(tmp_path / "settings.json"))
    return plugin_iface


def test_nothing_missing_means_no_message_and_the_folder_on_the_path(iface, tmp_path):
    (tmp_path / "pkgs").mkdir()
    assert integration.check_dependencies_on_start(iface) == []
    assert iface.messageBar().items() == []
    assert sys.path[-1] == str(tmp_path / "pkgs")


def test_missing_package_offers_install_which_opens_the_dialog(iface, monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)
    monkeypatch.setattr(dependencies, "choose_torch_build",
                        lambda: pytest.fail("torch is not being installed"))
    assert integration.check_dependencies_on_start(iface) == ["open_clip_torch"]
    bar = iface.messageBar()
    assert len(bar.items()) == 1
    item = bar.items()[0]
    assert item.level() == Qgis.MessageLevel.Warning and "open_clip_torch" in item.text()
    # a second call (plugin reloaded) does not stack another warning
    integration.check_dependencies_on_start(iface)
    assert len(bar.items()) == 1
    buttons = install_buttons(bar)
    assert len(buttons) == 1
    buttons[0].click()
    dialog = integration._open_dialogs["dependencies"]
    assert isinstance(dialog, DependenciesDialog) and dialog.isVisible()
    assert [r.package for r in dialog.plan.requirements] == ["open_clip_torch"]
    assert "open_clip_torch" in dialog.summary_label.text()
    buttons[0].click()                                   # raises the same dialog
    assert integration._open_dialogs["dependencies"] is dialog


def test_without_iface_only_the_list_is_returned(monkeypatch, tmp_path, qgis_app):
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv(dependencies.PACKAGES_ENV, str(tmp_path))
    monkeypatch.setitem(sys.modules, "timm", None)
    assert integration.check_dependencies_on_start(None) == ["timm"]


def test_successful_install_replaces_the_warning(iface, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    integration.check_dependencies_on_start(iface)
    assert len(iface.messageBar().items()) == 1
    monkeypatch.delitem(sys.modules, "timm")              # "installed"
    integration._installed(iface, True)
    assert iface.messageBar().items() == []
    assert iface.messageBar().get_messages(Qgis.MessageLevel.Success) == [
        "DR-Seg:Python packages installed; DR-Seg is ready"]


def test_open_settings_shows_one_dialog_and_reports_saving(iface, tmp_path):
    dialog = integration.open_settings(iface)
    assert isinstance(dialog, SettingsDialog) and dialog.isVisible()
    assert dialog.path == str(tmp_path / "settings.json")
    assert integration.open_settings(iface) is dialog
    dialog.button_box.button(QDialogButtonBox.StandardButton.Save).click()
    assert (tmp_path / "settings.json").exists()
    assert "settings" not in integration._open_dialogs
    success = iface.messageBar().get_messages(Qgis.MessageLevel.Success)
    assert success == [f"DR-Seg:Settings saved to {tmp_path / 'settings.json'}"]
    assert integration.open_settings(iface) is not dialog
