"""Referring segmentation building blocks (training-free): expression parsing, SAM coordinate
frames and prompts, candidate scoring and selection. Plain numpy in and out; no QGIS.

Typical flow (localisation and the SAM call live elsewhere)::

    parsed = parse_expression("the largest pond north of the road")
    prompts = build_prompts(activation)                  # activation: H×W, higher = target
    masks, ious, _ = predictor.predict(**prompts.predictor_kwargs(), multimask_output=True)
    chosen = select_candidates([Candidate(m, i) for m, i in zip(masks, ious)], activation,
                               parsed, references={"road": road_mask})
"""
from .parse import (NounPhrase, Order, ParsedExpression, Relation, Vocabulary, load_vocabulary,
                    parse_expression)
from .prompts import (SamPrompts, build_prompts, instance_prompts, label_components, mask_box,
                      negative_points, peak_points, region_box, threshold_region)
from .sam_frames import (SamFrame, activation_to_low_res, corner_to_index, index_to_corner,
                         low_res_to_raster, mask_input_from_activation, normalize_activation,
                         preprocess_shape, raster_to_sam_boxes, raster_to_sam_points,
                         sam_to_raster_boxes, sam_to_raster_points)
from .select import (Candidate, Modifiers, ScoredCandidate, SelectionWeights, mask_iou,
                     score_candidates, select_candidates, suppress_duplicates)

__all__ = [
    "NounPhrase", "Order", "ParsedExpression", "Relation", "Vocabulary", "load_vocabulary",
    "parse_expression", "SamPrompts", "build_prompts", "instance_prompts", "label_components",
    "mask_box",
    "negative_points", "peak_points", "region_box", "threshold_region", "SamFrame",
    "activation_to_low_res", "corner_to_index", "index_to_corner", "low_res_to_raster",
    "mask_input_from_activation", "normalize_activation", "preprocess_shape",
    "raster_to_sam_boxes", "raster_to_sam_points", "sam_to_raster_boxes", "sam_to_raster_points",
    "Candidate", "Modifiers", "ScoredCandidate", "SelectionWeights", "mask_iou",
    "score_candidates", "select_candidates", "suppress_duplicates",
]
