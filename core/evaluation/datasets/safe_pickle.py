"""Reading REFER's refs pickles without letting them run code."""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Union

from ...errors import InputError

_SAFE_BUILTINS = {"dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray",
                  "int", "float", "complex", "bool"}


class _ContainersOnlyUnpickler(pickle.Unpickler):
    """Builds only builtin containers and scalars; any other global is refused, so a pickle
    cannot run code while being read."""

    def find_class(self, module, name):
        if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            return super().find_class("builtins", name)
        if (module, name) == ("_codecs", "encode"):   # how protocol-2 pickles spell bytes
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")


def safe_load_pickle(path: Union[str, Path]):
    """Load a data pickle (REFER ``refs(*).p``) allowing builtin containers only."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise InputError(f"Cannot read {path}: {exc}")
    try:
        return _ContainersOnlyUnpickler(io.BytesIO(data), encoding="utf-8",
                                        errors="replace").load()
    except pickle.UnpicklingError as exc:
        raise InputError(f"{path} holds more than plain lists and dicts ({exc}); refusing to "
                         "load it, as unpickling arbitrary objects can run code")
    except (EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError,
            KeyError) as exc:
        raise InputError(f"{path} is not a readable refs pickle: {exc}")
