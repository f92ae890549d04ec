"""Where the dock writes a run's files when the user names none: the project's folder, else the
folder 'DR-Seg outputs' in the user's home (kept, unlike a temporary folder), under a name that
replaces no existing file. The forms' output fields choose any other place."""
from __future__ import annotations

import os
import tempfile
from typing import Optional, Sequence

from qgis.core import QgsProject


UNSAVED_PROJECT_FOLDER = "DR-Seg outputs"   # in the home folder, for projects not saved yet


def output_folder(project: Optional[QgsProject] = None) -> str:
    """The project's folder when the project is saved and writable, else ~/DR-Seg outputs (a
    temporary folder only when the home folder is not writable)."""
    home = (project or QgsProject.instance()).homePath()
    if home and os.path.isdir(home) and os.access(home, os.W_OK):
        return home
    for base in (os.path.expanduser("~"), tempfile.gettempdir()):
        folder = os.path.join(base, UNSAVED_PROJECT_FOLDER)
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK):
            return folder
    return tempfile.gettempdir()


def free_output_path(layer_name: str, folder: str, tag: str, extension: str = ".gpkg",
                     companions: Sequence[str] = ()) -> str:
    """`folder/<layer name>_<tag><extension>`, numbered so that no existing file is replaced; a
    name also counts as taken when a file with the same stem and a `companions` extension exists."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in layer_name).strip("._") or "raster"
    base = os.path.join(folder, f"{safe}_{tag}")

    def taken(path: str) -> bool:
        stem = os.path.splitext(path)[0]
        return os.path.exists(path) or any(os.path.exists(stem + e) for e in companions)

    path, number = base + extension, 1
    while taken(path):
        path = f"{base}_{number}{extension}"
        number += 1
    return path


def default_output_path(layer_name: str, folder: str, extension: str = ".gpkg") -> str:
    """`folder/<layer name>_drseg<extension>`, free also for the class raster beside it (.tif)."""
    return free_output_path(layer_name, folder, "drseg", extension, companions=(".tif",))


def referring_output_path(layer_name: str, folder: str) -> str:
    """`folder/<layer name>_referring.gpkg`, numbered so that no existing file is replaced."""
    return free_output_path(layer_name, folder, "referring")
