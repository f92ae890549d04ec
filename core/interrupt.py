"""Cancel points inside long model forwards and model loading.

One forward of a big transformer (SAM's image encoder on a CPU, 80 prompt templates through
CLIP's text tower) takes many seconds, so checking cancel between forwards is not enough. A
forward pre-hook on every transformer block checks the cancel of the run going on in the calling
thread: a cancelled run stops before the next block. Models are shared between runs and threads,
so the hook is installed once per model and the check is thread-local.

Building a big model (ViT-H: hundreds of layers initialised) and loading its weights take seconds
too: inside `cancellable_loading()`, torch's global registration hooks check the thread's run at
every submodule, parameter and buffer a module registers, and the checkpoint readers call
`check_cancel()` between tensors and modules. A cancelled load raises RunCancelled; the model
cache keeps nothing of it.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Optional

# Children of module lists with these names are transformer blocks (open_clip `resblocks`, timm
# and DINO `blocks`, segment_anything's image encoder `blocks`).
BLOCK_LISTS = ("resblocks", "blocks")
_MARK = "_drseg_cancel_points"


class _Current(threading.local):
    check: Optional[Callable[[], None]] = None
    loading: int = 0          # depth of cancellable_loading() blocks


_current = _Current()


def _before_block(module, args) -> None:
    check = _current.check
    if check is not None:
        check()  # raises RunCancelled


def install_cancel_points(model) -> int:
    """Check the calling thread's cancel before every transformer block of `model` (a torch
    module); idempotent. -> number of blocks hooked."""
    import torch

    if not isinstance(model, torch.nn.Module) or getattr(model, _MARK, None) is not None:
        return getattr(model, _MARK, 0) or 0
    count = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.rsplit(".", 1)[-1] in BLOCK_LISTS:
            for block in module:
                block.register_forward_pre_hook(_before_block)
                count += 1
    setattr(model, _MARK, count)
    return count


@contextmanager
def cancel_points(check: Optional[Callable[[], None]]):
    """Within this block, hooked models in this thread call `check()` before each block."""
    previous = _current.check
    _current.check = check
    try:
        yield
    finally:
        _current.check = previous


def check_cancel() -> None:
    """Raise RunCancelled when the run going on in this thread (within `cancel_points`) was
    cancelled; nothing outside a run."""
    check = _current.check
    if check is not None:
        check()


def _on_registration(module, name, value) -> None:
    if _current.loading:
        check_cancel()


_hooks_lock = threading.Lock()
_hooks_installed = False


def _install_registration_hooks() -> None:
    """torch's process-wide hooks, once: they do nothing outside a cancellable_loading() block of
    the registering thread (other threads, other plugins' models)."""
    global _hooks_installed
    with _hooks_lock:
        if _hooks_installed:
            return
        from torch.nn.modules import module as torch_module

        for register in ("register_module_module_registration_hook",
                         "register_module_parameter_registration_hook",
                         "register_module_buffer_registration_hook"):
            if hasattr(torch_module, register):  # torch >= 2.0
                getattr(torch_module, register)(_on_registration)
        _hooks_installed = True


@contextmanager
def cancellable_loading():
    """Build models and load weights in this block: the run going on in this thread is checked
    at every submodule, parameter and buffer registered (a cancelled run raises RunCancelled
    there), and between the tensors and modules `core.models.checkpoints` reads and loads."""
    _install_registration_hooks()
    _current.loading += 1
    try:
        yield
    finally:
        _current.loading -= 1
