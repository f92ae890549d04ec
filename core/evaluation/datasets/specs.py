"""The JSON descriptions of data sets: the built-in ones in core/data/datasets/, lookup by name
or alias, and the path patterns their layouts use."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, List, Optional

from ...errors import InputError

DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "datasets"
MAX_LISTED = 3  # examples named in an error message


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def _load_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            spec = json.load(handle)
    except OSError as exc:
        raise InputError(f"Cannot read data set description {path}: {exc}")
    except json.JSONDecodeError as exc:
        raise InputError(f"Data set description {path} is not valid JSON: {exc}")
    if not isinstance(spec, dict) or "name" not in spec or spec.get("task") not in ("ovss", "refer"):
        raise InputError(f"Data set description {path} needs a \"name\" and a \"task\" of "
                         "\"ovss\" or \"refer\"")
    spec["_path"] = str(path)
    return spec


def _builtin_specs() -> Dict[str, dict]:
    specs = {}
    for path in sorted(DATA_DIR.glob("*.json")):
        spec = _load_json(path)
        specs[spec["name"]] = spec
    return specs


def list_datasets(task: Optional[str] = None) -> List[str]:
    """Names of the built-in data sets (``task`` "ovss" or "refer" to filter)."""
    return [name for name, spec in _builtin_specs().items() if task is None or spec["task"] == task]


def dataset_spec(name: str) -> dict:
    """The JSON description of a data set by name or alias (any case), or by JSON file path."""
    if str(name).lower().endswith(".json"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise InputError(f"Data set description file not found: {path}")
        return _load_json(path)
    wanted = _normalise(name)
    specs = _builtin_specs()
    for spec in specs.values():
        names = [spec["name"]] + list(spec.get("aliases", []))
        if wanted in (_normalise(n) for n in names):
            return spec
    raise InputError(f"Unknown data set '{name}'. Known: {', '.join(specs)} "
                     "(or give the path of a data set JSON file)")


def as_list(value) -> List[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def fill(pattern: str, split: str, **extra) -> str:
    values = {"split": split, "Split": split[:1].upper() + split[1:], "SPLIT": split.upper()}
    values.update(extra)
    try:
        return pattern.format(**values)
    except (KeyError, IndexError, ValueError) as exc:
        raise InputError(f"Bad path pattern '{pattern}' in the data set description: {exc}")


class SampleList:
    """A data set is a list of samples (`self.samples`): its length, iteration and indexing."""

    samples: list

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self):
        return iter(self.samples)

    def __getitem__(self, index: int):
        return self.samples[index]
