"""The QGIS plugin object: a toolbar button and menu entry that toggle the dock, a settings entry,
the Processing provider, and the start-up check for missing Python packages (a message-bar warning
with an 'Install…' button). Nothing here imports torch; the engine is imported when a run starts.
Neither the dependency check nor the settings can stop the plugin from loading.
"""
from __future__ import annotations

import os
import traceback

from qgis.core import Qgis, QgsApplication, QgsMessageLog
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon

try:
    from qgis.PyQt.QtGui import QAction  # Qt6 (QGIS 4)
except ImportError:
    from qgis.PyQt.QtWidgets import QAction  # Qt5 (QGIS 3)

PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))
ICON_PATH = os.path.join(PLUGIN_DIR, "resources", "icon.svg")
MENU = "&DR-Seg"
LOG_TAG = "DR-Seg"


def _log_failure(what: str) -> None:
    """Something optional failed at start-up: say so in the log (tab DR-Seg), carry on."""
    QgsMessageLog.logMessage(f"{what} failed; the plugin works without it.\n{traceback.format_exc()}",
                             LOG_TAG, Qgis.MessageLevel.Warning)


class DrSegPlugin:
    def __init__(self, iface):
        self.iface = iface  # None under qgis_process, which only calls initProcessing()
        self.provider = None
        self.action = None
        self.settings_action = None
        self.dock = None
        self.missing_packages = []
        self._settings_dialogs = []   # dialogs whose signals reach this plugin

    # -- Processing ---------------------------------------------------------------------------
    def initProcessing(self):  # noqa: N802 (QGIS's name)
        if self.provider is not None:
            return
        try:  # the plugin-owned packages folder (pip --target) on sys.path, before any engine import
            from .qgis_bridge.engine import prepare_packages

            prepare_packages()
        except Exception:
            _log_failure("Looking for the plugin's Python packages")
        from .processing.provider import DrSegProvider

        self.provider = DrSegProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    # -- GUI ------------------------------------------------------------------------------------
    def initGui(self):  # noqa: N802 (QGIS's name)
        self.initProcessing()
        try:  # never blocks: a message-bar warning with 'Install…' when packages are missing
            from .ui.integration import check_dependencies_on_start

            self.missing_packages = check_dependencies_on_start(self.iface)
        except Exception:
            _log_failure("The start-up dependency check")
        parent = self.iface.mainWindow()
        self.action = QAction(QIcon(ICON_PATH), "DR-Seg: segment raster from text", parent)
        self.action.setObjectName("drsegToggleDock")
        self.action.setCheckable(True)
        self.action.setToolTip("Open the DR-Seg panel: type class names, get map layers")
        self.action.toggled.connect(self.set_dock_visible)
        self.iface.addToolBarIcon(self.action)
        self.iface.addPluginToMenu(MENU, self.action)
        self.settings_action = QAction(QIcon(ICON_PATH), "DR-Seg settings…", parent)
        self.settings_action.setObjectName("drsegSettings")
        self.settings_action.setToolTip("Default models, device, tiling and model cache; download "
                                        "model weights; install missing Python packages")
        self.settings_action.triggered.connect(self.open_settings)
        self.iface.addPluginToMenu(MENU, self.settings_action)

    # -- settings -----------------------------------------------------------------------------
    def open_settings(self, *_args):
        """Show the settings dialog (not modal); saved settings become the open dock's defaults."""
        from .ui.integration import open_settings

        dialog = open_settings(self.iface)
        if dialog not in self._settings_dialogs:
            self._settings_dialogs.append(dialog)
            dialog.settingsSaved.connect(self._settings_saved)
            dialog.transferFinished.connect(self._models_changed)
            dialog.finished.connect(lambda _result, d=dialog: self._forget_dialog(d))
        return dialog

    def _forget_dialog(self, dialog) -> None:
        if dialog in self._settings_dialogs:
            self._settings_dialogs.remove(dialog)

    def _settings_saved(self, settings) -> None:
        if self.dock is not None:
            self.dock.apply_settings(settings)

    def _models_changed(self, _task) -> None:
        if self.dock is not None:
            self.dock.refresh_dino_state()  # a DINO checkpoint may have arrived

    def set_dock_visible(self, visible: bool) -> None:
        if visible and self.dock is None:
            from .ui.dock import DrSegDock

            self.dock = DrSegDock(self.iface, self.iface.mainWindow())
            self.dock.visibilityChanged.connect(self._dock_visibility_changed)
            self.dock.settingsRequested.connect(self.open_settings)
            self.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)
        if self.dock is not None:
            self.dock.setVisible(visible)
            if visible:
                self.dock.raise_()

    def _dock_visibility_changed(self, visible: bool) -> None:
        # Closing the dock with its own X button un-checks the toolbar button.
        if self.action is not None and self.action.isChecked() != visible:
            self.action.blockSignals(True)
            self.action.setChecked(visible)
            self.action.blockSignals(False)

    def unload(self):
        if self.dock is not None:
            self.dock.shutdown()  # cancels running tasks; they add no layer afterwards
            self.dock.visibilityChanged.disconnect(self._dock_visibility_changed)
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
            self.dock = None
        try:
            from .ui import integration

            integration.close_dialogs()  # a running pip is stopped first
            self._settings_dialogs = []
            warning = integration._warning_widget  # its 'Install…' button would outlive us
            if warning is not None and self.iface is not None:
                integration._warning_widget = None
                self.iface.messageBar().popWidget(warning)
        except Exception:
            _log_failure("Closing the plugin's dialogs")
        if self.settings_action is not None:
            self.iface.removePluginMenu(MENU, self.settings_action)
            self.settings_action.deleteLater()
            self.settings_action = None
        if self.action is not None:
            self.iface.removePluginMenu(MENU, self.action)
            self.iface.removeToolBarIcon(self.action)
            self.action.deleteLater()
            self.action = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
