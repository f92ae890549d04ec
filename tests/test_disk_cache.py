"""The on-disk embedding cache: LRU trimming, corrupt entries, keys that follow the raster file,
where it lives, and a second process that reuses a first one's image and text embeddings."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from support.rasters import scene_image, scene_labels, write_raster
from support.tiny_models import write_tiny_clip_config
from drseg.core import disk_cache
from drseg.core.disk_cache import (DiskCache, cache_folder, clear_embedding_cache, key_digest,
                                   model_fingerprint, raster_identity)
from drseg.core.settings import Settings

TESTS = os.path.dirname(os.path.abspath(__file__))


def entry(value: float, size: int = 1000) -> dict:
    return {"x": torch.full((size,), value)}


def test_least_recently_used_entries_go_first_when_over_budget(tmp_path):
    one_entry = DiskCache(str(tmp_path / "probe"))
    one_entry.put("t", "probe", entry(0.0))
    size = one_entry.info().bytes
    cache = DiskCache(str(tmp_path / "c"), budget_bytes=int(2.5 * size))
    cache.put("t", "a", entry(1.0))
    cache.put("t", "b", entry(2.0))
    assert cache.get("t", "a")["x"][0] == 1.0          # a is now more recent than b
    cache.put("t", "c", entry(3.0))                    # three do not fit: b goes
    assert cache.get("t", "b") is None
    assert cache.get("t", "a")["x"][0] == 1.0 and cache.get("t", "c")["x"][0] == 3.0
    info = cache.info()
    assert info.entries == 2 and info.bytes <= info.budget_bytes
    assert cache.clear() == 2 and cache.info().entries == 0


def test_a_corrupt_or_foreign_entry_is_a_miss_and_is_removed(tmp_path):
    cache = DiskCache(str(tmp_path))
    cache.put("t", "k", entry(5.0))
    path = cache.path("t", "k")
    with open(path, "r+b") as handle:                  # a writer that died half-way
        handle.truncate(os.path.getsize(path) // 2)
    assert cache.get("t", "k") is None and not os.path.exists(path)
    cache.put("t", "k", entry(6.0))
    assert cache.get("t", "k")["x"][0] == 6.0
    os.replace(cache.path("t", "k"), cache.path("t", "other"))  # a file under another key's name
    assert cache.get("t", "other") is None and not os.path.exists(cache.path("t", "other"))
    with open(cache.path("t", "junk"), "wb") as handle:
        handle.write(b"\x00not safetensors")
    assert cache.get("t", "junk") is None and cache.info().entries == 0
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".partial-")]


def test_keys_follow_the_raster_file_and_the_model(tmp_path):
    labels = scene_labels(64, 64)
    path = write_raster(tmp_path / "a.tif", scene_image(labels))
    before = raster_identity(path)
    assert raster_identity(path) == before
    write_raster(tmp_path / "a.tif", scene_image(labels)[:, :, ::-1].copy())
    os.utime(path, ns=(before["mtime_ns"] + 10 ** 9, before["mtime_ns"] + 10 ** 9))
    after = raster_identity(path)
    assert after["path"] == before["path"] and after != before
    assert key_digest({"raster": before}) != key_digest({"raster": after})
    one, two = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    with torch.no_grad():
        two.weight.copy_(one.weight)
        two.bias.copy_(one.bias)
    assert model_fingerprint(one) == model_fingerprint(two)
    with torch.no_grad():
        two.bias[0] += 1e-3
    two_again = torch.nn.Linear(3, 2)
    two_again.load_state_dict(two.state_dict())
    assert model_fingerprint(two_again) != model_fingerprint(one)


def test_the_folder_follows_explicit_environment_settings_default(tmp_path):
    settings = Settings(cache_dir=str(tmp_path / "saved"))
    assert cache_folder(settings, {}) == str(tmp_path / "saved" / "embeddings")
    env = {"DRSEG_CACHE_DIR": str(tmp_path / "env")}
    assert cache_folder(settings, env) == str(tmp_path / "env" / "embeddings")
    env["DRSEG_EMBEDDING_CACHE"] = str(tmp_path / "own")
    assert cache_folder(settings, env) == str(tmp_path / "own")
    assert cache_folder(settings, {"DRSEG_EMBEDDING_CACHE": "off"}) is None
    assert cache_folder(Settings(embedding_cache=False), {}) is None
    assert cache_folder(settings, env, models_folder=str(tmp_path / "told")) == str(tmp_path / "own")
    del env["DRSEG_EMBEDDING_CACHE"]
    assert cache_folder(settings, env, models_folder=str(tmp_path / "told")) == str(
        tmp_path / "told" / "embeddings")
    default = cache_folder(Settings(), {})
    assert default == os.path.join(Settings().effective_cache_dir({}), "embeddings")
    assert disk_cache.embedding_cache(str(tmp_path / "x"), settings=Settings(
        embedding_cache_mb=64)).budget_bytes == 64 * 2 ** 20
    assert Settings(embedding_cache="yes").validate() and Settings(embedding_cache_mb=1).validate()
    cache = DiskCache(str(tmp_path / "x"))
    cache.put("t", "k", entry(1.0))
    assert clear_embedding_cache(str(tmp_path / "x")) == 1 and cache.info().entries == 0


# --------------------------------------------------------------------------------------------
# Two processes, one area: the second one runs neither image encoder nor the text tower

RUN = textwrap.dedent("""
    import json, os, sys
    import torch
    sys.path.insert(0, {tests!r})
    from drseg.core.refer.synthetic import tiny_sam
    from drseg.core.models.clip import load_clip
    from drseg.core.dense_clip import DenseClip
    from drseg.core.refer.request import ReferringRequest
    from drseg.core.refer.run import run_referring

    os.environ["DRSEG_EMBEDDING_CACHE"] = {cache!r}    # importing conftest turned it off
    torch.manual_seed(0)
    model, tokenizer = load_clip({config!r}, "random")
    clip = DenseClip(model, tokenizer, torch.device("cpu"))
    sam = tiny_sam()
    calls = {{"sam": 0}}
    sam.image_encoder.register_forward_hook(lambda *a: calls.__setitem__("sam", calls["sam"] + 1))
    result = run_referring(ReferringRequest({raster!r}, ["the pond"], {out!r}), sam=sam, clip=clip)
    session = result.session
    item = result.expressions[0]
    print(json.dumps({{"sam": calls["sam"], "clip": clip.forward_calls,
                      "texts": session.localizer.text_encodes, "disk_loads": session.disk_loads,
                      "cached": item.timing.cached, "mask": int(item.results[0].mask.sum()),
                      "score": item.results[0].score}}))
""")


def run_in_subprocess(tmp_path, raster, cache, name):
    config = write_tiny_clip_config(tmp_path, "tiny.json")
    script = RUN.format(tests=TESTS, config=str(config), raster=str(raster), cache=str(cache),
                        out=str(tmp_path / f"{name}.gpkg"))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_second_process_on_the_same_area_skips_both_image_encoders(tmp_path):
    labels = scene_labels(200, 240)
    raster = write_raster(tmp_path / "scene.tif", scene_image(labels))
    cache = tmp_path / "embeddings"
    first = run_in_subprocess(tmp_path, raster, cache, "first")
    assert first["sam"] == 1 and first["clip"] >= 1 and first["texts"] > 0
    assert first["disk_loads"] == 0 and not first["cached"]
    stored = DiskCache(str(cache)).info().entries
    assert stored >= 2 + first["texts"]                 # SAM, CLIP features, each phrase
    second = run_in_subprocess(tmp_path, raster, cache, "second")
    assert second["sam"] == 0 and second["clip"] == 0 and second["texts"] == 0
    assert second["disk_loads"] == 2 and second["cached"]
    assert second["mask"] == first["mask"] and second["score"] == pytest.approx(first["score"])
    # the raster changes: its old embeddings no longer apply
    write_raster(raster, scene_image(labels)[:, ::-1].copy())
    third = run_in_subprocess(tmp_path, raster, cache, "third")
    assert third["sam"] == 1 and third["clip"] >= 1 and third["disk_loads"] == 0


def test_cache_command_shows_and_clears_the_embeddings(tmp_path, monkeypatch, capsys):
    from drseg.cli.app import main

    monkeypatch.delenv("DRSEG_EMBEDDING_CACHE", raising=False)
    models = tmp_path / "models"
    cache = DiskCache(str(models / "embeddings"))
    cache.put("t", "a", entry(1.0))
    cache.put("t", "b", entry(2.0))
    assert main(["cache", "info", "--cache-dir", str(models)]) == 0
    shown = capsys.readouterr().out
    assert f"folder: {models / 'embeddings'}" in shown and "entries: 2" in shown
    assert main(["cache", "clear", "--cache-dir", str(models)]) == 0
    assert "removed 2 entries" in capsys.readouterr().out and cache.info().entries == 0
    monkeypatch.setenv("DRSEG_EMBEDDING_CACHE", "off")
    assert main(["cache", "info"]) == 0 and "off" in capsys.readouterr().out
