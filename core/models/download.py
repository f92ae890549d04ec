"""Downloading, verifying and importing model checkpoints into the local cache (stdlib only).

- A transfer goes to `<cache>/<name>.part`; an interrupted one resumes with an HTTP Range request
  (guarded by If-Range, so a file that changed on the server starts over) - automatically a few
  times within one call, and again on the next call.
- The finished file is checked against the catalog's size and SHA-256 (where known; otherwise
  only what is known is checked, and the reply says so) and moved into the cache with
  `os.replace` only then. A file that fails is deleted, never kept.
- Each cached file gets a small record (`<file>.verified.json`) with the SHA-256 measured when it
  was verified, so `verify` can later detect damage even for checkpoints without a published hash.
- Cache folder and mirror follow `settings.resolve`: the folder or mirror passed in, else
  `DRSEG_CACHE_DIR` / `DRSEG_MODEL_MIRROR`, else the saved settings, else the platform default
  (no mirror). A mirror serves the same file names (URL = mirror + '/' + name).
- Progress is reported as (bytes_done, bytes_total or None); cancellation is a plain callable that
  returns True to stop (the partial file is kept for a later resume).
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Union

from ..advice import download_advice, file_advice, import_advice
from ..errors import ModelError, RunCancelled
from ..settings import CACHE_ENV, MIRROR_ENV, default_cache_dir  # noqa: F401 (for callers)
from ..settings import resolve as resolve_setting
from . import formats
from .catalog import ModelEntry, get_model

TIMEOUT_ENV = "DRSEG_DOWNLOAD_TIMEOUT"
# A server that accepts connections and never answers is given up after about 3 × 8 s.
DOWNLOAD_TIMEOUT = 8.0
DOWNLOAD_RETRIES = 2
USER_AGENT = "drseg-model-downloader/1"
RECORD_SUFFIX = ".verified.json"
PART_SUFFIX = ".part"

ProgressFn = Callable[[int, Optional[int]], None]
CancelFn = Callable[[], bool]
StatusFn = Callable[[str], None]

_CHUNK = 1 << 20

# One download per destination at a time: two runs asking for the same model (dock and Processing,
# or two processes) must not append to the same `.part` file; the second waits (cancellable) and
# finds it cached. Downloads of different models do not wait for each other.
_DESTINATION_LOCKS: dict = {}
_DESTINATION_LOCKS_GUARD = threading.Lock()


# ----------------------------------------------------------------------------- cache and mirror

def download_timeout() -> float:
    """Seconds to wait for each answer of a download server (DRSEG_DOWNLOAD_TIMEOUT overrides)."""
    try:
        value = float(os.environ.get(TIMEOUT_ENV, DOWNLOAD_TIMEOUT))
    except ValueError:
        return DOWNLOAD_TIMEOUT
    return value if value > 0 and value == value else DOWNLOAD_TIMEOUT


def resolve_cache_dir(cache_dir: Optional[str] = None) -> str:
    """The model cache folder: `cache_dir` when given, else `DRSEG_CACHE_DIR`, else the saved
    settings' folder (so the CLI, Processing and the dock share one cache), else the platform
    default (`settings.resolve`). Not created here. Resolve it once per run and pass the folder
    to the functions below: without one, each call reads the settings file."""
    return resolve_setting("cache_dir", cache_dir)[0]


def resolve_mirror(mirror: Optional[str] = None) -> Optional[str]:
    """The mirror: `mirror` when given, else `DRSEG_MODEL_MIRROR`, else the saved settings'
    mirror, else None (use each model's own URL). Raises ModelError for a URL of another kind."""
    chosen = resolve_setting("mirror_url", mirror)[0]
    if not chosen:
        return None
    if not chosen.lower().startswith(("http://", "https://", "file://")):
        raise ModelError(f"Model mirror '{chosen}' is not an http(s):// or file:// URL; fix the "
                         f"mirror setting or {MIRROR_ENV}")
    return chosen


# ----------------------------------------------------------------------------- targets

@dataclass
class _Target:
    """What to fetch and how to check it (built from a catalog entry or a bare URL)."""
    label: str
    url: Optional[str]
    file: str                      # name in the cache (the usable checkpoint)
    download_name: str             # name on the server / mirror (the zip for archive entries)
    size: Optional[int] = None
    sha256: Optional[str] = None
    archive_member: Optional[str] = None
    from_catalog: bool = False
    homepage: Optional[str] = None


def _target(source: Union[str, ModelEntry], file_name=None, size=None, sha256=None) -> _Target:
    if isinstance(source, ModelEntry) or "://" not in str(source):
        entry = get_model(source)
        return _Target(label=entry.name, url=entry.url, file=entry.file,
                       download_name=entry.download_name, size=entry.size, sha256=entry.sha256,
                       archive_member=entry.archive_member, from_catalog=True,
                       homepage=entry.homepage)
    url = str(source)
    name = file_name or os.path.basename(urllib.parse.urlparse(url).path)
    if not name or name in (".", ".."):
        raise ModelError(f"Cannot tell a file name from the URL '{url}'; pass file_name")
    return _Target(label=name, url=url, file=name, download_name=name, size=size,
                   sha256=sha256.lower() if sha256 else None)


def source_url(entry: Union[str, ModelEntry], mirror: Optional[str] = None) -> str:
    """Where `entry` would be downloaded from, honouring the mirror setting and environment."""
    return _source_url(_target(entry), resolve_mirror(mirror))


def _source_url(target: _Target, mirror: Optional[str]) -> str:
    if mirror:
        return mirror + "/" + urllib.parse.quote(target.download_name)
    if not target.url:
        where = f" from {target.homepage}" if target.homepage else ""
        raise ModelError(f"'{target.label}' has no public download link. Get the file{where} and "
                         f"{import_advice(target.label)}, or set a "
                         f"mirror ({MIRROR_ENV}) that serves '{target.download_name}'")
    return target.url


# ----------------------------------------------------------------------------- verification

@dataclass
class Verification:
    """Outcome of checking one file. `checked` names what could be compared."""
    ok: bool
    path: str
    size: int
    sha256: Optional[str]
    checked: List[str] = field(default_factory=list)
    message: str = ""


def sha256_of(path: str, cancelled: Optional[CancelFn] = None, chunk_size: int = _CHUNK) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            if cancelled is not None and cancelled():
                raise RunCancelled("Verification cancelled")
            block = handle.read(chunk_size)
            if not block:
                return digest.hexdigest()
            digest.update(block)


def verify_file(path: str, size: Optional[int] = None, sha256: Optional[str] = None,
                cancelled: Optional[CancelFn] = None, label: str = "") -> Verification:
    """Compare a file with the size and SHA-256 given (None = unknown, not checked)."""
    label = label or os.path.basename(path)
    actual_size = os.path.getsize(path)
    checked: List[str] = []
    if size is not None:
        checked.append("size")
        if actual_size != size:
            return Verification(False, path, actual_size, None, checked,
                                f"'{label}' has {actual_size} bytes but should have {size}")
    digest = sha256_of(path, cancelled)
    if sha256:
        checked.append("SHA-256")
        if digest != sha256.lower():
            return Verification(False, path, actual_size, digest, checked,
                                f"'{label}' has SHA-256 {digest} but should have {sha256.lower()}")
    return Verification(True, path, actual_size, digest, checked, _checked_text(checked))


def _checked_text(checked: List[str]) -> str:
    if not checked:
        return "no published size or SHA-256 to check against"
    return " and ".join(checked) + " match"


# ----------------------------------------------------------------------------- cache

def cached_path(entry: Union[str, ModelEntry], cache_dir: Optional[str] = None,
                verify: bool = False) -> Optional[str]:
    """The cached checkpoint of `entry`, or None when absent or failing a check.

    Without `verify`, only sizes are compared (catalog size, and the size recorded when the file
    was verified); files only enter the cache verified. With `verify`, the SHA-256 is recomputed.
    """
    target = _target(entry)
    folder = resolve_cache_dir(cache_dir)
    final = os.path.join(folder, target.file)
    if not os.path.isfile(final):
        return None
    if verify:
        return final if verify_cached(target, folder).ok else None
    actual = os.path.getsize(final)
    if target.size is not None and not target.archive_member and actual != target.size:
        return None
    record = _read_record(final)
    if record and record.get("size") not in (None, actual):
        return None
    return final


def verify_cached(entry: Union[str, ModelEntry, _Target], cache_dir: Optional[str] = None,
                  cancelled: Optional[CancelFn] = None) -> Verification:
    """Recompute the SHA-256 of a cached checkpoint and compare it with everything known: the
    catalog's size and hash (for direct downloads) and the record written when it was verified."""
    target = entry if isinstance(entry, _Target) else _target(entry)
    final = os.path.join(resolve_cache_dir(cache_dir), target.file)
    if not os.path.isfile(final):
        return Verification(False, final, 0, None, [], f"'{target.label}' is not downloaded")
    record = _read_record(final) or {}
    catalog_applies = not target.archive_member
    size = target.size if catalog_applies and target.size is not None else record.get("size")
    sha = target.sha256 if catalog_applies and target.sha256 else record.get("sha256")
    result = verify_file(final, size, sha, cancelled, target.label)
    if not result.ok:
        result.message += "; delete it and download it again"
        return result
    sources = []
    if catalog_applies and (target.size is not None or target.sha256):
        sources.append("the catalog")
    if record and (not catalog_applies or not target.sha256):
        sources.append("the record made when it was downloaded")
    if not result.checked:
        result.message = ("exists, but there is nothing to check it against (no published size or "
                          "SHA-256 and no download record)")
    else:
        result.message = f"{_checked_text(result.checked)} {' and '.join(sources)}"
        if catalog_applies and not target.sha256:
            result.message += " (the catalog publishes no SHA-256 for it)"
    return result


def _record_path(final: str) -> str:
    return final + RECORD_SUFFIX


def _read_record(final: str) -> Optional[dict]:
    try:
        with open(_record_path(final), encoding="utf-8") as handle:
            data = json.load(handle)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _write_record(final: str, verification: Verification, target: _Target, url: Optional[str],
                  source_sha256: Optional[str] = None) -> None:
    record = {
        "file": os.path.basename(final),
        "size": verification.size,
        "sha256": verification.sha256,
        "checked": verification.checked,
        "source": url,
        "source_sha256": source_sha256,
        "verified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    tmp = _record_path(final) + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1)
    os.replace(tmp, _record_path(final))


# ----------------------------------------------------------------------------- download

class _Interrupted(Exception):
    """The transfer stopped before the end; the .part file holds what arrived."""


def download(source: Union[str, ModelEntry], cache_dir: Optional[str] = None, *,
             mirror: Optional[str] = None, progress: Optional[ProgressFn] = None,
             cancelled: Optional[CancelFn] = None, status: Optional[StatusFn] = None,
             file_name: Optional[str] = None, size: Optional[int] = None,
             sha256: Optional[str] = None, force: bool = False, retries: int = DOWNLOAD_RETRIES,
             retry_wait: float = 1.0, timeout: Optional[float] = None, chunk_size: int = _CHUNK) -> str:
    """Fetch a catalog model (name or entry) or a URL into the cache and return the local path.

    An already cached file is returned at once (unless `force`). size / sha256 / file_name are for
    bare URLs; catalog entries bring their own. `retries`: automatic resumes after a cut
    connection within this call. `timeout`: seconds to wait for each answer (default: the
    DRSEG_DOWNLOAD_TIMEOUT variable, else DOWNLOAD_TIMEOUT); a server that never answers is given
    up after (retries + 1) × timeout plus short pauses. Raises ModelError (server, network or
    verification problems) and RunCancelled.
    """
    timeout = download_timeout() if timeout is None else timeout
    retry_wait = min(retry_wait, timeout)
    target = _target(source, file_name, size, sha256)
    folder = resolve_cache_dir(cache_dir)
    final = os.path.join(folder, target.file)

    def existing():
        if force:
            return None
        if target.from_catalog:
            return cached_path(source, folder)
        return final if os.path.isfile(final) and (
            target.size is None or os.path.getsize(final) == target.size) else None

    found = existing()
    if found:
        return found
    url = _source_url(target, resolve_mirror(mirror))
    writable_cache(folder)
    told = []

    def waiting():   # another run is downloading this file: say so, and let this one be cancelled
        if cancelled is not None and cancelled():
            raise RunCancelled(f"Waiting for the download of '{target.label}' cancelled")
        if progress is not None:
            progress(0, target.size)     # a run cancels through its progress callback, too
        if status is not None and not told:
            told.append(True)
            status(f"Waiting for another download of '{target.label}' to finish")

    with _destination_lock(final, waiting):
        found = existing() if not force else None   # another run may have finished it meanwhile
        if found:
            return found
        return _fetch(url, folder, final, target, progress, cancelled, status, retries,
                      retry_wait, timeout, chunk_size)


class _destination_lock:
    """A thread lock per destination path, plus an advisory lock (POSIX flock) per destination
    against other processes, on a file in the temporary folder (the cache folder stays clean).
    Waiting polls, so a run waiting behind another download can be cancelled: `waiting()` is
    called a few times a second and may raise RunCancelled."""

    POLL = 0.25

    def __init__(self, final: str, waiting: Callable[[], None]):
        with _DESTINATION_LOCKS_GUARD:
            self._thread_lock = _DESTINATION_LOCKS.setdefault(final, threading.Lock())
        digest = hashlib.sha256(os.path.abspath(final).encode("utf-8", "surrogateescape"))
        self._lock_path = os.path.join(tempfile.gettempdir(),
                                       f"drseg-download-{digest.hexdigest()[:24]}.lock")
        self._waiting = waiting
        self._handle = None

    def __enter__(self):
        while not self._thread_lock.acquire(timeout=self.POLL):
            self._waiting()
        try:
            self._lock_file()
        except BaseException:
            self._thread_lock.release()
            raise
        return self

    def _lock_file(self):
        try:
            import fcntl
            self._handle = open(self._lock_path, "a")
        except (ImportError, OSError):  # Windows, or no temporary folder: threads only
            return
        while True:
            try:
                fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                try:
                    self._waiting()
                except BaseException:
                    self._close()
                    raise
                time.sleep(self.POLL)
            except OSError:              # a file system without locks: threads only
                self._close()
                return

    def __exit__(self, *exc):
        self._close()
        self._thread_lock.release()
        return False

    def _close(self):
        if self._handle is not None:
            self._handle.close()   # closing releases the flock
            self._handle = None


def _fetch(url, folder, final, target, progress, cancelled, status, retries, retry_wait,
           timeout, chunk_size) -> str:
    part = os.path.join(folder, target.download_name + PART_SUFFIX)
    attempt = 0
    while True:
        try:
            _transfer(url, part, target, progress, cancelled, timeout, chunk_size)
            break
        except _Interrupted as exc:
            attempt += 1
            if attempt > retries:
                have = os.path.getsize(part) if os.path.exists(part) else 0
                raise ModelError(f"Download of '{target.label}' from {_host(url)} was interrupted "
                                 f"({exc}); the {have} bytes received are kept: run the download "
                                 "again to resume where it stopped, or download the file on a "
                                 f"connected machine and {import_advice(target.label)}") from None
            if status:
                status(f"Connection lost ({exc}); resuming (retry {attempt} of {retries})")
            time.sleep(retry_wait * attempt)
    return _finish(part, final, target, url, cancelled, status)


def _transfer(url: str, part: str, target: _Target, progress, cancelled, timeout, chunk_size):
    have = os.path.getsize(part) if os.path.exists(part) else 0
    if target.size is not None and have > target.size:
        _discard_part(part)
        have = 0
    if target.size is not None and have == target.size and have > 0:
        return  # complete already, verification decides
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    validators = _read_part_info(part) if have else {}
    if have:
        headers["Range"] = f"bytes={have}-"
        validator = validators.get("etag") or validators.get("last_modified")
        if validator and validators.get("url") == url:
            headers["If-Range"] = validator
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        body_note = _reason(exc)
        exc.close()
        if exc.code == 416 and have:
            total = _content_range_total(exc.headers.get("Content-Range", ""))
            if total is not None and total == have:
                return  # we already have every byte
            _discard_part(part)
            raise _Interrupted("the partial file did not match the server's file; starting over")
        raise ModelError(_http_error_message(exc.code, body_note, url, target)) from None
    except (socket.timeout, TimeoutError) as exc:
        raise _Interrupted(f"no answer within {timeout:g} s") from exc
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, (socket.timeout, TimeoutError, ConnectionResetError)):
            raise _Interrupted(str(reason) or "timed out") from exc
        raise ModelError(f"Could not reach {_host(url)} ({reason}); check the network connection "
                         f"or proxy, set a model mirror ({MIRROR_ENV}), or download {url} on a "
                         f"connected machine and {import_advice(target.label)}") from None
    except (http.client.HTTPException, ConnectionError) as exc:
        raise _Interrupted(f"{type(exc).__name__}: {exc}") from exc
    with response:
        status = getattr(response, "status", response.getcode())
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if have and status == 206:
            start = _content_range_start(response.headers.get("Content-Range", ""))
            if start != have:
                _discard_part(part)
                raise _Interrupted("the server resumed at the wrong place; starting over")
            mode = "ab"
        else:
            have, mode = 0, "wb"  # the server sent the whole file (ignored Range, or it changed)
        total = have + length if length is not None else target.size
        if target.size is not None and total is not None and total != target.size:
            _discard_part(part)
            raise ModelError(f"The server offers {total} bytes for '{target.label}' but the file "
                             f"should have {target.size}: it is not the expected file, so nothing "
                             f"was kept. Check the mirror or source ({_host(url)})")
        _write_part_info(part, url, response.headers)
        done = have
        if progress:
            progress(done, total)
        with open(part, mode) as handle:
            while True:
                if cancelled is not None and cancelled():
                    raise RunCancelled(f"Download of '{target.label}' cancelled; run it again "
                                       "to resume where it stopped")
                try:
                    block = response.read(chunk_size)
                except (http.client.IncompleteRead, ConnectionError, socket.timeout,
                        TimeoutError, OSError) as exc:
                    raise _Interrupted(f"{type(exc).__name__}") from exc
                if not block:
                    break
                handle.write(block)
                done += len(block)
                if target.size is not None and done > target.size:
                    handle.close()
                    _discard_part(part)
                    raise ModelError(f"The server sent more than the {target.size} bytes "
                                     f"'{target.label}' should have; nothing was kept")
                if progress:
                    progress(done, total)
        if length is not None and done < have + length:
            raise _Interrupted(f"connection closed after {done} of {have + length} bytes")


def _finish(part, final, target: _Target, url, cancelled, status) -> str:
    if status:
        status(f"Verifying {target.download_name}")
    result = verify_file(part, target.size, target.sha256, cancelled, target.download_name)
    if not result.ok:
        _discard_part(part)
        raise ModelError(f"Download of '{target.label}' from {_host(url)} failed verification: "
                         f"{result.message}. The file was deleted; try again, or check the "
                         "mirror or source if it keeps happening")
    if target.from_catalog:
        _reject_non_weights(part, target, url)
    if target.archive_member:
        if status:
            status(f"Extracting {target.archive_member}")
        extracted = _extract_member(part, final, target, cancelled)
        _write_record(final, extracted, target, url, source_sha256=result.sha256)
        _discard_part(part)
    else:
        os.replace(part, final)
        result.path = final
        _write_record(final, result, target, url)
        _discard_part(part)
    return final


def _reject_non_weights(path: str, target: _Target, url: Optional[str]) -> None:
    kind = formats.probe_format(path)
    want_zip = bool(target.archive_member)
    bad = kind in (formats.EMPTY, formats.HTML) or \
        (want_zip and kind != formats.ZIP_ARCHIVE) or \
        (not want_zip and kind in (formats.ZIP_ARCHIVE, formats.TORCHSCRIPT)) or \
        (kind == formats.UNKNOWN and not target.sha256)
    if bad:
        _discard_part(path)
        what = {formats.HTML: "a web page (HTML)", formats.EMPTY: "an empty file",
                formats.TORCHSCRIPT: "a TorchScript archive",
                formats.ZIP_ARCHIVE: "a zip archive"}.get(
                    kind, "not a zip archive" if want_zip else "not in a known checkpoint format")
        source = f" from {_host(url)}" if url else ""
        raise ModelError(f"The file received for '{target.label}'{source} is {what}, not the "
                         "expected checkpoint; nothing was kept. The link may need a login or may "
                         "have moved: check the mirror or source")


def _extract_member(archive_path: str, final: str, target: _Target, cancelled,
                    delete_damaged: bool = True) -> Verification:
    """Copy the checkpoint out of a verified zip into the cache (atomically) and measure it.
    A damaged archive is deleted when it is our own download (`delete_damaged`)."""
    try:
        with zipfile.ZipFile(archive_path) as archive:
            member = _pick_member(archive, target)
            tmp = final + ".extracting"
            digest = hashlib.sha256()
            size = 0
            with archive.open(member) as src, open(tmp, "wb") as dst:
                while True:
                    if cancelled is not None and cancelled():
                        dst.close()
                        _remove(tmp)
                        raise RunCancelled("Extraction cancelled")
                    block = src.read(_CHUNK)
                    if not block:
                        break
                    digest.update(block)
                    dst.write(block)
                    size += len(block)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        _remove(final + ".extracting")
        if delete_damaged:
            _remove(archive_path)
            raise ModelError(f"The archive for '{target.label}' is damaged ({exc}); it was deleted, "
                             "download it again") from None
        raise ModelError(f"'{archive_path}' is a damaged zip archive ({exc}); nothing was "
                         "imported") from None
    os.replace(tmp, final)
    return Verification(True, final, size, digest.hexdigest(), [], "extracted")


def _pick_member(archive: zipfile.ZipFile, target: _Target) -> str:
    names = [n for n in archive.namelist() if not n.endswith("/")]
    wanted = target.archive_member
    if wanted in names:
        return wanted
    same_base = [n for n in names if os.path.basename(n) == os.path.basename(wanted)]
    if len(same_base) == 1:
        return same_base[0]
    weights = [n for n in names if n.endswith((".pt", ".pth", ".bin", ".safetensors"))]
    if len(weights) == 1:
        return weights[0]
    shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
    raise ModelError(f"The archive for '{target.label}' does not hold '{wanted}' (it holds {shown}); "
                     "the catalog entry needs updating")


# ----------------------------------------------------------------------------- import

def import_file(path: str, entry: Union[str, ModelEntry], cache_dir: Optional[str] = None, *,
                cancelled: Optional[CancelFn] = None, status: Optional[StatusFn] = None) -> str:
    """Verify a checkpoint already on disk like a download and copy it into the cache.

    For archive entries `path` may be the zip as published (verified against the catalog, then
    extracted) or the checkpoint already extracted from it (nothing published to compare with).
    The original file is never changed. Returns the cached path.
    """
    entry = get_model(entry)
    target = _target(entry)
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise ModelError(f"File to import not found: '{path}'")
    folder = resolve_cache_dir(cache_dir)
    writable_cache(folder)
    final = os.path.join(folder, target.file)
    kind = formats.probe_format(path)
    if target.archive_member and kind == formats.ZIP_ARCHIVE:
        if status:
            status(f"Verifying {os.path.basename(path)}")
        result = verify_file(path, target.size, target.sha256, cancelled, os.path.basename(path))
        if not result.ok:
            raise ModelError(f"'{path}' is not the published archive of '{entry.name}': "
                             f"{result.message}. Nothing was imported")
        extracted = _extract_member(path, final, target, cancelled, delete_damaged=False)
        _write_record(final, extracted, target, "file://" + path, source_sha256=result.sha256)
        return final
    refused = (formats.EMPTY, formats.HTML, formats.TORCHSCRIPT, formats.ZIP_ARCHIVE)
    if kind in refused or (kind == formats.UNKNOWN and not (target.sha256 and not target.archive_member)):
        what = {formats.HTML: "a web page (HTML)", formats.EMPTY: "empty",
                formats.TORCHSCRIPT: "a TorchScript archive (refused: it can run code)",
                formats.ZIP_ARCHIVE: "a zip archive"}.get(kind, "in no known checkpoint format")
        raise ModelError(f"'{path}' is {what}, not a checkpoint for '{entry.name}'; nothing was imported")
    if not (target.sha256 and not target.archive_member):
        # No published SHA-256 says this is the right file: read it the safe way (a pickle that
        # would run code is refused, never run) and compare it with the entry's architecture.
        if status:
            status(f"Checking {os.path.basename(path)} against {entry.architecture}")
        from .weights_fit import check_entry_fits
        try:
            check_entry_fits(entry, path)
        except ModelError as exc:
            raise ModelError(f"{exc}. Nothing was imported as '{entry.name}'") from None
    if os.path.abspath(final) == path:
        copied = path
    else:
        copied = final + ".importing"
        if status:
            status(f"Copying {os.path.basename(path)} into the cache")
        try:
            shutil.copyfile(path, copied)
        except OSError as exc:
            _remove(copied)
            raise ModelError(f"Cannot copy '{path}' into the model cache '{folder}' "
                             f"({exc.strerror or exc})") from None
    catalog_applies = not target.archive_member
    if status:
        status(f"Verifying {os.path.basename(path)}")
    result = verify_file(copied, target.size if catalog_applies else None,
                         target.sha256 if catalog_applies else None, cancelled, os.path.basename(path))
    if not result.ok:
        if copied != path:
            _remove(copied)
        raise ModelError(f"'{path}' is not the expected file for '{entry.name}': {result.message}. "
                         "Nothing was imported")
    if copied != path:
        os.replace(copied, final)
    result.path = final
    _write_record(final, result, target, "file://" + path)
    return final


# ----------------------------------------------------------------------------- helpers

def writable_cache(folder: str) -> None:
    """Create the model cache folder if needed and make sure files can be written in it; a
    ModelError naming the folder and the way to choose another one otherwise."""
    try:
        os.makedirs(folder, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".drseg-probe-", dir=folder)
        os.close(handle)
        os.remove(probe)
    except OSError as exc:
        what = "create" if not os.path.isdir(folder) else "write in"
        raise ModelError(f"Cannot {what} the model cache folder '{folder}' "
                         f"({exc.strerror or exc}); choose another folder (--cache-dir, the "
                         f"settings, or {CACHE_ENV})") from None


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    except OSError:
        pass


def _discard_part(part: str) -> None:
    """Delete a partial download and what was noted about it."""
    _remove(part)
    _remove(part + ".json")


def _host(url: Optional[str]) -> str:
    if not url:
        return "the source"
    parsed = urllib.parse.urlparse(url)
    return parsed.netloc or url


def _reason(exc: urllib.error.HTTPError) -> str:
    return str(exc.reason or "").strip()


def _http_error_message(code: int, reason: str, url: str, target: _Target) -> str:
    answer = f"HTTP {code}{' ' + reason if reason else ''}"
    if code == 404:
        advice = ("the file may have moved: check for a plugin update, set a model mirror, or "
                  f"download it by hand and {import_advice(target.label)}")
    elif code in (401, 403):
        advice = ("the server wants a login or refuses access: download it by hand in a browser "
                  f"and {import_advice(target.label)}")
    elif code == 429 or code >= 500:
        advice = "the server has a problem or is busy: try again later, or use a model mirror"
    else:
        advice = "try again later, or use a model mirror"
    return f"Downloading '{target.label}' failed: {_host(url)} answered {answer} for {url}; {advice}"


def _content_range_start(value: str) -> Optional[int]:
    # "bytes 100-999/1000"
    try:
        unit, rest = value.strip().split(" ", 1)
        return int(rest.split("-", 1)[0]) if unit == "bytes" else None
    except (ValueError, IndexError):
        return None


def _content_range_total(value: str) -> Optional[int]:
    # "bytes */1000"
    try:
        total = value.strip().rsplit("/", 1)[1]
        return int(total) if total != "*" else None
    except (ValueError, IndexError):
        return None


def _read_part_info(part: str) -> dict:
    try:
        with open(part + ".json", encoding="utf-8") as handle:
            data = json.load(handle)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_part_info(part: str, url: str, headers) -> None:
    etag = headers.get("ETag")
    if etag and etag.startswith("W/"):
        etag = None  # weak validators are not allowed in If-Range
    info = {"url": url, "etag": etag, "last_modified": headers.get("Last-Modified")}
    try:
        with open(part + ".json", "w", encoding="utf-8") as handle:
            json.dump(info, handle)
    except OSError:
        pass


def server_reachable(url: str, timeout: float = 5.0) -> bool:
    """A quick TCP check of `url`'s server, so an offline machine gets its message at once rather
    than after a client's retries. file:// and other host-less URLs count as reachable."""
    import socket

    parts = urllib.parse.urlparse(url)
    if not parts.hostname:
        return True
    port = parts.port or (80 if parts.scheme == "http" else 443)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _file_advice(entry: ModelEntry, option: str, field: str) -> str:
    """CLIP files go through `models import`, which keeps the entry's settings (QuickGELU for
    OpenAI weights); other checkpoints may also be passed as a file."""
    if entry.family == "clip":
        return " (it keeps the model's settings, such as QuickGELU)"
    return f", or {file_advice(option, field)}"


def ensure_cached(entry: ModelEntry, what: str, option: str, field: str,
                  cache_dir: Optional[str] = None, progress: Optional[ProgressFn] = None,
                  mirror: Optional[str] = None) -> str:
    """The verified cached file of a catalog entry, downloading it first when its server can be
    reached; otherwise a ModelError saying how to get the file here by hand.

    what: 'CLIP weights'; option: the CLI flag ('--clip-weights'); field: the QGIS field name.
    cache_dir, mirror: as resolved by the caller (None: resolved here, once).
    progress(bytes_done, bytes_total) follows the transfer; a `status` attribute of it, when
    present, receives text messages (retries), so callers that only pass `progress` see them.
    """
    cache_dir = resolve_cache_dir(cache_dir)
    path = cached_path(entry, cache_dir)
    if path:
        return path
    mirror = resolve_mirror(mirror)
    url = source_url(entry, mirror)
    if not server_reachable(url):
        raise ModelError(
            f"The {what} '{entry.name}' ({entry.size_text()}) are not in the model cache and "
            f"{_host(url)} cannot be reached (no network?). On a connected machine "
            f"{download_advice(entry.name)}, or download {url} and {import_advice(entry.name)}"
            + _file_advice(entry, option, field))
    return download(entry, cache_dir, mirror=mirror, progress=progress,
                    status=getattr(progress, "status", None))
