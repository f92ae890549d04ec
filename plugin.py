"""The QGIS plugin object: a toolbar button and menu entry that toggle the dock, and the Processing
provider. Nothing here imports torch; the engine is imported when a run starts.
"""
from __future__ import annotations

import os

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon

try:
    from qgis.PyQt.QtGui import QAction  # Qt6 (QGIS 4)
except ImportError:
    from qgis.PyQt.QtWidgets import QAction  # Qt5 (QGIS 3)

PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))
ICON_PATH = os.path.join(PLUGIN_DIR, "resources", "icon.svg")
MENU = "&DR-Seg"


class DrSegPlugin:
    def __init__(self, iface):
        self.iface = iface  # None under qgis_process, which only calls initProcessing()
        self.provider = None
        self.action = None
        self.dock = None

    # -- Processing ---------------------------------------------------------------------------
    def initProcessing(self):  # noqa: N802 (QGIS's name)
        if self.provider is not None:
            return
        from .processing.provider import DrSegProvider

        self.provider = DrSegProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    # -- GUI ------------------------------------------------------------------------------------
    def initGui(self):  # noqa: N802 (QGIS's name)
        self.initProcessing()
        parent = self.iface.mainWindow()
        self.action = QAction(QIcon(ICON_PATH), "DR-Seg: segment raster from text", parent)
        self.action.setObjectName("drsegToggleDock")
        self.action.setCheckable(True)
        self.action.setToolTip("Open the DR-Seg panel: type class names, get map layers")
        self.action.toggled.connect(self.set_dock_visible)
        self.iface.addToolBarIcon(self.action)
        self.iface.addPluginToMenu(MENU, self.action)

    def set_dock_visible(self, visible: bool) -> None:
        if visible and self.dock is None:
            from .ui.dock import DrSegDock

            self.dock = DrSegDock(self.iface, self.iface.mainWindow())
            self.dock.visibilityChanged.connect(self._dock_visibility_changed)
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
        if self.action is not None:
            self.iface.removePluginMenu(MENU, self.action)
            self.iface.removeToolBarIcon(self.action)
            self.action.deleteLater()
            self.action = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
