"""Choosing where the models run, half precision on CUDA, and surviving CUDA out-of-memory.

- `resolve_device('auto')` takes CUDA when a GPU is usable, then Apple's MPS, then the CPU;
  `describe_device_choice` says which one and why, in words for the dock and the log.
- `autocast_context(device, precision)` runs the image encoders of every engine (dense CLIP and
  DR-Seg alike) in float16 on CUDA by default (torch.autocast keeps softmax, layer norms and
  reductions in float32); CPU and MPS stay in float32 unless a precision is asked for.
- `run_with_oom_retry(fn, batch_size, on_retry)` calls `fn(batch_size)` and, when the GPU runs out
  of memory, frees the cache and tries again with half the batch, down to one window; then it
  raises a ModelError that says what to change. The error never escapes as a crash.
"""
from __future__ import annotations

import contextlib
import re
from typing import Callable, Optional, Tuple, TypeVar, Union

import torch

from .errors import InputError, ModelError
from .models.registry import DEFAULT_DEVICE, DEVICE_CHOICES

_CUDA_NAME = re.compile(r"^cuda(:\d+)?$")

T = TypeVar("T")


# ----------------------------------------------------------------------------- choosing

def cuda_available() -> bool:
    try:
        return bool(torch.cuda.is_available())
    except Exception:  # a broken driver install can raise instead of answering False
        return False


def mps_available() -> bool:
    backend = getattr(getattr(torch, "backends", None), "mps", None)
    if backend is None:
        return False
    try:
        return bool(backend.is_available())
    except Exception:
        return False


def resolve_device(name: str = DEFAULT_DEVICE) -> torch.device:
    """'auto' takes CUDA, then MPS, then the CPU; an explicit GPU that is not usable is an error."""
    return describe_device_choice(name)[0]


def as_device(device: Union[str, torch.device]) -> torch.device:
    """`device` as it is when already a torch.device, else `resolve_device(device)`."""
    return device if isinstance(device, torch.device) else resolve_device(device)


def describe_device_choice(name: str = DEFAULT_DEVICE) -> Tuple[torch.device, str]:
    """-> (device, reason), e.g. (cuda, "CUDA: NVIDIA RTX A4000 (16 GB)"),
    (cpu, "CPU: no CUDA GPU found (this torch build has no CUDA support)").

    Raises InputError for an unknown name or a GPU that was asked for but is not usable.
    """
    name = (name or DEFAULT_DEVICE).strip().lower()
    if name == "auto":
        if cuda_available():
            device = torch.device("cuda")
            return device, _cuda_text(device)
        if mps_available():
            return torch.device("mps"), "MPS: Apple GPU (Metal); no CUDA GPU found"
        return torch.device("cpu"), "CPU: " + _why_no_gpu()
    if _CUDA_NAME.match(name):
        if not cuda_available():
            raise InputError(f"Device '{name}' was requested but {_why_no_gpu()}; "
                             "choose 'auto' or 'cpu'")
        device = torch.device(name)
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise InputError(f"Device '{name}' does not exist: this machine has {count} CUDA "
                             f"GPU(s) (cuda:0..cuda:{count - 1})")
        return device, _cuda_text(device) + " (chosen in the settings)"
    if name == "mps":
        if not mps_available():
            raise InputError("Device 'mps' (Apple GPU) was requested but it is not available; "
                             "choose 'auto' or 'cpu'")
        return torch.device("mps"), "MPS: Apple GPU (Metal), chosen in the settings"
    if name == "cpu":
        return torch.device("cpu"), "CPU: chosen in the settings"
    raise InputError(f"Unknown device '{name}'; choose one of {', '.join(DEVICE_CHOICES)} "
                     "(or 'mps', 'cuda:N')")


def _cuda_text(device: torch.device) -> str:
    index = device.index if device.index is not None else torch.cuda.current_device()
    try:
        label = torch.cuda.get_device_name(index)
    except Exception:
        label = f"GPU {index}"
    try:
        memory = torch.cuda.get_device_properties(index).total_memory
        label += f" ({memory / 2 ** 30:.0f} GB)"
    except Exception:
        pass
    return f"CUDA: {label}"


def _why_no_gpu() -> str:
    if getattr(torch.version, "cuda", None) is None:
        return "no CUDA GPU found (this torch build has no CUDA support)"
    return "no CUDA GPU found"


# ----------------------------------------------------------------------------- precision

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def autocast_context(device, enabled: bool = True, precision: str = "auto"):
    """The autocast the image encoders run under.

    "auto": float16 on CUDA, nothing on CPU and MPS; "fp32": nothing; "fp16"/"bf16": that type on
    CUDA or the CPU (benchmarks compare them). Outputs may be reduced precision: callers convert
    with `.float()` before their own arithmetic (normalising, cosine similarities, softmax).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    device_type = device.type if isinstance(device, torch.device) else torch.device(str(device)).type
    if not enabled or precision == "fp32":
        return contextlib.nullcontext()
    if precision == "auto":
        return (torch.autocast(device_type="cuda", dtype=torch.float16) if device_type == "cuda"
                else contextlib.nullcontext())
    if device_type not in ("cuda", "cpu"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=_AUTOCAST_DTYPES[precision])


# ----------------------------------------------------------------------------- out of memory

def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or a RuntimeError saying 'out of memory' (MPS, cuDNN, older torch)."""
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None) or getattr(torch, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(error, oom_type):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def release_gpu_memory() -> None:
    """Return cached blocks to the driver after an out-of-memory error (no-op without CUDA)."""
    try:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass
    backend = getattr(torch, "mps", None)
    if backend is not None and mps_available():
        try:
            backend.empty_cache()
        except Exception:
            pass


OUT_OF_MEMORY_ADVICE = ("The GPU ran out of memory even with one window at a time ({detail}). "
                        "Use a smaller window (tile size) or a coarser working resolution, choose "
                        "a smaller model, close other programs using the GPU, or choose the CPU "
                        "device (slower, but limited only by the computer's memory).")


def run_with_oom_retry(fn: Callable[[int], T], batch_size: int,
                       on_retry: Optional[Callable[[int, str], None]] = None) -> T:
    """`fn(batch_size)`, retried with half the batch after each GPU out-of-memory error.

    on_retry(new_batch_size, reason) is called before each retry (to report it and to remember
    the smaller batch for later calls). After a failure with a batch of one, raises ModelError
    with what the user can change. Other errors pass through unchanged.
    """
    size = max(1, int(batch_size))
    while True:
        detail = None
        try:
            return fn(size)
        except Exception as exc:  # noqa: BLE001 - filtered just below
            if not is_out_of_memory(exc):
                raise
            detail = _first_line(exc)
        # Outside the except block the traceback (and the tensors its frames hold) is released.
        release_gpu_memory()
        if size <= 1:
            raise ModelError(OUT_OF_MEMORY_ADVICE.format(detail=detail))
        size = max(1, size // 2)
        if on_retry is not None:
            on_retry(size, f"GPU out of memory; retrying with batches of {size} window(s)")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= 200 else line[:197] + "..."
