"""Output files written safely: to a temporary name first, renamed only when complete."""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import tempfile
import threading
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import rasterio

from .classes import BACKGROUND, BACKGROUND_INDEX, NODATA_INDEX, ClassSpec
from .colors import class_colour
from .errors import InputError, OutputError


# Hidden scratch folders are named with this prefix; each records the process that owns it.
WORK_PREFIX = ".drseg-"
_OWNER_FILE = "owner"
_STAGE_PREFIX = ".drseg-stage-"
_BACKUP_PREFIX = ".drseg-old-"


class WorkDir:
    """A hidden scratch folder beside the outputs (same file system, so renames are atomic).

    The folder records its owner (host and process id), so a later run into the same folder can
    remove the leftovers of runs that were killed (SIGKILL, power cut) before cleaning up.
    """

    def __init__(self, near_path: str):
        folder = os.path.dirname(os.path.abspath(near_path)) or "."
        check_writable_folder(folder)
        sweep_stale_work_dirs(folder)
        try:
            self.path = tempfile.mkdtemp(prefix=WORK_PREFIX, dir=folder)
            with open(os.path.join(self.path, _OWNER_FILE), "w") as handle:
                handle.write(f"{socket.gethostname()} {os.getpid()}\n")
        except OSError as exc:
            raise OutputError(_os_error_text(f"Cannot write in the output folder '{folder}'", exc)) from None

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def cleanup(self) -> None:
        with deferred_interrupts():  # a Ctrl-C now must not leave half the folder behind
            shutil.rmtree(self.path, ignore_errors=True)


def sweep_stale_work_dirs(folder: str) -> List[str]:
    """Remove work folders (and staged copies) left in `folder` by runs of this host whose process
    is gone. Folders without an owner record, or of another host, are left alone. -> removed."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    host = socket.gethostname()
    for name in names:
        if not name.startswith(WORK_PREFIX):
            continue
        path = os.path.join(folder, name)
        owner = _read_owner(path if os.path.isdir(path) else None, name)
        if owner is None or owner[0] != host or _process_alive(owner[1]):
            continue
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.remove(path)
            except OSError:
                continue
        removed.append(path)
    return removed


def _read_owner(work_dir: Optional[str], name: str) -> Optional[Tuple[str, int]]:
    if work_dir is not None:
        try:
            with open(os.path.join(work_dir, _OWNER_FILE)) as handle:
                host, pid = handle.read().split()
            return host, int(pid)
        except (OSError, ValueError):
            return None
    # staged and backup files carry '<prefix><pid>-...' in their name
    for prefix in (_STAGE_PREFIX, _BACKUP_PREFIX):
        if name.startswith(prefix):
            pid = name[len(prefix):].split("-", 1)[0]
            if pid.isdigit():
                return socket.gethostname(), int(pid)
    return None


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def check_writable_folder(folder: str) -> None:
    """Raise OutputError unless a file can really be created in `folder` (read-only mounts,
    permissions and root's exemption from them all answer the same way: try it)."""
    if not os.path.isdir(folder):
        raise OutputError(f"Output folder '{folder}' does not exist")
    try:
        handle, probe = tempfile.mkstemp(prefix=WORK_PREFIX + "probe-", dir=folder)
        os.close(handle)
        os.remove(probe)
    except OSError as exc:
        raise OutputError(_os_error_text(f"Output folder '{folder}' is not writable", exc)) from None


def check_destination(path: str, extensions: Sequence[str]) -> str:
    path = os.path.abspath(os.fspath(path))
    if not path.lower().endswith(tuple(extensions)):
        raise InputError(f"Output '{path}' must end with {' or '.join(extensions)}")
    if os.path.isdir(path):
        raise InputError(f"Output '{path}' is a folder, not a file name")
    return path


def check_outputs(outputs: Sequence[str], inputs: Sequence[str] = ()) -> None:
    """Before any work: every output folder exists and is writable, no output is an input
    (symbolic links, hard links and case-insensitive names included) and no two outputs are one
    file."""
    outputs = [os.path.abspath(p) for p in outputs if p]
    for path in outputs:
        check_writable_folder(os.path.dirname(path) or ".")
    for path in outputs:
        for source in inputs:
            if source and _same_file(path, source):
                raise InputError(f"Output '{path}' is the input '{source}'; choose another output "
                                 "name (the input is never overwritten)")
    for i, a in enumerate(outputs):
        for b in outputs[i + 1:]:
            if _same_file(a, b) or os.path.normcase(a) == os.path.normcase(b):
                raise InputError(f"Two outputs are the same file '{a}'; choose different names")


def _same_file(a: str, b: str) -> bool:
    a, b = os.fspath(a), os.fspath(b)
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # same inode: hard links, case-insensitive file systems
    except OSError:
        return False


# -- publishing -------------------------------------------------------------------------------

@contextlib.contextmanager
def deferred_interrupts():
    """Hold Ctrl-C, SIGTERM and SIGHUP until the block ends (main thread only; elsewhere a no-op).

    Used while outputs replace older ones, so an interrupt cannot leave a mixed set. The block's
    `received` list tells the caller which signals arrived; they are not re-raised: the work the
    block protects finished."""
    received: List[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {}
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        number = getattr(signal, name, None)
        if number is None:
            continue
        try:
            previous[number] = signal.signal(number, lambda signum, frame: received.append(signum))
        except (ValueError, OSError):
            pass
    try:
        yield received
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def publish(temporary: str, destination: str) -> None:
    """Move one finished file to its destination, replacing an older result (see publish_all)."""
    publish_all([(temporary, destination)])


def publish_all(pairs: Sequence[Tuple[str, str]]) -> None:
    """Replace every destination by its finished temporary file: all of them, or none.

    A file on another file system is first copied next to its destination under a hidden name
    (the copy is what can fail: full disk, permissions), then every destination is switched by
    renames within its own folder, with older files kept aside until all are in place, so an
    error or an interrupt leaves either the complete old set or the complete new one."""
    staged: List[Tuple[str, str]] = []
    try:
        for temporary, destination in pairs:
            staged.append((_stage(temporary, destination), destination))
        with deferred_interrupts():
            _switch(staged)
    except BaseException:
        for path, destination in staged:
            if os.path.basename(path).startswith(_STAGE_PREFIX):
                _remove(path)
        raise


def _stage(temporary: str, destination: str) -> str:
    folder = os.path.dirname(destination) or "."
    if _device(temporary) == _device(folder):
        return temporary
    staged = os.path.join(folder, f"{_STAGE_PREFIX}{os.getpid()}-{os.path.basename(destination)}")
    try:
        with open(temporary, "rb") as source, open(staged, "wb") as target:
            shutil.copyfileobj(source, target, 4 * 2 ** 20)
            target.flush()
            os.fsync(target.fileno())
    except OSError as exc:
        _remove(staged)
        raise OutputError(_os_error_text(f"Cannot write '{destination}'", exc)
                          + "; nothing was replaced") from None
    return staged


def _switch(staged: Sequence[Tuple[str, str]]) -> None:
    backups: List[Tuple[str, str]] = []
    done: List[str] = []
    try:
        for _, destination in staged:
            if os.path.lexists(destination):
                folder, name = os.path.split(destination)
                backup = os.path.join(folder, f"{_BACKUP_PREFIX}{os.getpid()}-{name}")
                os.replace(destination, backup)
                backups.append((backup, destination))
        for path, destination in staged:
            os.replace(path, destination)
            done.append(destination)
    except OSError as exc:
        for destination in done:
            _remove(destination)
        for backup, destination in backups:
            os.replace(backup, destination)
        raise OutputError(_os_error_text(f"Cannot write '{staged[len(done)][1]}'", exc)
                          + "; the older outputs were kept") from None
    for backup, _ in backups:
        _remove(backup)


def _device(path: str) -> int:
    return os.stat(path).st_dev


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _os_error_text(what: str, exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"{what}: the disk is full"
    return f"{what} ({exc.strerror or exc})"


def disk_full_hint(path: str) -> str:
    """' (the disk is full)' when the file system holding `path` has (almost) no space left."""
    try:
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path)) or ".").free
    except OSError:
        return ""
    return " (the disk is full)" if free < 1024 * 1024 else ""


def verify_raster(path: str, destination: str, grid=None) -> None:
    """Reopen a written GeoTIFF and read every block, so a file cut short by a full disk or a
    failed flush is never published. Raises OutputError naming the destination."""
    try:
        with rasterio.open(path) as src:
            if grid is not None and (src.width, src.height) != (grid.width, grid.height):
                raise OSError(f"it has {src.width}×{src.height} px instead of "
                              f"{grid.width}×{grid.height}")
            for _, window in src.block_windows(1):
                src.read(window=window)
    except (rasterio.errors.RasterioError, OSError) as exc:
        raise OutputError(f"Writing '{destination}' failed{disk_full_hint(path)}: the file could "
                          f"not be read back complete ({_first_line(exc)}); nothing was replaced") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


def raster_profile(grid, dtype: str, count: int = 1, nodata=None) -> Dict:
    profile = dict(driver="GTiff", width=grid.width, height=grid.height, count=count, dtype=dtype,
                   crs=grid.crs, transform=grid.transform, tiled=True, blockxsize=256,
                   blockysize=256, compress="deflate", BIGTIFF="IF_SAFER")
    if nodata is not None:
        profile["nodata"] = nodata
    return profile


def class_colour_table(classes: Sequence[ClassSpec]) -> Dict[int, tuple]:
    table = {BACKGROUND_INDEX: (*class_colour(BACKGROUND), 255), NODATA_INDEX: (0, 0, 0, 0)}
    for index, spec in enumerate(classes, start=1):
        table[index] = (*class_colour(spec.name), 255)
    return table


class _BlockRasterWriter:
    """A GeoTIFF written by blocks; GDAL write and flush errors become one OutputError."""

    def __init__(self, path: str, destination: Optional[str], profile: Dict):
        self.path = path
        self.destination = destination or path
        self._dst = None
        with self._errors():
            self._dst = rasterio.open(path, "w", **profile)

    @contextlib.contextmanager
    def _errors(self):
        try:
            yield
        except (rasterio.errors.RasterioError, OSError) as exc:
            self.abort()
            raise OutputError(f"Writing '{self.destination}' failed{disk_full_hint(self.path)} "
                              f"({_first_line(exc)}); nothing was replaced") from None

    def write(self, window, data: np.ndarray) -> None:
        with self._errors():
            self._dst.write(data if data.ndim == 3 else data[None], window=window)

    def close(self) -> None:
        if self._dst is None:
            return
        with self._errors():
            self._dst.close()
        self._dst = None

    def abort(self) -> None:
        dst, self._dst = self._dst, None
        if dst is not None:
            try:
                dst.close()
            except Exception:  # the error being reported is the first one
                pass


class ClassRasterWriter(_BlockRasterWriter):
    """Class-index GeoTIFF (uint8, nodata 255, colour table, class names in tags) by blocks."""

    def __init__(self, path: str, grid, classes: Sequence[ClassSpec], destination: Optional[str] = None):
        super().__init__(path, destination, raster_profile(grid, "uint8", nodata=NODATA_INDEX))
        with self._errors():
            self._dst.write_colormap(1, class_colour_table(classes))
            names = {f"CLASS_{i}": spec.name for i, spec in enumerate(classes, start=1)}
            self._dst.update_tags(CLASS_0=BACKGROUND, **names)
            self._dst.set_band_description(1, "class")


class FloatRasterWriter(_BlockRasterWriter):
    """Float32 GeoTIFF written by blocks (per-pixel score or per-class probabilities)."""

    def __init__(self, path: str, grid, count: int = 1, descriptions: Sequence[str] = (),
                 destination: Optional[str] = None):
        super().__init__(path, destination, raster_profile(grid, "float32", count=count))
        with self._errors():
            for band, text in enumerate(descriptions, start=1):
                self._dst.set_band_description(band, text)
