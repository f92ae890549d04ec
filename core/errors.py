"""Exceptions the front ends know how to show.

A `DrSegError` is a problem the user can fix (bad input, missing weights); its message is written
for them and shown as is: one line on the command line (exit code 2), a message bar in QGIS.
"""


class DrSegError(Exception):
    """A user-facing error: the message says what is wrong and what to do."""


class InputError(DrSegError):
    """The raster, prompt or parameters cannot be used."""


class ModelError(DrSegError):
    """Model weights are missing, corrupt or of the wrong architecture."""


class RunCancelled(Exception):
    """The user cancelled the run; nothing was written."""


class OutputError(DrSegError):
    """An output cannot be written (missing or read-only folder, full disk); nothing was replaced."""
