"""The Referring tab's field for a trained prompter head (the .safetensors `drseg
train-referring` writes): set, the learned prompts segment; empty, the training-free path runs.

Its value is remembered with the dock's state (ui/remembered.py) whenever it changes, so the
head chosen once is there in the next QGIS session.
"""
from __future__ import annotations

import os
from typing import Optional

from qgis.gui import QgsFileWidget

from ..core.errors import InputError
from . import remembered

STATE_KEY = "refer_prompter"
HEAD_SUFFIX = ".safetensors"


class PrompterField(QgsFileWidget):
    """A file widget for the head; :meth:`head` is what the referring request takes."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("drsegPrompterHead")
        self.setStorageMode(QgsFileWidget.StorageMode.GetFile)
        self.setFilter(f"Prompter heads (*{HEAD_SUFFIX});;All files (*)")
        self.lineEdit().setPlaceholderText("[None: training-free prompts]")
        self.setToolTip("A trained referring head (drseg train-referring --out FILE): its learned "
                        "prompts replace the training-free ones. It must have been trained on "
                        "the CLIP and SAM models chosen here; empty: the training-free path")
        saved = remembered.load_state().get(STATE_KEY)
        if isinstance(saved, str):
            self.setFilePath(saved)
        self.fileChanged.connect(self._remember)

    def _remember(self, path: str) -> None:
        remembered.save_state({STATE_KEY: str(path or "").strip()})

    def head(self) -> Optional[str]:
        """The chosen head file, None when the field is empty; InputError (shown at once, before
        anything starts) for a path that is not a head file."""
        path = self.filePath().strip()
        if not path:
            return None
        if not os.path.isfile(path):
            raise InputError(f"Prompter head '{path}' does not exist")
        if not path.lower().endswith(HEAD_SUFFIX):
            raise InputError(f"Prompter head '{path}' must be a {HEAD_SUFFIX} file")
        return path
