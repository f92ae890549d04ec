"""The class prompt: `building,roof; road,street; water` -> classes with their synonyms."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

from .errors import InputError

BACKGROUND = "background"
BACKGROUND_INDEX = 0   # class-map value of pixels no class is sure enough about
NODATA_INDEX = 255     # class-map value of pixels outside the raster's valid data
MAX_CLASSES = 254


@dataclass(frozen=True)
class ClassSpec:
    """One output class. `name` is its first synonym; every synonym is its own text query."""

    name: str
    synonyms: Tuple[str, ...]


def parse_classes(text) -> List[ClassSpec]:
    """Parse `;`-separated classes with `,`-separated synonyms (a list of strings also works)."""
    parts: Sequence[str]
    if text is None:
        parts = []
    elif isinstance(text, str):
        parts = text.replace("\n", ";").split(";")
    else:
        parts = list(text)
    classes, seen = [], {}
    for part in parts:
        synonyms = tuple(dict.fromkeys(s.strip() for s in part.split(",") if s.strip()))
        if not synonyms:
            continue
        key = synonyms[0].lower()
        if key in seen:
            raise InputError(f"Class '{synonyms[0]}' is listed twice; merge its synonyms with ','")
        seen[key] = True
        classes.append(ClassSpec(synonyms[0], synonyms))
    if not classes:
        raise InputError("The class prompt is empty: type class names separated by ';' "
                         "(synonyms of one class separated by ','), e.g. 'building,roof; road; water'")
    if len(classes) > MAX_CLASSES:
        raise InputError(f"At most {MAX_CLASSES} classes can be segmented at once, got {len(classes)}")
    return classes


def flatten_queries(classes: Sequence[ClassSpec]) -> Tuple[List[str], List[int]]:
    """All text queries, and for each the 0-based index of the class it belongs to."""
    queries, owner = [], []
    for index, spec in enumerate(classes):
        for synonym in spec.synonyms:
            queries.append(synonym)
            owner.append(index)
    return queries, owner
