"""core/refer/sessions.py: which session serves an area (keys, LRU, open_session)."""
import os

import numpy as np
import pytest

from support.oracles import stub_models
from support.rasters import pond_scene, write_raster
from drseg.core.errors import InputError
from drseg.core.refer.request import ReferringRequest
from drseg.core.refer.sessions import SESSIONS, SessionCache, open_session


@pytest.fixture(autouse=True)
def fresh_sessions():
    SESSIONS.clear()
    yield
    SESSIONS.clear()


def test_the_cache_keeps_the_most_recently_used_and_skips_empty_areas():
    cache = SessionCache(maxsize=2)
    built = []

    def build(name):
        return lambda: built.append(name) or name

    assert cache.get("a", build("a")) == "a" and cache.get("b", build("b")) == "b"
    assert cache.get("a", build("a")) == "a"                  # a hit: "b" is now the oldest
    cache.get("c", build("c"))
    assert "b" not in cache and "a" in cache and len(cache) == 2
    assert built == ["a", "b", "c"] and (cache.hits, cache.misses) == (1, 3)
    assert cache.get("empty", lambda: None) is None and "empty" not in cache


def test_an_edited_raster_gets_a_new_session(tmp_path):
    path = write_raster(tmp_path / "ponds.tif", pond_scene().transpose(2, 0, 1))
    predictor, localizer = stub_models()
    request = ReferringRequest(path, "the pond", str(tmp_path / "o.gpkg"))
    first = open_session(request, sam=predictor, clip=localizer)
    assert open_session(request, sam=predictor, clip=localizer) is first
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10 ** 9))   # "saved again"
    assert open_session(request, sam=predictor, clip=localizer) is not first


def test_open_session_needs_one_tile_with_data(tmp_path):
    predictor, localizer = stub_models()
    big = write_raster(tmp_path / "big.tif", np.zeros((3, 300, 300), np.uint8))
    with pytest.raises(InputError, match="more than one 128-px tile"):
        open_session(ReferringRequest(big, "the pond", "o.gpkg", max_size=None, tile_size=128,
                                      tile_overlap=16), sam=predictor, clip=localizer)
    empty = write_raster(tmp_path / "empty.tif", np.zeros((3, 50, 50), np.uint8), nodata=0)
    with pytest.raises(InputError, match="no valid pixels"):
        open_session(ReferringRequest(empty, "the pond", "o.gpkg"), sam=predictor, clip=localizer)
