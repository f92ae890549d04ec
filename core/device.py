"""Choosing where the models run."""
from __future__ import annotations

import torch

from .errors import InputError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' takes CUDA when a GPU is usable, else the CPU; 'cuda' without a GPU is an error."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("Device 'cuda' was requested but no usable CUDA GPU was found; "
                             "choose 'auto' or 'cpu'")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise InputError(f"Unknown device '{name}'; choose one of {', '.join(DEVICE_CHOICES)}")
