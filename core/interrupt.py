"""Cancel points inside long model forwards.

One forward of a big transformer (SAM's image encoder on a CPU, 80 prompt templates through
CLIP's text tower) takes many seconds, so checking cancel between forwards is not enough. A
forward pre-hook on every transformer block checks the cancel of the run going on in the calling
thread: a cancelled run stops before the next block. Models are shared between runs and threads,
so the hook is installed once per model and the check is thread-local.
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
