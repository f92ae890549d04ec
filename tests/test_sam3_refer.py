"""Referring with SAM 3: the target noun phrase is the concept prompt, every instance comes back and
the selection applies the modifiers. Oracle scene: known instance masks injected through the
`detect` seam; then the real SAM 3 architecture at tiny size for the image-feature cache."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_sam3_config
from drseg.core.models import sam3 as sam3_models
from drseg.core.refer.parse import parse_expression
from drseg.core.refer.sam3_refer import Sam3ReferringSession, concept_prompt
from drseg.core.refer.select import Candidate
from drseg.core.sam3_engine import Sam3Scorer

H, W = 128, 160


def disk(cx, cy, r):
    yy, xx = np.mgrid[:H, :W]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


PONDS = {"west": disk(25, 95, 8), "north": disk(80, 28, 16), "east": disk(135, 98, 11)}
ROAD = np.zeros((H, W), bool)
ROAD[55:66, :] = True


@pytest.fixture
def session():
    asked = []

    def detect(phrase):
        asked.append(phrase)
        if "pond" in phrase:
            names = list(PONDS)
            candidates = [Candidate(PONDS[n], sam_iou=0.9, source=n) for n in names]
            activation = np.logical_or.reduce(list(PONDS.values())).astype(np.float32)
            return candidates, activation
        if "road" in phrase:
            return [Candidate(ROAD, sam_iou=0.95, source="road")], ROAD.astype(np.float32)
        return [], None

    s = Sam3ReferringSession(np.zeros((H, W, 3), np.uint8), detect=detect)
    s.asked = asked
    return s


@pytest.mark.parametrize("expression, expected", [
    ("the pond on the left", "west"),
    ("the pond on the right", "east"),
    ("the largest pond", "north"),
    ("the smallest pond", "west"),
    ("the pond north of the road", "north"),
    ("the second largest pond", "east"),
])
def test_modifiers_select_the_right_instance(session, expression, expected):
    answer = session.query(expression)
    assert len(answer) == 1
    assert np.array_equal(answer[0].mask, PONDS[expected]), expression


def test_plural_returns_every_instance_once(session):
    answer = session.query("all the ponds")
    found = {next(n for n, m in PONDS.items() if np.array_equal(a.mask, m)) for a in answer}
    assert len(answer) == 3 and found == set(PONDS)


def test_concepts_are_detected_once_per_area(session):
    session.query("the pond north of the road")
    session.query("the largest pond")
    assert sorted(session.asked) == ["pond", "road"]


def test_concept_prompt_is_the_target_with_its_colours():
    assert concept_prompt(parse_expression("the red cars north of the river")) == "red car"
    assert concept_prompt(parse_expression("the largest pond")) == "pond"


def test_nothing_found_is_an_empty_answer(session):
    assert session.query("the ship") == []


def test_real_architecture_keeps_the_image_features_per_area():
    sam3_models.register_sam3_architecture("tiny_sam3", tiny_sam3_config)
    try:
        torch.manual_seed(0)
        scorer = Sam3Scorer(sam3_models.load_sam3("tiny_sam3", "random", "cpu"))
        image = np.random.default_rng(0).integers(0, 255, (90, 120, 3), np.uint8)
        session = Sam3ReferringSession(image, scorer, min_score=0.0)
        first = session.query("the largest building")
        second = session.query("all the trees")
        assert session.encoder_calls == 1
        assert first and second and all(a.mask.shape == (90, 120) for a in first + second)
    finally:
        sam3_models._EXTRA_ARCHITECTURES.pop("tiny_sam3", None)


def test_a_prompter_head_with_sam3_is_one_clear_error(tmp_path):
    """A trained head is made for CLIP + SAM; asked with the SAM 3 engine it is refused in words."""
    from drseg.core.errors import InputError
    from drseg.core.refer.loading import learned_prompter
    from drseg.core.refer.request import ReferringRequest

    head = tmp_path / "head.safetensors"
    head.write_bytes(b"{}")
    request = ReferringRequest(raster=str(tmp_path / "scene.tif"), expressions=["the pond"],
                               out_vector=str(tmp_path / "out.gpkg"), engine="sam3",
                               prompter=str(head))
    with pytest.raises(InputError, match="CLIP \\+ SAM engine, not SAM 3"):
        learned_prompter(request, sam=object(), localizer=object())
