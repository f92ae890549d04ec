"""What a referring run is asked (:class:`ReferringRequest`) and what it answers
(:class:`ReferringRunResult`, one :class:`ExpressionResult` per expression), and the check of
the expressions every front end runs first (:func:`parse_expressions`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

from ..errors import InputError
from ..models.registry import (DEFAULT_CLIP_MODEL, DEFAULT_CLIP_WEIGHTS, DEFAULT_DEVICE,
                               DEFAULT_REFER_ENGINE, DEFAULT_SAM3_MODEL, DEFAULT_SAM_MODEL)
from .parse import ParsedExpression, parse_expression
from .pipeline import QueryTimings, ReferringResult, ReferringSession, ReferringSettings

DEFAULT_MAX_SIZE = 1024          # SAM's own input size
DEFAULT_TILE_SIZE = 1024
DEFAULT_TILE_OVERLAP = 128
DEFAULT_LAYER = "referring"


@dataclass
class ReferringRequest:
    raster: str
    expressions: object                        # one expression or a list of them
    out_vector: str                            # GeoPackage (.gpkg)
    extent: Optional[Sequence[float]] = None   # xmin, ymin, xmax, ymax in the raster's CRS
    resolution: Optional[float] = None         # working pixel size, metres; None: see max_size
    max_size: Optional[int] = DEFAULT_MAX_SIZE  # long side cap without resolution; None: native
    bands: Optional[Sequence[int]] = None
    sam_model: str = DEFAULT_SAM_MODEL
    sam_weights: Optional[str] = None          # file, catalog name, None: the catalog's for sam_model
    engine: str = DEFAULT_REFER_ENGINE         # 'sam' (CLIP + SAM) or 'sam3' (SAM 3 concepts)
    sam3_model: str = DEFAULT_SAM3_MODEL       # 'sam3' engine: architecture or config.json
    sam3_weights: Optional[str] = None         # safetensors file/folder or catalog name
    clip_model: str = DEFAULT_CLIP_MODEL
    clip_weights: str = DEFAULT_CLIP_WEIGHTS
    device: str = DEFAULT_DEVICE
    threshold: float = 0.0                     # results scoring below this are dropped
    tile_size: int = DEFAULT_TILE_SIZE
    tile_overlap: int = DEFAULT_TILE_OVERLAP
    simplify: float = 0.0                      # polygon simplification, pixels
    layer_name: str = DEFAULT_LAYER
    settings: Optional[ReferringSettings] = None
    cache_dir: Optional[str] = None            # model cache; None: resolved from the settings
    prompter: Optional[str] = None             # a trained head (.safetensors); None: training-free


@dataclass
class ExpressionTiming:
    """Seconds for one expression, summed over tiles. ``cached``: no image encoder ran for it
    (the area's SAM embedding and CLIP features came from the session)."""

    clip_encode: float = 0.0
    sam_encode: float = 0.0
    prompting: float = 0.0      # maps, prompts, SAM decoding, region scores, selection
    vectorize: float = 0.0
    total: float = 0.0
    cached: bool = True
    candidates: int = 0

    def add(self, t: QueryTimings) -> None:
        self.clip_encode += t.clip_encode
        self.sam_encode += t.sam_encode
        self.prompting += t.prompting
        self.candidates += t.candidates
        self.cached &= t.cached


@dataclass(eq=False)
class ExpressionResult:
    expression: str
    parsed: ParsedExpression
    polygon_count: int = 0
    scores: List[float] = field(default_factory=list)
    areas_m2: List[float] = field(default_factory=list)
    timing: ExpressionTiming = field(default_factory=ExpressionTiming)
    results: List[ReferringResult] = field(default_factory=list)   # single-tile runs only
    geometries: List[object] = field(default_factory=list)         # shapely, raster CRS


@dataclass(eq=False)
class ReferringRunResult:
    vector_path: str
    layer_name: str
    expressions: List[ExpressionResult]
    width: int
    height: int
    tiles: int
    resolution_m: float
    crs_wkt: str
    device: str
    session: Optional[ReferringSession] = None   # the area's session when it was one tile
    read_seconds: float = 0.0
    model_seconds: float = 0.0
    total_seconds: float = 0.0

    @property
    def polygon_count(self) -> int:
        return sum(e.polygon_count for e in self.expressions)


def parse_expressions(expressions) -> List[Tuple[str, ParsedExpression]]:
    """Each non-empty expression with its parse; InputError for none, an empty one or one whose
    target cannot be found."""
    if isinstance(expressions, str):
        expressions = [expressions]
    items = [str(e if e is not None else "").strip() for e in (expressions or [])]
    if not items:
        raise InputError("Type an expression, e.g. 'the largest pond north of the road'.")
    out = []
    for text in items:
        if not text:
            raise InputError("An expression is empty: say what to segment, e.g. 'the largest "
                             "pond north of the road'.")
        out.append((text, parse_expression(text)))
    return out
