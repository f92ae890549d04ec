"""What the plugin object calls: the dependency check at start-up and the two dialogs.

    from .ui.integration import check_dependencies_on_start, open_settings
    check_dependencies_on_start(self.iface)   # first thing in initGui(), before anything imports torch
    open_settings(self.iface)                 # from a 'DR-Seg settings…' menu action

Nothing here imports torch: the start-up check only looks for packages (importlib.util.find_spec).
Dialogs are shown without blocking QGIS; this module keeps them referenced while they are open.
"""
from __future__ import annotations

from typing import Dict, List, Optional

from qgis.core import Qgis
from qgis.PyQt.QtWidgets import QPushButton

from ..core import dependencies
from ..qgis_bridge.engine import prepare_packages

TITLE = "DR-Seg"
_open_dialogs: Dict[str, object] = {}
_warning_widget = None


def check_dependencies_on_start(iface) -> List[str]:
    """Put the plugin-owned packages folder on sys.path; when packages are missing, push a
    message-bar warning with an 'Install…' button. Returns the pip names of what is missing.

    `iface` may be None (qgis_process): then only the path is set and the result returned.
    """
    global _warning_widget
    missing = prepare_packages()
    if not missing or iface is None:
        return missing
    bar = iface.messageBar()
    if _warning_widget is not None:
        try:
            if _warning_widget in bar.items():
                return missing  # the warning is still shown
        except RuntimeError:  # the widget was deleted with its bar
            pass
    names = ", ".join(missing)
    widget = bar.createMessage(TITLE, f"Python packages missing: {names}. The plugin is loaded, but "
                                      "cannot segment until they are installed.")
    button = QPushButton("Install…", widget)
    button.setObjectName("drsegInstallButton")
    button.setToolTip("Shows what will be installed and where, then runs pip")
    button.clicked.connect(lambda: open_dependencies_dialog(iface))
    widget.layout().addWidget(button)
    bar.pushWidget(widget, Qgis.MessageLevel.Warning, 0)
    _warning_widget = widget
    return missing


def open_dependencies_dialog(iface=None, plan: Optional[dependencies.InstallPlan] = None):
    """Show (or raise) the install dialog; returns it."""
    from .dependencies_dialog import DependenciesDialog

    dialog = _reuse("dependencies")
    if dialog is None:
        parent = iface.mainWindow() if iface is not None else None
        dialog = DependenciesDialog(plan, parent)
        dialog.installFinished.connect(lambda ok: _installed(iface, ok))
        _keep("dependencies", dialog)
    dialog.show()
    dialog.raise_()
    return dialog


def open_settings(iface=None, path: Optional[str] = None):
    """Show (or raise) the settings dialog; returns it."""
    from .settings_dialog import SettingsDialog

    dialog = _reuse("settings")
    if dialog is None:
        parent = iface.mainWindow() if iface is not None else None
        dialog = SettingsDialog(parent, path=path)
        if iface is not None:
            dialog.settingsSaved.connect(lambda _settings: iface.messageBar().pushMessage(
                TITLE, f"Settings saved to {dialog.path}", Qgis.MessageLevel.Success, 5))
        _keep("settings", dialog)
    dialog.show()
    dialog.raise_()
    return dialog


def close_dialogs() -> None:
    """For plugin unload: close open dialogs (a running pip is stopped first)."""
    for key in list(_open_dialogs):
        dialog = _open_dialogs.pop(key)
        try:
            dialog.reject()
            dialog.deleteLater()
        except RuntimeError:
            pass


def _installed(iface, ok: bool) -> None:
    global _warning_widget
    if not ok or iface is None:
        return
    bar = iface.messageBar()
    if _warning_widget is not None:
        try:
            bar.popWidget(_warning_widget)
        except RuntimeError:
            pass
        _warning_widget = None
    still = dependencies.find_missing()
    if still:
        bar.pushMessage(TITLE, "pip finished, but these packages still cannot be found: "
                        + ", ".join(r.package for r in still) + "; restart QGIS",
                        Qgis.MessageLevel.Warning, 0)
    else:
        bar.pushMessage(TITLE, "Python packages installed; DR-Seg is ready", Qgis.MessageLevel.Success, 8)


def _keep(key: str, dialog) -> None:
    _open_dialogs[key] = dialog
    dialog.finished.connect(lambda _result: _open_dialogs.pop(key, None) if
                            _open_dialogs.get(key) is dialog else None)


def _reuse(key: str):
    dialog = _open_dialogs.get(key)
    if dialog is None:
        return None
    try:
        dialog.isVisible()
    except RuntimeError:  # deleted by Qt
        _open_dialogs.pop(key, None)
        return None
    return dialog
