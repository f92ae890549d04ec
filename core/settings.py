"""DR-Seg's settings, shared by the command line, Processing and the QGIS dock.

A plain dataclass saved as JSON: the file named by `DRSEG_CONFIG`, else `settings.json` in the
per-user config folder (Linux `$XDG_CONFIG_HOME/drseg`, macOS `~/Library/Application Support/drseg`,
Windows `%APPDATA%\\drseg`). A missing file means the defaults, which work as they are.

Every front end finds a value the same way, written once in `resolve()`: an explicit parameter,
else the environment variable (`DRSEG_CACHE_DIR` for `cache_dir`, `DRSEG_MODEL_MIRROR` for
`mirror_url`, `DRSEG_DASK` for `dask`), else the saved settings, else the built-in default; the file keeps the user's own
values.

Nothing here imports torch or QGIS.
"""
from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Dict, List, Mapping, Optional, Tuple

from .errors import InputError
from .models.registry import (DEFAULT_CLIP_MODEL, DEFAULT_CLIP_WEIGHTS, DEFAULT_DEVICE,
                              DEFAULT_DINO_MODEL, DEFAULT_DINO_WEIGHTS, DEFAULT_SAM_MODEL,
                              DEFAULT_SAM_WEIGHTS, DEVICE_NAMES, DINO_MODELS, SAM_MODELS)
from .protocol import DEFAULT_BATCH_SIZE, DEFAULT_STRIDE, DEFAULT_WINDOW

CONFIG_ENV = "DRSEG_CONFIG"
CACHE_ENV = "DRSEG_CACHE_DIR"
MIRROR_ENV = "DRSEG_MODEL_MIRROR"
DASK_ENV = "DRSEG_DASK"
# Settings an environment variable can set (over the saved value, under an explicit parameter).
ENVIRONMENT = {"cache_dir": CACHE_ENV, "mirror_url": MIRROR_ENV, "dask": DASK_ENV}
FORMAT_VERSION = 1

# Where `resolve()` found a value.
SOURCE_PARAMETER = "parameter"
SOURCE_SAVED = "saved settings"
SOURCE_DEFAULT = "default"

_CUDA_INDEX = re.compile(r"^cuda:\d+$")
_WEIGHT_FILE = re.compile(r"\.(pt|pth|bin|safetensors|ckpt|zip)$", re.IGNORECASE)
LIMITS = {"window": (32, 4096), "stride": (1, 4096), "block": (64, 16384), "batch_size": (1, 1024),
          "embedding_cache_mb": (16, 10 ** 7)}


@dataclass
class Settings:
    cache_dir: str = ""              # model cache folder; "" = the platform default
    mirror_url: str = ""             # base URL serving the catalog's file names; "" = each model's URL
    clip_model: str = DEFAULT_CLIP_MODEL      # open_clip architecture, or an open_clip config .json
    clip_weights: str = DEFAULT_CLIP_WEIGHTS  # open_clip tag, catalog name or checkpoint file
    dino_model: str = DEFAULT_DINO_MODEL      # one of DINO_MODELS
    dino_weights: str = DEFAULT_DINO_WEIGHTS  # catalog name or checkpoint file
    sam_model: str = DEFAULT_SAM_MODEL        # one of SAM_MODELS
    sam_weights: str = DEFAULT_SAM_WEIGHTS    # catalog name or checkpoint file
    device: str = DEFAULT_DEVICE              # auto, cpu, cuda, cuda:N, mps
    window: int = DEFAULT_WINDOW     # sliding-window (tile) size, working pixels
    stride: int = DEFAULT_STRIDE     # window step; overlap = window - stride
    block: int = 512                 # output block size, working pixels
    batch_size: int = DEFAULT_BATCH_SIZE  # windows per model call (halved on GPU out-of-memory)
    fast: bool = False               # fast mode: windows overlap less (protocol.FAST_OVERLAP)
    embedding_cache: bool = True     # keep image/text embeddings on disk (core.disk_cache)
    embedding_cache_mb: int = 2048   # its size budget; least recently used entries go first
    dask: str = ""                   # Dask cluster: local:N or tcp://HOST:PORT; "" = this process
    extra: Dict[str, object] = field(default_factory=dict, repr=False, compare=False)

    # -- derived ----------------------------------------------------------------------------
    @property
    def overlap(self) -> int:
        return self.window - self.stride

    def effective_cache_dir(self, environ=None) -> str:
        """`DRSEG_CACHE_DIR`, else `cache_dir`, else the platform default (not created here)."""
        return resolve("cache_dir", None, self, environ)[0]

    def effective_mirror(self, environ=None) -> Optional[str]:
        """`DRSEG_MODEL_MIRROR`, else `mirror_url`, else None (each model's own URL)."""
        return resolve("mirror_url", None, self, environ)[0]

    def overridden_by_environment(self, environ=None) -> Dict[str, str]:
        """{field: 'VARIABLE=value'} for settings the environment currently overrides."""
        environ = os.environ if environ is None else environ
        found = {}
        for name, variable in ENVIRONMENT.items():
            value = (environ.get(variable) or "").strip()
            if value:
                found[name] = f"{variable}={value}"
        return found

    # -- checking -----------------------------------------------------------------------------
    def validate(self, check_files: bool = False) -> List[str]:
        """Every problem, each a sentence for the user; [] when the settings can be used.

        check_files: also require that named files (weights, a CLIP config) exist - for the
        settings dialog; loading a settings file does not, so a moved file does not stop the CLI.
        """
        problems: List[str] = []
        for name in LIMITS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                problems.append(f"{_LABELS[name]} must be a whole number, got {value!r}")
        for name in ("cache_dir", "mirror_url", "clip_model", "clip_weights", "dino_model",
                     "dino_weights", "sam_model", "sam_weights", "device", "dask"):
            if not isinstance(getattr(self, name), str):
                problems.append(f"{_LABELS[name]} must be text, got {getattr(self, name)!r}")
        for name in ("embedding_cache", "fast"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{_LABELS[name]} must be true or false, "
                                f"got {getattr(self, name)!r}")
        if problems:  # the checks below need the right types
            return problems
        for name, (low, high) in LIMITS.items():
            value = getattr(self, name)
            if not low <= value <= high:
                problems.append(f"{_LABELS[name]} must be between {low} and {high}, got {value}")
        if self.stride > self.window:
            problems.append(f"Stride ({self.stride}) must not be larger than the window ({self.window}); "
                            "windows would leave gaps")
        device = self.device.strip().lower()
        if device not in DEVICE_NAMES and not _CUDA_INDEX.match(device):
            problems.append(f"Unknown device '{self.device}'; choose one of {', '.join(DEVICE_NAMES)} "
                            "or cuda:N")
        mirror = self.mirror_url.strip()
        if mirror and not mirror.lower().startswith(("http://", "https://", "file://")):
            problems.append(f"Mirror URL '{mirror}' must start with http://, https:// or file://")
        from .cluster.spec import parse_dask_spec
        try:
            parse_dask_spec(self.dask)
        except InputError as exc:
            problems.append(str(exc))
        cache = self.cache_dir.strip()
        if cache and os.path.isfile(os.path.expanduser(cache)):
            problems.append(f"Model cache folder '{cache}' is a file, not a folder")
        if not self.clip_model.strip():
            problems.append(f"CLIP model is empty; the default is {DEFAULT_CLIP_MODEL}")
        elif check_files and self.clip_model.strip().endswith(".json") and \
                not os.path.isfile(os.path.expanduser(self.clip_model.strip())):
            problems.append(f"CLIP model config file '{self.clip_model}' does not exist")
        if not self.clip_weights.strip():
            problems.append(f"CLIP weights are empty; the default is '{DEFAULT_CLIP_WEIGHTS}'")
        else:
            problems += _check_clip_weights(self.clip_weights.strip(), check_files)
        if self.dino_model not in DINO_MODELS:
            problems.append(f"Unknown DINO model '{self.dino_model}'; choose one of "
                            f"{', '.join(DINO_MODELS)}")
        else:
            problems += _check_weights("DINO", self.dino_weights.strip(), "dino",
                                       DINO_MODELS[self.dino_model].timm_name, self.dino_model,
                                       check_files)
        if self.sam_model not in SAM_MODELS:
            problems.append(f"Unknown SAM model '{self.sam_model}'; choose one of {', '.join(SAM_MODELS)}")
        else:
            problems += _check_weights("SAM", self.sam_weights.strip(), "sam", self.sam_model,
                                       self.sam_model, check_files)
        return problems

    def checked(self, check_files: bool = False) -> "Settings":
        problems = self.validate(check_files)
        if problems:
            raise InputError("Invalid DR-Seg settings: " + "; ".join(problems))
        return self

    # -- conversion ---------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, object]:
        data = dict(self.extra)
        data.update({k: v for k, v in asdict(self).items() if k != "extra"})
        data["format_version"] = FORMAT_VERSION
        return data

    @classmethod
    def from_dict(cls, data, source: str = "settings") -> "Settings":
        """Known keys become fields (type-checked by validate()); unknown keys are kept as they
        are and written back, so a newer plugin's settings survive an older one."""
        if not isinstance(data, dict):
            raise InputError(f"{source}: expected a JSON object of settings")
        names = {f.name for f in fields(cls) if f.name != "extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names and k != "format_version"}
        return cls(**known, extra=extra)


_LABELS = {"window": "Window size", "stride": "Stride", "block": "Block size",
           "batch_size": "Batch size", "cache_dir": "Model cache folder", "mirror_url": "Mirror URL",
           "clip_model": "CLIP model", "clip_weights": "CLIP weights", "dino_model": "DINO model",
           "dino_weights": "DINO weights", "sam_model": "SAM model", "sam_weights": "SAM weights",
           "device": "Device", "embedding_cache": "Embedding cache",
           "embedding_cache_mb": "Embedding cache size (MB)", "dask": "Dask cluster",
           "fast": "Fast mode"}


def _looks_like_file(value: str) -> bool:
    return bool(os.sep in value or "/" in value or _WEIGHT_FILE.search(value))


def _check_clip_weights(value: str, check_files: bool) -> List[str]:
    """An open_clip tag (e.g. the default), 'random', a CLIP catalog entry, or a checkpoint file."""
    from .models.catalog import get_model
    try:
        entry = get_model(value)
    except Exception:
        entry = None
    if entry is not None:
        if entry.family != "clip":
            return [f"CLIP weights '{value}' are a {entry.family.upper()} model, not CLIP"]
        return []
    if check_files and _looks_like_file(value) and not os.path.isfile(os.path.expanduser(value)):
        return [f"CLIP weights file '{value}' does not exist"]
    return []


def _check_weights(label: str, value: str, family: str, architecture: str, model: str,
                   check_files: bool) -> List[str]:
    """Weights are a catalog entry of the right family and architecture, or a checkpoint file."""
    if not value:
        return [f"{label} weights are empty"]
    from .models.catalog import get_model, list_models
    try:
        entry = get_model(value)
    except InputError:
        entry = None
    except Exception as exc:  # a broken catalog: say so, do not hide the settings
        return [f"{label} weights cannot be checked: {exc}"]
    if entry is not None:
        if entry.family != family:
            return [f"{label} weights '{value}' are a {entry.family.upper()} model, not {label}"]
        if entry.architecture.split(".")[0] != architecture:
            return [f"{label} weights '{value}' are for {entry.architecture}, not the {label} model "
                    f"'{model}'; choose matching weights or another model"]
        return []
    if not _looks_like_file(value):
        names = ", ".join(e.name for e in list_models(family))
        return [f"{label} weights '{value}' are neither a catalog model ({names}) nor a "
                "checkpoint file"]
    if check_files and not os.path.isfile(os.path.expanduser(value)):
        return [f"{label} weights file '{value}' does not exist"]
    return []


# ----------------------------------------------------------------------------- files

def resolve(name: str, explicit=None, settings: Optional["Settings"] = None,
            environ: Optional[Mapping[str, str]] = None) -> Tuple[object, str]:
    """-> (value, source) of the setting `name` (a `Settings` field), by the one precedence every
    front end (CLI, Processing, dock, library calls) follows:

    1. `explicit`: what the caller was told (a CLI option, a Processing parameter, a field of the
       dock, a function argument). None or blank text means "not told".
    2. The environment variable of the setting, where it has one (`ENVIRONMENT`:
       DRSEG_CACHE_DIR for cache_dir, DRSEG_MODEL_MIRROR for mirror_url, DRSEG_DASK for dask).
    3. `settings`: the saved settings. None reads the settings file now (a broken file counts as
       the defaults), so a front end resolves once per run and passes the values down.
    4. The built-in default: the `Settings` field's default.

    source is one of "parameter", "environment DRSEG_X" (the variable's name), "saved settings"
    and "default"; a front end writes it to its log ("model cache: /x (environment
    DRSEG_CACHE_DIR)"). A saved value equal to the built-in default counts as "default".
    Values come back as given, except cache_dir (an absolute path, `~` expanded; the default is
    the platform's cache folder) and mirror_url (without a trailing '/'; the default is None, each
    model's own URL). Raises InputError for a name that is not a setting.
    """
    known = {f.name: f for f in fields(Settings) if f.name != "extra"}
    if name not in known:
        raise InputError(f"Unknown setting '{name}'; known: {', '.join(known)}")
    environ = os.environ if environ is None else environ
    default = known[name].default if known[name].default is not MISSING else None
    if not _blank(explicit):
        value, source = explicit, SOURCE_PARAMETER
    elif name in ENVIRONMENT and not _blank(environ.get(ENVIRONMENT[name])):
        value, source = environ[ENVIRONMENT[name]], f"environment {ENVIRONMENT[name]}"
    else:
        if settings is None:
            settings = load_settings_or_defaults()[0]
        value = getattr(settings, name, default)
        source = SOURCE_DEFAULT if _blank(value) or value == default else SOURCE_SAVED
        if _blank(value):
            value = default
    if name == "cache_dir":
        value = str(value or "").strip()
        value = os.path.abspath(os.path.expanduser(value)) if value else default_cache_dir(environ)
    elif name == "mirror_url":
        value = str(value or "").strip().rstrip("/") or None
    elif isinstance(value, str):
        value = value.strip()
    return value, source


# Weights belong to a model: saved weights are used only with the saved model.
_WEIGHTS_OF = {"clip_weights": "clip_model", "dino_weights": "dino_model", "sam_weights": "sam_model"}


@dataclass(frozen=True)
class ResolvedSettings:
    """Values of several settings with where each came from, resolved once by a front end."""
    values: Dict[str, object]
    sources: Dict[str, str]

    def __getitem__(self, name: str):
        return self.values[name]

    def chosen(self, name: str):
        """The value when it was told or saved, else None (the engine's own default applies:
        e.g. DINO weights that are used only once downloaded)."""
        return None if self.sources[name].startswith(SOURCE_DEFAULT) else self.values[name]

    def describe(self, told_as: str = SOURCE_PARAMETER) -> List[str]:
        """One line per setting for a front end's log: 'CLIP weights: /w.pt (saved settings)';
        told_as names what told a value (a dock says 'this form')."""
        return [f"{_LABELS.get(name, name)}: {_shown(self.values[name])} "
                f"({told_as if self.sources[name] == SOURCE_PARAMETER else self.sources[name]})"
                for name in self.values]


def _shown(value) -> str:
    return "none" if value is None or value == "" else str(value)


def resolve_all(explicit: Mapping[str, object], settings: Optional["Settings"] = None,
                environ: Optional[Mapping[str, str]] = None) -> ResolvedSettings:
    """`resolve()` for every setting named in `explicit` ({name: value told, or None}), reading
    the settings file at most once. Weights not told follow their model: saved weights apply only
    to the saved model and default weights only to the default model; for another model the
    weights are that model's default (None for DINO and SAM: the catalog checkpoint of that
    model)."""
    if settings is None:
        settings = load_settings_or_defaults()[0]
    values, sources = {}, {}
    for name, told in explicit.items():
        values[name], sources[name] = resolve(name, told, settings, environ)
    for weights, model in _WEIGHTS_OF.items():
        if weights not in values or model not in values or sources[weights] == SOURCE_PARAMETER:
            continue
        # Saved weights were chosen for the saved model, default weights for the default model.
        paired = (getattr(settings, model) if sources[weights] == SOURCE_SAVED
                  else Settings.__dataclass_fields__[model].default)
        if values[model] != paired:
            values[weights] = DEFAULT_CLIP_WEIGHTS if weights == "clip_weights" else None
            sources[weights] = f"{SOURCE_DEFAULT} for {values[model]}"
    return ResolvedSettings(values, sources)


def _blank(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def default_cache_dir(environ=None) -> str:
    """The platform's per-user model cache."""
    environ = os.environ if environ is None else environ
    home = os.path.expanduser("~")
    if sys.platform.startswith("win"):
        base = environ.get("LOCALAPPDATA") or os.path.join(home, "AppData", "Local")
        return os.path.join(base, "drseg", "models")
    if sys.platform == "darwin":
        return os.path.join(home, "Library", "Caches", "drseg", "models")
    base = environ.get("XDG_CACHE_HOME") or os.path.join(home, ".cache")
    return os.path.join(base, "drseg", "models")


def config_path(environ=None, platform: Optional[str] = None, home: Optional[str] = None) -> str:
    """`DRSEG_CONFIG`, else settings.json in the per-user config folder."""
    environ = os.environ if environ is None else environ
    chosen = (environ.get(CONFIG_ENV) or "").strip()
    if chosen:
        return os.path.abspath(os.path.expanduser(chosen))
    platform = platform or sys.platform
    home = home or os.path.expanduser("~")
    if platform.startswith("win"):
        base = environ.get("APPDATA") or os.path.join(home, "AppData", "Roaming")
    elif platform == "darwin":
        base = os.path.join(home, "Library", "Application Support")
    else:
        base = environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    return os.path.join(base, "drseg", "settings.json")


def load_settings(path: Optional[str] = None) -> Settings:
    """The saved settings, or the defaults when there is no file yet.

    Raises InputError, naming the file, when it cannot be read or holds invalid values.
    """
    path = path or config_path()
    if not os.path.exists(path):
        return Settings()
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except ValueError as exc:
        raise InputError(f"Settings file '{path}' is not valid JSON ({exc}); fix it, or delete it "
                         "to start from the defaults") from None
    except OSError as exc:
        raise InputError(f"Settings file '{path}' cannot be read ({exc.strerror or exc})") from None
    settings = Settings.from_dict(data, source=f"Settings file '{path}'")
    problems = settings.validate()
    if problems:
        raise InputError(f"Settings file '{path}' has invalid values: " + "; ".join(problems)
                         + ". Fix them in the DR-Seg settings or delete the file")
    return settings


def load_settings_or_defaults(path: Optional[str] = None):
    """-> (settings, problem or None): never raises, for front ends that must start anyway."""
    try:
        return load_settings(path), None
    except InputError as exc:
        return Settings(), str(exc)


def save_settings(settings: Settings, path: Optional[str] = None) -> str:
    """Validate and write atomically (a crash never leaves half a file). Returns the path."""
    settings.checked()
    path = path or config_path()
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".settings-", suffix=".json", dir=folder)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(settings.to_dict(), out, indent=2, sort_keys=True)
                out.write("\n")
            os.replace(temporary, path)
        except BaseException:
            if os.path.exists(temporary):
                os.remove(temporary)
            raise
    except OSError as exc:
        raise InputError(f"Cannot save the settings to '{path}' ({exc.strerror or exc}); set "
                         f"{CONFIG_ENV} to a writable file") from None
    return path
