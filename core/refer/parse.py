"""Rule-based parsing of referring expressions on remote-sensing images.

``parse_expression("the largest pond north of the road")`` splits an expression into the *target*
noun phrase (what to segment, with its remote-sensing synonyms) and global modifiers:

- absolute ``position`` in the image (``left``, ``top-right``, ``centre`` ...; compass words are
  read on a north-up image: ``in the north-east`` is ``top-right``),
- ``relations`` to other named things (``north of the road``, ``next to the river``,
  ``between the road and the lake``, ``on the bridge``),
- ``order`` among instances (``largest``, ``second from left``, ``third from the top``),
- ``colours`` and shape/size ``attributes`` (``white``, ``round``, ``long``, ``small``),
- plurality (``all the storage tanks``, ``the two ships``, plural nouns).

No model is involved: a small grammar below and the editable vocabulary in
``core/data/refer_vocabulary.json`` (nouns and synonyms, colours, attributes, filler words).
Positions and relation directions use image codes shared with the selection step:
``left right top bottom top-left top-right bottom-left bottom-right centre``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import InputError

VOCABULARY_PATH = Path(__file__).resolve().parent.parent / "data" / "refer_vocabulary.json"

POSITIONS = ("left", "right", "top", "bottom", "top-left", "top-right", "bottom-left",
             "bottom-right", "centre")
RELATION_KINDS = ("direction", "near", "far", "on", "between")
ORDER_KEYS = ("area", "length", "x", "y", "distance")

# Words naming a part of the image -> position code (after _tokenize merged compounds).
_DIRECTION_WORDS = {
    "left": "left", "right": "right", "top": "top", "bottom": "bottom", "upper": "top",
    "lower": "bottom", "top-left": "top-left", "top-right": "top-right",
    "bottom-left": "bottom-left", "bottom-right": "bottom-right",
    "north": "top", "south": "bottom", "east": "right", "west": "left",
    "northeast": "top-right", "northwest": "top-left", "southeast": "bottom-right",
    "southwest": "bottom-left", "northern": "top", "southern": "bottom", "eastern": "right",
    "western": "left", "northeastern": "top-right", "northwestern": "top-left",
    "southeastern": "bottom-right", "southwestern": "bottom-left",
    "centre": "centre", "central": "centre",
}
# Nouns that follow a direction word without changing it: "the left side", "the top corner".
_PART_WORDS = {"side", "part", "corner", "edge", "half", "area", "region", "portion", "section",
               "end", "border", "quarter", "zone", "sector"}
# Nouns meaning the picture itself: "left of the image" is a position, not a relation.
_IMAGE_WORDS = {"image", "picture", "photo", "photograph", "scene", "map", "tile", "view", "frame",
                "figure", "img", "raster", "canvas"}
_INTENSIFIERS = {"far", "very", "extreme", "immediately", "directly", "just", "due", "slightly",
                 "farther", "further", "most"}
_DETERMINERS = {"the", "a", "an", "some", "this", "that", "these", "those", "its", "their"}
_PREPOSITIONS = {"to", "on", "at", "in", "towards", "toward"}

# Superlatives and comparatives -> (order key, descending).
_SUPERLATIVES = {
    "largest": ("area", True), "biggest": ("area", True), "hugest": ("area", True),
    "widest": ("area", True), "smallest": ("area", False), "tiniest": ("area", False),
    "littlest": ("area", False), "longest": ("length", True), "shortest": ("length", False),
    "leftmost": ("x", False), "westernmost": ("x", False), "westmost": ("x", False),
    "rightmost": ("x", True), "easternmost": ("x", True), "eastmost": ("x", True),
    "topmost": ("y", False), "uppermost": ("y", False), "northernmost": ("y", False),
    "northmost": ("y", False), "bottommost": ("y", True), "lowermost": ("y", True),
    "southernmost": ("y", True), "southmost": ("y", True),
    "larger": ("area", True), "bigger": ("area", True), "wider": ("area", True),
    "smaller": ("area", False), "longer": ("length", True), "shorter": ("length", False),
}
_ORDINALS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6,
             "seventh": 7, "eighth": 8, "ninth": 9, "tenth": 10, "last": -1}
_NUMBERS = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
            "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "both": 2}
_PLURAL_QUANTIFIERS = {"several", "many", "multiple", "various", "numerous", "few"}
_ALL_QUANTIFIERS = {"all", "every", "each", "entire"}
# Side of the image an ordinal counts from -> (order key, descending).
_FROM_SIDE = {"left": ("x", False), "right": ("x", True), "top": ("y", False),
              "bottom": ("y", True)}

# Relation triggers: token sequences -> (kind, direction). Longest sequences are tried first.
_RELATION_PHRASES: Dict[Tuple[str, ...], Tuple[str, Optional[str]]] = {
    ("next", "to"): ("near", None), ("close", "to"): ("near", None),
    ("adjacent", "to"): ("near", None), ("near", "to"): ("near", None),
    ("in", "front", "of"): ("near", None), ("on", "the", "side", "of"): ("near", None),
    ("at", "the", "side", "of"): ("near", None), ("by", "the", "side", "of"): ("near", None),
    ("at", "the", "end", "of"): ("near", None), ("at", "the", "edge", "of"): ("near", None),
    ("on", "the", "edge", "of"): ("near", None), ("surrounded", "by"): ("near", None),
    ("closest", "to"): ("near", None), ("nearest", "to"): ("near", None),
    ("far", "away", "from"): ("far", None), ("far", "from"): ("far", None),
    ("away", "from"): ("far", None), ("distant", "from"): ("far", None),
    ("farthest", "from"): ("far", None), ("furthest", "from"): ("far", None),
    ("on", "top", "of"): ("on", None),
    ("near",): ("near", None), ("nearby",): ("near", None), ("beside",): ("near", None),
    ("besides",): ("near", None), ("by",): ("near", None), ("along",): ("near", None),
    ("alongside",): ("near", None), ("around",): ("near", None),
    ("surrounding",): ("near", None), ("bordering",): ("near", None),
    ("neighbouring",): ("near", None), ("neighboring",): ("near", None),
    ("adjoining",): ("near", None), ("behind",): ("near", None),
    ("closest",): ("near", None), ("nearest",): ("near", None),
    ("above",): ("direction", "top"), ("below",): ("direction", "bottom"),
    ("beneath",): ("direction", "bottom"),
    ("over",): ("on", None), ("across",): ("on", None), ("crossing",): ("on", None),
    ("spanning",): ("on", None), ("under",): ("on", None), ("underneath",): ("on", None),
    ("on",): ("on", None), ("in",): ("on", None), ("inside",): ("on", None),
    ("within",): ("on", None), ("at",): ("on", None), ("into",): ("on", None),
    ("onto",): ("on", None), ("upon",): ("on", None),
}
_MAX_RELATION_LEN = max(len(k) for k in _RELATION_PHRASES)
# Relation words that also imply an order by distance to the reference (ascending?).
_DISTANCE_ORDER = {"closest": False, "nearest": False, "farthest": True, "furthest": True}
_QUALIFIER_STARTS = {"with", "having", "containing", "whose", "featuring", "carrying"}
_BOUNDARIES = {"|", "and", "or", "but", "while", "where"}


@dataclass(frozen=True)
class NounPhrase:
    """A named thing: ``text`` as written (determiners removed), ``head`` the singular noun
    (``"storage tank"``), ``category`` its vocabulary concept (None when the noun is not in
    the vocabulary) and ``synonyms`` the queries that mean it, the head first."""

    text: str
    head: str
    category: Optional[str]
    synonyms: Tuple[str, ...]
    plural: bool = False


@dataclass(frozen=True)
class Relation:
    """Relation of the target to another named thing.

    kind: ``direction`` (``direction`` is then a position code: ``north of`` -> ``top``,
    ``left of`` -> ``left``), ``near``, ``far``, ``on`` (overlapping / inside: ``on the road``,
    ``over the river``), or ``between`` (``reference`` and ``second``)."""

    kind: str
    reference: NounPhrase
    direction: Optional[str] = None
    second: Optional[NounPhrase] = None
    text: str = ""


@dataclass(frozen=True)
class Order:
    """Pick the ``rank``-th instance (1-based) after sorting by ``key``: ``area`` (largest /
    smallest), ``length`` (longest), ``x`` (from the left; descending = from the right), ``y``
    (from the top; descending = from the bottom), ``distance`` (to the first relation's
    reference)."""

    key: str
    descending: bool
    rank: int = 1


@dataclass(frozen=True)
class ParsedExpression:
    """Everything the parser understood of one expression."""

    text: str
    target: NounPhrase
    position: Optional[str] = None
    relations: Tuple[Relation, ...] = ()
    order: Optional[Order] = None
    colours: Tuple[str, ...] = ()
    attributes: Tuple[str, ...] = ()
    plural: bool = False
    count: Optional[int] = None
    qualifiers: Tuple[str, ...] = ()

    @property
    def head(self) -> str:
        return self.target.head

    @property
    def category(self) -> Optional[str]:
        return self.target.category

    @property
    def synonyms(self) -> Tuple[str, ...]:
        return self.target.synonyms


# --------------------------------------------------------------------------------------------
# Vocabulary


@dataclass(frozen=True)
class Vocabulary:
    """The parser's word lists, loaded from ``refer_vocabulary.json``."""

    nouns: Dict[str, Tuple[str, ...]]                 # concept -> terms (first = preferred)
    surfaces: Dict[str, Tuple[str, str, bool]]        # written form -> (term, concept, plural)
    colours: Dict[str, str]                           # word -> canonical colour
    attributes: Dict[str, str]                        # word -> canonical attribute
    generic_nouns: frozenset
    fillers: frozenset
    command_words: frozenset
    max_term_words: int = 1


def _plural_forms(word: str, irregular: Dict[str, str]) -> List[str]:
    if word in irregular:
        return [irregular[word]]
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return [word + "es"]
    if len(word) > 2 and word.endswith("y") and word[-2] not in "aeiou":
        return [word[:-1] + "ies"]
    return [word + "s"]


def _singular(word: str) -> Tuple[str, bool]:
    """Best-effort singular of a noun outside the vocabulary, and whether it looked plural."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y", True
    if len(word) > 4 and word.endswith(("sses", "xes", "zes", "ches", "shes")):
        return word[:-2], True
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1], True
    return word, False


def _norm_term(term: str) -> str:
    return " ".join(term.lower().replace("-", " ").split())


def load_vocabulary(path: Optional[str] = None) -> Vocabulary:
    """Read a vocabulary file (default: the packaged ``refer_vocabulary.json``)."""
    return _load_vocabulary(str(path or VOCABULARY_PATH))


@lru_cache(maxsize=8)
def _load_vocabulary(path: str) -> Vocabulary:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise InputError(f"Cannot read the referring vocabulary {path}: {exc}") from exc
    irregular = {_norm_term(k): _norm_term(v) for k, v in data.get("irregular_plurals", {}).items()}
    nouns: Dict[str, Tuple[str, ...]] = {}
    surfaces: Dict[str, Tuple[str, str, bool]] = {}
    plural_surfaces: Dict[str, Tuple[str, str, bool]] = {}
    for concept, entry in data["nouns"].items():
        terms = []
        for term in entry["terms"]:
            term = _norm_term(term)
            if term in terms:
                continue
            if term in surfaces and surfaces[term][1] != concept:
                raise InputError(f"Vocabulary {path}: '{term}' is listed under both "
                                 f"'{surfaces[term][1]}' and '{concept}'")
            terms.append(term)
            surfaces[term] = (term, concept, False)
            *first, last = term.split()
            for plural in _plural_forms(last, irregular):
                form = " ".join(first + [plural])
                if form != term:
                    plural_surfaces.setdefault(form, (term, concept, True))
        nouns[concept] = tuple(terms)
    for form, value in plural_surfaces.items():
        surfaces.setdefault(form, value)   # a singular term wins over a generated plural

    def word_map(section: str) -> Dict[str, str]:
        out: Dict[str, str] = {}
        for canonical, words in data.get(section, {}).items():
            for word in [canonical] + list(words):
                out[_norm_term(word)] = canonical
        return out

    return Vocabulary(
        nouns=nouns, surfaces=surfaces, colours=word_map("colours"),
        attributes=word_map("attributes"),
        generic_nouns=frozenset(_norm_term(w) for w in data.get("generic_nouns", [])),
        fillers=frozenset(_norm_term(w) for w in data.get("fillers", [])),
        command_words=frozenset(_norm_term(w) for w in data.get("command_words", [])),
        max_term_words=max(len(s.split()) for s in surfaces))


# --------------------------------------------------------------------------------------------
# Tokens


_DIR_BASE = {"left", "right", "top", "bottom", "upper", "lower", "north", "south", "east", "west",
             "northern", "southern", "eastern", "western"}


def _tokenize(text: str) -> List[str]:
    """Lower case words; punctuation that separates clauses becomes '|'; compound directions,
    '-most' superlatives and 'centre' spellings are merged into single tokens."""
    s = text.lower().replace("\u2019", "'").replace("\u2013", "-").replace("\u2014", " | ")
    s = re.sub(r"'s\b", "", s)
    s = re.sub(r"[,;:!?()\[\]{}\"]", " | ", s)
    s = re.sub(r"[^a-z0-9|\- ]", " ", s)
    raw = s.replace("-", " ").split()
    out: List[str] = []
    i = 0
    while i < len(raw):
        a = raw[i]
        b = raw[i + 1] if i + 1 < len(raw) else ""
        if a in ("center", "centre", "middle"):
            out.append("centre")
        elif a in ("north", "south") and b in ("east", "west", "eastern", "western"):
            out.append(a + b)
            i += 1
        elif a in ("top", "upper") and b in ("left", "right"):
            out.append("top-" + b)
            i += 1
        elif a in ("bottom", "lower") and b in ("left", "right"):
            out.append("bottom-" + b)
            i += 1
        elif a in _DIR_BASE and b == "most":
            merged = a + "most"
            out.append({"uppermost": "uppermost", "bottommost": "bottommost"}.get(merged, merged))
            i += 1
        elif a in ("left", "right") and b == "hand":
            out.append(a)
            i += 1
        elif a == "right" and b == "handed":
            out.append(a)
            i += 1
        else:
            out.append(a)
        i += 1
    return out


def _ordinal_value(token: str) -> Optional[int]:
    if token in _ORDINALS:
        return _ORDINALS[token]
    m = re.fullmatch(r"(\d+)(st|nd|rd|th)", token)
    return int(m.group(1)) if m else None


def _number_value(token: str) -> Optional[int]:
    if token in _NUMBERS:
        return _NUMBERS[token]
    if token.isdigit():
        return int(token)
    return None


# --------------------------------------------------------------------------------------------
# Parser


class _Parser:
    def __init__(self, text: str, vocab: Vocabulary):
        self.text = text
        self.vocab = vocab
        self.toks = _tokenize(text)
        self.segments: List[List[str]] = [[]]     # plain words, split where a clause intervened
        self.positions: List[str] = []
        self.relations: List[Relation] = []
        self.qualifiers: List[str] = []
        self.qualifier_colours: List[str] = []
        self.superlative: Optional[Tuple[str, bool]] = None
        self.ordinal: Optional[int] = None
        self.from_side: Optional[str] = None
        self.distance_order: Optional[bool] = None
        self.order_index: Optional[int] = None     # token index of the first order word
        self.count: Optional[int] = None
        self.count_index: Optional[int] = None
        self.all_instances = False
        self.plural_hint = False
        self.one_of = False

    # ---------------- helpers
    def tok(self, i: int) -> str:
        return self.toks[i] if 0 <= i < len(self.toks) else ""

    def break_segment(self) -> None:
        if self.segments[-1]:
            self.segments.append([])

    def skip_determiners(self, j: int) -> int:
        while self.tok(j) in _DETERMINERS:
            j += 1
        return j

    def relation_at(self, i: int):
        """(length, (kind, direction), words) of the longest relation trigger at i, or None."""
        for n in range(min(_MAX_RELATION_LEN, len(self.toks) - i), 0, -1):
            key = tuple(self.toks[i:i + n])
            if key in _RELATION_PHRASES:
                return n, _RELATION_PHRASES[key], key
        return None

    def direction_at(self, i: int, bare: bool = True) -> Optional[dict]:
        """A direction phrase at i: [prep] [the] [intensifier] DIR [part] [of NP]."""
        j = i
        prep = self.tok(j) if self.tok(j) in _PREPOSITIONS else None
        if prep:
            j += 1
            j = self.skip_determiners(j)
        elif not bare:
            return None
        while self.tok(j) in _INTENSIFIERS:
            j += 1
        word = self.tok(j)
        if word not in _DIRECTION_WORDS:
            return None
        code = _DIRECTION_WORDS[word]
        j += 1
        if self.tok(j) in _PART_WORDS:
            j += 1
        if self.tok(j) == "of":
            k = self.skip_determiners(j + 1)
            if self.tok(k) in _IMAGE_WORDS:
                return {"end": k + 1, "position": code}
            # "north of X": the caller reads X (noun_phrase_tokens from "np_start")
            return {"end": j + 1, "relation": code, "np_start": j + 1,
                    "words": self.toks[i:j + 1]}
        return {"end": j, "position": code}

    def order_from_at(self, i: int) -> Optional[Tuple[int, str]]:
        if self.tok(i) != "from":
            return None
        j = self.skip_determiners(i + 1)
        while self.tok(j) in _INTENSIFIERS:
            j += 1
        code = _DIRECTION_WORDS.get(self.tok(j))
        if code is None or code == "centre":
            return None
        j += 1
        if self.tok(j) in _PART_WORDS:
            j += 1
        if self.tok(j) == "of" and self.tok(self.skip_determiners(j + 1)) in _IMAGE_WORDS:
            j = self.skip_determiners(j + 1) + 1
        return j, code

    def starts_clause(self, j: int) -> bool:
        """True where a reference noun phrase ends: a boundary, a relation, a prepositional
        direction phrase, an order phrase or a qualifier."""
        t = self.tok(j)
        if not t or t in _BOUNDARIES or t in _QUALIFIER_STARTS or t == "between":
            return True
        if t in ("that", "which", "who"):
            return True
        if self.order_from_at(j) or t in _SUPERLATIVES:
            return True
        if self.direction_at(j, bare=False):
            return True
        if self.relation_at(j):
            return True
        d = self.direction_at(j, bare=True)
        return bool(d and "relation" in d)

    def noun_phrase_tokens(self, j: int, stop_at_and: bool = False) -> Tuple[List[str], int]:
        j = self.skip_determiners(j)
        out: List[str] = []
        while j < len(self.toks):
            t = self.toks[j]
            if out and self.starts_clause(j):
                break
            if not out and t in _BOUNDARIES:
                break
            if stop_at_and and t == "and":
                break
            out.append(t)
            j += 1
        return out, j

    # ---------------- matchers; each returns the next index or None
    def m_quantifier(self, i: int) -> Optional[int]:
        t = self.tok(i)
        if t in _ALL_QUANTIFIERS:
            self.all_instances = True
            return self.skip_of(i + 1)
        if t == "one" and self.tok(i + 1) == "of":
            self.one_of = True
            return i + 2
        if t in ("a", "the") and self.tok(i + 1) in ("pair", "couple") and self.tok(i + 2) == "of":
            self.count, self.count_index = 2, i
            return i + 3
        n = _number_value(t)
        if n is not None:
            self.count, self.count_index = n, i
            return self.skip_of(i + 1)
        if t in _PLURAL_QUANTIFIERS:
            self.plural_hint = True
            return self.skip_of(i + 1)
        return None

    def skip_of(self, j: int) -> int:
        """Past an "of" at `j` ("all of the ponds", "two of the tanks"), if there is one."""
        return j + 1 if self.tok(j) == "of" else j

    def m_between(self, i: int) -> Optional[int]:
        if self.tok(i) != "between":
            return None
        first, j = self.noun_phrase_tokens(i + 1, stop_at_and=True)
        if self.tok(j) != "and":
            raise InputError(f"'{self.text}': 'between' needs two named things "
                             "('between the road and the river').")
        second, j = self.noun_phrase_tokens(j + 1)
        self.relations.append(Relation("between", self.noun_phrase(first, "between"),
                                       second=self.noun_phrase(second, "between"),
                                       text="between"))
        return j

    def m_order(self, i: int) -> Optional[int]:
        t = self.tok(i)
        start = i
        ordinal = _ordinal_value(t)
        j = i
        if ordinal is not None:
            j += 1
            self.ordinal = ordinal
            if self.tok(j) not in _SUPERLATIVES:
                self.order_index = start if self.order_index is None else self.order_index
                return j
        if self.tok(j) in _SUPERLATIVES:
            self.superlative = _SUPERLATIVES[self.tok(j)]
            self.order_index = start if self.order_index is None else self.order_index
            j += 1
            if self.tok(j) in ("one", "ones"):
                j += 1
            return self.skip_of(j)
        found = self.order_from_at(i)
        if found:
            j, code = found
            self.from_side = code
            self.order_index = start if self.order_index is None else self.order_index
            return j
        return None

    def m_direction(self, i: int) -> Optional[int]:
        found = self.direction_at(i, bare=True)
        if not found:
            return None
        if self.tok(i) == "right" and self.relation_at(i + 1):
            return i + 1                       # "right next to the road": an intensifier
        if "position" in found:
            self.positions.append(found["position"])
            return found["end"]
        code = found["relation"]
        kind = "on" if code == "centre" else "direction"
        words = " ".join(found["words"])
        np_tokens, end = self.noun_phrase_tokens(found["np_start"])
        self.relations.append(Relation(kind, self.noun_phrase(np_tokens, words),
                                       direction=None if kind == "on" else code, text=words))
        return end

    def m_relation(self, i: int) -> Optional[int]:
        found = self.relation_at(i)
        if not found:
            return None
        n, (kind, direction), words = found
        k = self.skip_determiners(i + n)
        if self.tok(k) in _IMAGE_WORDS:       # "in the image": says nothing
            return k + 1
        part = self.direction_at(k, bare=True)
        if part and "position" in part:       # "near the top", "along the left edge"
            self.positions.append(part["position"])
            return part["end"]
        np_tokens, end = self.noun_phrase_tokens(i + n)
        if not np_tokens and len(words) == 1 and words[0] in ("in", "on", "at", "by", "over",
                                                              "under", "across", "around"):
            return None                       # a stray preposition: leave it to the fillers
        self.relations.append(Relation(kind, self.noun_phrase(np_tokens, " ".join(words)),
                                       direction=direction, text=" ".join(words)))
        if words[0] in _DISTANCE_ORDER and self.distance_order is None:
            self.distance_order = _DISTANCE_ORDER[words[0]]
        return end

    def m_qualifier(self, i: int) -> Optional[int]:
        t = self.tok(i)
        if t in _QUALIFIER_STARTS or (t in ("that", "which", "who")
                                      and self.tok(i + 1) in ("has", "have", "contains",
                                                              "contain", "carries")):
            words, j = [t], i + 1
            while j < len(self.toks) and not (self.starts_clause(j) and j > i + 1):
                words.append(self.toks[j])
                j += 1
            self.qualifiers.append(" ".join(words))
            for w in words:
                if w in self.vocab.colours:
                    self.qualifier_colours.append(self.vocab.colours[w])
            return j
        return None

    # ---------------- noun phrases
    def find_noun(self, tokens: Sequence[str]) -> Optional[Tuple[int, int, str, str, bool]]:
        """Last, longest vocabulary noun in tokens: (start, end, term, concept, plural)."""
        best = None
        for i in range(len(tokens)):
            for n in range(min(self.vocab.max_term_words, len(tokens) - i), 0, -1):
                surface = " ".join(tokens[i:i + n])
                if surface in self.vocab.surfaces:
                    term, concept, plural = self.vocab.surfaces[surface]
                    cand = (i, i + n, term, concept, plural)
                    if best is None or cand[1] > best[1]:
                        best = cand
                    break
        return best

    def synonyms(self, head: str, concept: Optional[str]) -> Tuple[str, ...]:
        if concept is None:
            return (head,)
        return (head,) + tuple(t for t in self.vocab.nouns[concept] if t != head)

    def noun_phrase(self, tokens: Sequence[str], trigger: str) -> NounPhrase:
        v = self.vocab
        words = [t for t in tokens if t not in _DETERMINERS and t != "|"]
        found = self.find_noun(words)
        if found:
            start, end, term, concept, plural = found
            kept = [w for index, w in enumerate(words[:end]) if start <= index
                    or w not in v.fillers]
            return NounPhrase(" ".join(kept), term, concept, self.synonyms(term, concept), plural)
        content = [w for w in words if w not in v.fillers and w not in v.generic_nouns
                   and w not in v.colours and w not in v.attributes and w not in _IMAGE_WORDS]
        if not content:
            raise InputError(f"'{self.text}': nothing is named after '{trigger}'; name the "
                             "other object, e.g. 'north of the road'.")
        head, plural = _singular(content[-1])
        end = len(words) - words[::-1].index(content[-1])
        kept = [w for w in words[:end] if w not in v.fillers]
        return NounPhrase(" ".join(kept), head, None, (head,), plural)

    # ---------------- main
    def run(self) -> ParsedExpression:
        v = self.vocab
        toks = self.toks
        i = 0
        while i < len(toks) and (toks[i] in v.command_words or toks[i] == "|"):
            i += 1
        matchers = (self.m_quantifier, self.m_between, self.m_order, self.m_multiword_relation,
                    self.m_direction, self.m_relation, self.m_qualifier)
        while i < len(toks):
            t = toks[i]
            if t in _BOUNDARIES:
                self.break_segment()
                i += 1
                continue
            for matcher in matchers:
                j = matcher(i)
                if j is not None:
                    if matcher is not self.m_quantifier:
                        self.break_segment()
                    i = j
                    break
            else:
                self.segments[-1].append(t)
                i += 1
        return self.build()

    def m_multiword_relation(self, i: int) -> Optional[int]:
        found = self.relation_at(i)
        if found and found[0] > 1:
            return self.m_relation(i)
        return None

    def build(self) -> ParsedExpression:
        v = self.vocab
        segments = [[w for w in s if w not in _DETERMINERS] for s in self.segments]
        target_index, found = None, None
        for index, seg in enumerate(segments):
            found = self.find_noun(seg)
            if found:
                target_index = index
                break
        if target_index is None:
            for index, seg in enumerate(segments):
                if any(w not in v.fillers and w not in v.generic_nouns and w not in v.colours
                       and w not in v.attributes and w not in _IMAGE_WORDS
                       and w not in v.command_words for w in seg):
                    target_index = index
                    break
        if target_index is None:
            raise InputError(f"No target found in '{self.text.strip()}': say what to segment, "
                             "e.g. 'the largest pond north of the road'.")
        seg = segments[target_index]
        if found:
            start, end, term, concept, plural = found
            head, category = term, concept
        else:
            content = [w for w in seg if w not in v.fillers and w not in v.generic_nouns
                       and w not in v.colours and w not in v.attributes
                       and w not in _IMAGE_WORDS and w not in v.command_words]
            last = content[-1]
            end = len(seg) - seg[::-1].index(last)
            start = end - 1
            head, plural = _singular(last)
            category = None
        phrase = [w for index, w in enumerate(seg[:end]) if start <= index
                  or (w not in v.fillers and w not in v.command_words)]
        target = NounPhrase(" ".join(phrase), head, category, self.synonyms(head, category),
                            plural)
        trailing = [w for w in seg[end:] if w not in v.fillers and w not in v.colours
                    and w not in v.attributes]
        qualifiers = list(self.qualifiers)
        if trailing:
            qualifiers.append(" ".join(trailing))

        plain = [w for s in segments for w in s]
        colours = _unique([v.colours[w] for w in plain if w in v.colours] + self.qualifier_colours)
        attributes = _unique([v.attributes[w] for w in plain if w in v.attributes
                              and w not in target.head.split()])

        position = _combine_positions(self.positions)
        order = None
        if self.superlative is not None:
            key, desc = self.superlative
            rank = self.ordinal or 1
            if rank < 0:
                desc, rank = not desc, 1
            order = Order(key, desc, rank)
        elif self.from_side is not None or self.ordinal is not None:
            side = self.from_side
            if side is None and position in _FROM_SIDE:
                side, position = position, None
            if side is not None:
                side = {"top-left": "left", "bottom-left": "left", "top-right": "right",
                        "bottom-right": "right"}.get(side, side)
            key, desc = _FROM_SIDE.get(side or "left")
            rank = self.ordinal or 1
            if rank < 0:
                desc, rank = not desc, 1
            order = Order(key, desc, rank)
        elif self.distance_order is not None:
            order = Order("distance", self.distance_order, 1)

        plural = False
        count = None
        if not self.one_of:
            if order is not None:
                if (self.count is not None and self.count >= 2 and self.count_index is not None
                        and self.order_index is not None and self.count_index < self.order_index):
                    plural, count = True, self.count      # "the two largest tanks"
            else:
                if self.count is not None and self.count >= 2:
                    plural, count = True, self.count
                elif self.all_instances or self.plural_hint or target.plural:
                    plural = True
        return ParsedExpression(
            text=self.text, target=target, position=position, relations=tuple(self.relations),
            order=order, colours=tuple(colours), attributes=tuple(attributes), plural=plural,
            count=count, qualifiers=tuple(qualifiers))


def _unique(items: Sequence[str]) -> List[str]:
    out: List[str] = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


def _combine_positions(codes: Sequence[str]) -> Optional[str]:
    """'in the north' + 'on the left' -> 'top-left'; the last word wins on each axis."""
    if not codes:
        return None
    vertical = horizontal = None
    centre = False
    for code in codes:
        if code == "centre":
            centre = True
            continue
        for part in code.split("-"):
            if part in ("top", "bottom"):
                vertical = part
            else:
                horizontal = part
    if vertical and horizontal:
        return f"{vertical}-{horizontal}"
    if vertical or horizontal:
        return vertical or horizontal
    return "centre" if centre else None


def parse_expression(text: str, vocabulary: Optional[Vocabulary] = None) -> ParsedExpression:
    """Parse a referring expression; raises InputError when no target can be found."""
    if text is None or not str(text).strip():
        raise InputError("The expression is empty: say what to segment, e.g. 'the largest pond "
                         "north of the road'.")
    return _Parser(str(text), vocabulary or load_vocabulary()).run()
