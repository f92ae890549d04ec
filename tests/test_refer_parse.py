"""Referring-expression parser: a table of expressions with their expected parse."""
from __future__ import annotations

import json

import pytest

from drseg.core.errors import InputError
from drseg.core.refer.parse import (POSITIONS, load_vocabulary, parse_expression)


def row(text, target, head, category, *, position=None, relations=(), order=None, colours=(),
        attributes=(), plural=False, count=None):
    return dict(text=text, target=target, head=head, category=category, position=position,
                relations=tuple(relations), order=order, colours=tuple(colours),
                attributes=tuple(attributes), plural=plural, count=count)


# relations: (kind, direction, reference head, second reference head)
# order: (key, descending, rank)
TABLE = [
    row("the largest pond north of the road", "pond", "pond", "water",
        relations=[("direction", "top", "road", None)], order=("area", True, 1)),
    row("the leftmost of the three ponds", "ponds", "pond", "water", order=("x", False, 1)),
    row("all the storage tanks", "storage tanks", "storage tank", "storage tank", plural=True),
    row("the white building on the left", "white building", "building", "building",
        position="left", colours=["white"]),
    row("the car in the top-left corner", "car", "car", "vehicle", position="top-left"),
    row("the pond in the north-east", "pond", "pond", "water", position="top-right"),
    row("the second ship from the left", "ship", "ship", "ship", order=("x", False, 2)),
    row("the third building from the top", "building", "building", "building",
        order=("y", False, 3)),
    row("the second largest lake", "lake", "lake", "water", order=("area", True, 2)),
    row("the smallest storage tank", "storage tank", "storage tank", "storage tank",
        order=("area", False, 1)),
    row("the tennis court next to the baseball field", "tennis court", "tennis court",
        "tennis court", relations=[("near", None, "baseball field", None)]),
    row("the two ships", "ships", "ship", "ship", plural=True, count=2),
    row("the round white tank", "round white tank", "tank", "storage tank", colours=["white"],
        attributes=["round"]),
    row("the long bridge over the river", "long bridge", "bridge", "bridge",
        attributes=["long"], relations=[("on", None, "river", None)]),
    row("the airplane left of the terminal", "airplane", "airplane", "airplane",
        relations=[("direction", "left", "terminal", None)]),
    row("vehicles on the road", "vehicles", "vehicle", "vehicle", plural=True,
        relations=[("on", None, "road", None)]),
    row("the building between the road and the river", "building", "building", "building",
        relations=[("between", None, "road", "river")]),
    row("the upper pond", "pond", "pond", "water", position="top"),
    row("the lower parking lot", "parking lot", "parking lot", "parking lot", position="bottom"),
    row("the pond in the middle", "pond", "pond", "water", position="centre"),
    row("the central roundabout", "roundabout", "roundabout", "roundabout", position="centre"),
    row("the house near the river", "house", "house", "building",
        relations=[("near", None, "river", None)]),
    row("the rightmost airplane", "airplane", "airplane", "airplane", order=("x", True, 1)),
    row("the northernmost ship", "ship", "ship", "ship", order=("y", False, 1)),
    row("the biggest red roof", "red roof", "roof", "building", colours=["red"],
        order=("area", True, 1)),
    row("the dark green trees on the right", "dark green trees", "tree", "tree",
        colours=["dark", "green"], position="right", plural=True),
    row("the blue pool", "blue pool", "pool", "water", colours=["blue"]),
    row("segment the oil tank south of the highway", "oil tank", "oil tank", "storage tank",
        relations=[("direction", "bottom", "highway", None)]),
    row("the plane at the bottom right", "plane", "plane", "airplane", position="bottom-right"),
    row("the ship beside the harbour", "ship", "ship", "ship",
        relations=[("near", None, "harbour", None)]),
    row("the small house west of the lake", "small house", "house", "building",
        attributes=["small"], relations=[("direction", "left", "lake", None)]),
    row("the vessel closest to the bridge", "vessel", "vessel", "ship",
        relations=[("near", None, "bridge", None)], order=("distance", False, 1)),
    row("the rectangular building in the southern part of the image", "rectangular building",
        "building", "building", attributes=["rectangular"], position="bottom"),
    row("the gray road", "gray road", "road", "road", colours=["grey"]),
    row("every vehicle in the parking lot", "vehicle", "vehicle", "vehicle", plural=True,
        relations=[("on", None, "parking lot", None)]),
    row("the larger of the two tanks", "tanks", "tank", "storage tank", order=("area", True, 1)),
    row("the tennis courts on the right side of the image", "tennis courts", "tennis court",
        "tennis court", position="right", plural=True),
    row("the second baseball field from the right", "baseball field", "baseball field",
        "baseball field", order=("x", True, 2)),
    row("the aircraft to the east of the runway", "aircraft", "aircraft", "airplane",
        relations=[("direction", "right", "runway", None)]),
    row("the water body in the upper left", "water body", "water body", "water",
        position="top-left"),
    row("a windmill", "windmill", "windmill", "windmill"),
    row("the expressway toll station", "expressway toll station", "expressway toll station",
        "expressway toll station"),
    row("the building with a red roof", "building", "building", "building", colours=["red"]),
    row("three storage tanks in the north-west", "storage tanks", "storage tank", "storage tank",
        position="top-left", plural=True, count=3),
    row("the long narrow road at the top", "long narrow road", "road", "road",
        attributes=["long"], position="top"),
    row("both tennis courts", "tennis courts", "tennis court", "tennis court", plural=True,
        count=2),
    row("the tank far from the road", "tank", "tank", "storage tank",
        relations=[("far", None, "road", None)]),
    row("show me the buses", "buses", "bus", "bus", plural=True),
    row("the topmost tennis court", "tennis court", "tennis court", "tennis court",
        order=("y", False, 1)),
    row("the car park on the east side", "car park", "car park", "parking lot", position="right"),
    row("the swimming pool", "swimming pool", "swimming pool", "swimming pool"),
    row("the red kiosk near the road", "red kiosk", "kiosk", None, colours=["red"],
        relations=[("near", None, "road", None)]),
    row("the two largest tanks", "tanks", "tank", "storage tank", order=("area", True, 1),
        plural=True, count=2),
    row("the car right next to the road", "car", "car", "vehicle",
        relations=[("near", None, "road", None)]),
    row("the ship near the top of the image", "ship", "ship", "ship", position="top"),
    row("the last ship from the left", "ship", "ship", "ship", order=("x", True, 1)),
    row("one of the tennis courts", "tennis courts", "tennis court", "tennis court"),
    row("the house on the left side of the road", "house", "house", "building",
        relations=[("direction", "left", "road", None)]),
    row("the bridge in the middle of the lake", "bridge", "bridge", "bridge",
        relations=[("on", None, "lake", None)]),
    row("the building that is white", "building", "building", "building", colours=["white"]),
    row("the vessel nearest the bridge", "vessel", "vessel", "ship",
        relations=[("near", None, "bridge", None)], order=("distance", False, 1)),
    row("Please find the white cars parked along the street.", "white cars", "car", "vehicle",
        colours=["white"], plural=True, relations=[("near", None, "street", None)]),
    row("The big boat, to the south-west of the pier", "big boat", "boat", "ship",
        attributes=["large"], relations=[("direction", "bottom-left", "pier", None)]),
    row("the second tank on the left", "tank", "tank", "storage tank", order=("x", False, 2)),
    row("the pond to the north in the east", "pond", "pond", "water", position="top-right"),
    row("the airplanes below the hangar", "airplanes", "airplane", "airplane", plural=True,
        relations=[("direction", "bottom", "hangar", None)]),
    row("the uppermost building on the right", "building", "building", "building",
        position="right", order=("y", False, 1)),
    row("the road", "road", "road", "road"),
]


def test_table_is_large_enough():
    assert len(TABLE) >= 40
    assert len({r["text"] for r in TABLE}) == len(TABLE)


@pytest.mark.parametrize("expected", TABLE, ids=[r["text"] for r in TABLE])
def test_parse_table(expected):
    p = parse_expression(expected["text"])
    got = dict(
        text=p.text, target=p.target.text, head=p.head, category=p.category,
        position=p.position,
        relations=tuple((r.kind, r.direction, r.reference.head,
                         r.second.head if r.second else None) for r in p.relations),
        order=(p.order.key, p.order.descending, p.order.rank) if p.order else None,
        colours=p.colours, attributes=p.attributes, plural=p.plural, count=p.count)
    assert got == expected
    assert p.position is None or p.position in POSITIONS
    assert p.synonyms[0] == p.head


def test_synonyms_come_from_the_vocabulary():
    p = parse_expression("the pond")
    assert {"pond", "lake", "pool", "water"} <= set(p.synonyms)
    assert parse_expression("the vehicle").synonyms[:2] == ("vehicle", "car")
    assert "house" in parse_expression("the roof").synonyms
    assert "aircraft" in parse_expression("the plane").synonyms
    assert "oil tank" in parse_expression("the tank").synonyms
    assert "street" in parse_expression("the highway").synonyms
    assert "boat" in parse_expression("the vessel").synonyms
    # a reference carries its own synonyms
    ref = parse_expression("the car north of the street").relations[0].reference
    assert ref.category == "road" and "road" in ref.synonyms
    # a noun outside the vocabulary is its own only query
    assert parse_expression("the kiosks").synonyms == ("kiosk",)


@pytest.mark.parametrize("text", ["", "   ", "the left one", "north of the road",
                                  "the largest", "all of them", "please segment",
                                  "the white ones on the right"])
def test_no_target_is_an_input_error(text):
    with pytest.raises(InputError) as err:
        parse_expression(text)
    message = str(err.value).lower()
    assert "target" in message or "empty" in message
    assert "e.g." in message


def test_relation_without_reference_is_an_input_error():
    with pytest.raises(InputError, match="between"):
        parse_expression("the house between the road")
    with pytest.raises(InputError, match="next to"):
        parse_expression("the house next to the")


def test_vocabulary_is_consistent():
    vocab = load_vocabulary()
    seen = {}
    for concept, terms in vocab.nouns.items():
        assert terms, concept
        for term in terms:
            assert term not in seen, f"{term} in {seen.get(term)} and {concept}"
            seen[term] = concept
    # the remote-sensing synonyms the brief promises
    for group in (("pond", "pool", "lake", "water"), ("car", "vehicle"),
                  ("building", "house", "roof"), ("storage tank", "tank", "oil tank"),
                  ("road", "street", "highway"), ("airplane", "plane", "aircraft"),
                  ("ship", "boat", "vessel")):
        assert len({seen[t] for t in group}) == 1, group
    assert {"tennis court", "baseball field"} <= set(seen)


def test_a_custom_vocabulary_file_is_used(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps({
        "nouns": {"yurt": {"terms": ["yurt", "ger"]}},
        "colours": {"white": ["white"]}, "attributes": {"round": ["round"]},
        "generic_nouns": ["one"], "fillers": ["the"], "command_words": []}))
    p = parse_expression("all the white gers", load_vocabulary(path))
    assert (p.head, p.category, p.synonyms, p.plural, p.colours) == (
        "ger", "yurt", ("ger", "yurt"), True, ("white",))
    # the packaged vocabulary does not know it
    assert parse_expression("the ger").category is None


def test_conflicting_vocabulary_is_refused(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"nouns": {"a": {"terms": ["tank"]}, "b": {"terms": ["tank"]}}}))
    with pytest.raises(InputError, match="tank"):
        load_vocabulary(path)
