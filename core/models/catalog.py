"""The checkpoints DR-Seg supports: where each comes from, what it is, how to check it.

The list lives in `core/data/models.json` so that it can be read (and extended by a company's own
mirror) without code. Each entry names its family ('clip', 'dino', 'sam'), the architecture the
engine builds for it (an open_clip model name, a timm DINO name, a segment_anything registry key),
the source URL, the file name used in the cache and on mirrors, the size and SHA-256 where they are
known (null otherwise: verification then checks only what is known and says so), the licence and a
line on what the model is good for.
"""
from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

from ..errors import InputError, ModelError
from .registry import FAMILIES

CATALOG_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                            "models.json")

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SAFE_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ModelEntry:
    """One supported checkpoint. `size`/`sha256` describe the file served at `url` (for archive
    entries: the zip); None where not published or not reliably known."""

    name: str
    family: str
    architecture: str
    url: Optional[str]
    file: str
    licence: str
    good_for: str
    size: Optional[int] = None
    sha256: Optional[str] = None
    homepage: Optional[str] = None
    approx_size_mb: Optional[float] = None
    quick_gelu: bool = False
    key: Optional[str] = None
    strip_prefixes: Tuple[str, ...] = ("module.",)
    archive: Optional[str] = None
    archive_member: Optional[str] = None
    notes: str = ""
    extra: Dict[str, object] = field(default_factory=dict, compare=False, hash=False)

    @property
    def download_name(self) -> str:
        """The name the server and a mirror serve: the zip for archive entries, else `file`."""
        return self.archive or self.file

    @property
    def verifiable(self) -> str:
        """'size and SHA-256', 'size only', 'SHA-256 only' or 'nothing' - what the catalog can check."""
        if self.size is not None and self.sha256:
            return "size and SHA-256"
        if self.size is not None:
            return "size only"
        if self.sha256:
            return "SHA-256 only"
        return "nothing"

    def size_text(self) -> str:
        """Human-readable size for lists: exact when known, '~' when estimated, '?' otherwise."""
        if self.size is not None:
            return _human(self.size)
        if self.approx_size_mb is not None:
            return "~" + _human(self.approx_size_mb * 1e6)
        return "?"

    def to_dict(self) -> Dict[str, object]:
        data = asdict(self)
        data.pop("extra")
        data["strip_prefixes"] = list(self.strip_prefixes)
        data.update(self.extra)
        return data


def list_models(family: Optional[str] = None) -> List[ModelEntry]:
    """All catalog entries, or those of one family ('clip', 'dino', 'sam'), in catalog order."""
    entries = load_catalog()
    if family is None:
        return list(entries)
    family = family.strip().lower()
    if family not in FAMILIES:
        raise InputError(f"Unknown model family '{family}'; choose one of: {', '.join(FAMILIES)}")
    return [e for e in entries if e.family == family]


def get_model(name) -> ModelEntry:
    """The entry called `name` (case-insensitive); a `ModelEntry` is returned as is."""
    if isinstance(name, ModelEntry):
        return name
    entries = load_catalog()
    wanted = str(name).strip().lower()
    for entry in entries:
        if entry.name.lower() == wanted:
            return entry
    names = [e.name for e in entries]
    close = difflib.get_close_matches(wanted, names, n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise InputError(f"Unknown model '{name}'.{hint} Valid names: {', '.join(names)}")


_CACHE: Dict[str, Tuple[float, List[ModelEntry]]] = {}


def load_catalog(path: Optional[str] = None) -> List[ModelEntry]:
    """Read and check a catalog file (default: the packaged one). Raises ModelError when broken."""
    path = path or CATALOG_PATH
    try:
        stamp = os.path.getmtime(path)
    except OSError:
        raise ModelError(f"Model catalog not found: '{path}'; reinstall the plugin") from None
    cached = _CACHE.get(path)
    if cached and cached[0] == stamp:
        return cached[1]
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as exc:
        raise ModelError(f"Model catalog '{path}' cannot be read ({exc}); reinstall the plugin") from None
    entries = parse_catalog(data, source=path)
    _CACHE[path] = (stamp, entries)
    return entries


def parse_catalog(data, source: str = "catalog") -> List[ModelEntry]:
    """Check the catalog's structure and turn it into entries; every problem is named."""
    items = data.get("models") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise ModelError(f"Model catalog '{source}' has no 'models' list")
    entries: List[ModelEntry] = []
    seen_names, seen_files = set(), set()
    known = {f for f in ModelEntry.__dataclass_fields__ if f != "extra"}
    for index, item in enumerate(items):
        where = f"entry {index + 1}" + (f" ('{item.get('name')}')" if isinstance(item, dict) else "")
        if not isinstance(item, dict):
            raise ModelError(f"Model catalog '{source}': {where} is not an object")
        for required in ("name", "family", "architecture", "file", "licence", "good_for"):
            if not isinstance(item.get(required), str) or not item[required].strip():
                raise ModelError(f"Model catalog '{source}': {where} lacks '{required}'")
        if item["family"] not in FAMILIES:
            raise ModelError(f"Model catalog '{source}': {where} has unknown family '{item['family']}'")
        url = item.get("url")
        if url is not None and not (isinstance(url, str) and re.match(r"^https?://", url)):
            raise ModelError(f"Model catalog '{source}': {where} has an invalid url")
        size = item.get("size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
            raise ModelError(f"Model catalog '{source}': {where} has an invalid size (bytes or null)")
        sha = item.get("sha256")
        if sha is not None and not (isinstance(sha, str) and _SHA256.match(sha)):
            raise ModelError(f"Model catalog '{source}': {where} has an invalid sha256 "
                             "(64 lower-case hex digits or null)")
        for name_field in ("file", "archive"):
            value = item.get(name_field)
            if value is not None and not (isinstance(value, str) and _SAFE_FILE.match(value)):
                raise ModelError(f"Model catalog '{source}': {where} has an unsafe {name_field} name "
                                 f"'{value}' (letters, digits, '.', '_', '-' only)")
        if bool(item.get("archive")) != bool(item.get("archive_member")):
            raise ModelError(f"Model catalog '{source}': {where} needs both 'archive' and 'archive_member'")
        lowered = item["name"].lower()
        if lowered in seen_names:
            raise ModelError(f"Model catalog '{source}': name '{item['name']}' appears twice")
        for served in {item["file"], item.get("archive") or item["file"]}:
            if served in seen_files:
                raise ModelError(f"Model catalog '{source}': file name '{served}' is used twice")
            seen_files.add(served)
        seen_names.add(lowered)
        kwargs = {k: v for k, v in item.items() if k in known}
        kwargs["strip_prefixes"] = tuple(item.get("strip_prefixes") or ())
        kwargs["quick_gelu"] = bool(item.get("quick_gelu", False))
        kwargs["notes"] = item.get("notes") or ""
        kwargs["extra"] = {k: v for k, v in item.items() if k not in known}
        entries.append(ModelEntry(**kwargs))
    return entries


def _human(num_bytes: float) -> str:
    value = float(num_bytes)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit != "GB" else f"{value:.1f} {unit}"
        value /= 1000.0
    return f"{value:.1f} GB"


def entry_for_weights(family: str, label: str, option: str, default_name: Optional[str],
                      model_name: Optional[str], weights: Optional[str],
                      file_suffixes: Tuple[str, ...]) -> ModelEntry:
    """The catalog entry a loader of `family` uses: the model's default checkpoint when no
    weights are named (`default_name`), else the catalog entry named. A name that looks like a
    file but is not one says 'file not found' (not a list of names).

    label: the model as the user reads it ('SAM'); option: the option naming its weights."""
    entries = {entry.name.lower(): entry for entry in list_models(family)}
    if weights is None:
        if default_name is None:
            raise InputError(f"{label} model '{model_name}' has no catalog "
                             f"checkpoint; give a weights file with {option} PATH")
        return entries[default_name]
    wanted = str(weights).strip().lower()
    if wanted in entries:
        return entries[wanted]
    if wanted.endswith(file_suffixes) or os.sep in wanted or "/" in wanted:
        raise ModelError(f"{label} weights file not found: '{weights}'")
    raise InputError(f"'{weights}' is neither a {label} weights file nor a catalog name "
                     f"({', '.join(sorted(entries))})")


def base_weights_sha256(model_name: Optional[str], weights: Optional[str],
                        family: str = "clip") -> str:
    """The SHA-256 of a model's base weights when it is known without downloading: a file's
    own (computed), a catalog entry's (a CLIP catalog name or open_clip tag the catalog mirrors;
    a SAM catalog name or, with no weights named, the model's default checkpoint); '' for other
    open_clip tags and 'random'. `family`: 'clip' or 'sam'."""
    from .download import sha256_of
    from .registry import RANDOM_WEIGHTS

    if weights is not None and os.path.isfile(str(weights)):
        return sha256_of(str(weights))
    if weights == RANDOM_WEIGHTS:
        return ""
    try:
        if family == "sam":
            from .sam import _catalog_entry

            entry = _catalog_entry(model_name, weights or None)
        else:
            from .clip import catalog_entry

            entry = catalog_entry(model_name, weights)
    except Exception:  # an unknown name is the loader's error to report, not this function's
        return ""
    return (entry.sha256 or "") if entry is not None else ""
