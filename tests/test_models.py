"""core/models: the registry against the catalog and the libraries, imports without torch, DINO
weight resolution, and the loaded-model cache (one lock per key, bounded LRU)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest

from conftest import put_in_cache
from drseg.core.errors import DrSegError, InputError, ModelError
from drseg.core.models import registry
from drseg.core.models.cache import ModelCache
from drseg.core.models.catalog import get_model
from drseg.core.models.dino import load_dino, resolve_dino_weights


# -- imports without torch --------------------------------------------------------------------

def test_registry_catalog_download_import_without_torch(tmp_path):
    """QGIS builds its forms and the model list before (or without) torch: these must import
    with torch, open_clip, timm and segment_anything blocked."""
    script = textwrap.dedent("""
        import sys
        for name in ("torch", "torchvision", "open_clip", "timm", "segment_anything", "qgis"):
            sys.modules[name] = None          # `import name` now raises ImportError
        import drseg.core.models
        from drseg.core.models import registry, catalog, download, formats, cache, dino
        from drseg.core import settings
        assert catalog.get_model(registry.DEFAULT_SAM_WEIGHTS).family == "sam"
        assert download.cached_path(registry.DEFAULT_DINO_WEIGHTS, sys.argv[1]) is None
        assert dino.resolve_dino_weights(registry.DEFAULT_DINO_MODEL, None, sys.argv[1]) is None
        assert settings.Settings().validate() == []
        loaded = sorted(m for m, module in sys.modules.items()
                        if module is not None and m.split(".")[0] in ("torch", "numpy"))
        print("LOADED", loaded)
    """)
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "cache")],
                          capture_output=True, text=True, env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout


# -- the registry -------------------------------------------------------------------------------

def test_every_registry_default_is_a_catalog_checkpoint_of_its_architecture():
    for name, arch in registry.DINO_MODELS.items():
        entry = get_model(arch.catalog_name)
        assert entry.family == "dino", name
        assert entry.architecture.split(".")[0] == arch.timm_name, name
    for sam_type, catalog_name in registry.SAM_CATALOG.items():
        entry = get_model(catalog_name)
        assert (entry.family, entry.architecture) == ("sam", sam_type)
    assert registry.DEFAULT_DINO_MODEL in registry.DINO_MODELS
    assert registry.DEFAULT_SAM_MODEL in registry.SAM_MODELS
    assert registry.DEFAULT_DEVICE in registry.DEVICE_CHOICES


def test_registry_names_exist_in_the_libraries():
    open_clip = pytest.importorskip("open_clip")
    timm = pytest.importorskip("timm")
    segment_anything = pytest.importorskip("segment_anything")
    from drseg.core.models.clip import catalog_entry

    assert set(registry.CLIP_MODEL_CHOICES) <= set(open_clip.list_models())
    assert registry.DEFAULT_CLIP_WEIGHTS in open_clip.list_pretrained_tags_by_model(
        registry.DEFAULT_CLIP_MODEL)
    assert catalog_entry(registry.DEFAULT_CLIP_MODEL, registry.DEFAULT_CLIP_WEIGHTS) is not None
    for arch in registry.DINO_MODELS.values():
        assert timm.is_model(arch.timm_name), arch.timm_name
    assert set(registry.SAM_MODELS) <= set(segment_anything.sam_model_registry)


# -- DINO weights -------------------------------------------------------------------------------

@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    monkeypatch.setenv("DRSEG_CACHE_DIR", str(folder))
    monkeypatch.setenv("DRSEG_CONFIG", str(tmp_path / "settings.json"))
    return folder


def test_resolve_dino_weights_finds_files_catalog_names_and_the_downloaded_default(cache_dir, tmp_path):
    own = tmp_path / "own.pth"
    own.write_bytes(b"x")

    def answer(model, weights):
        try:
            return resolve_dino_weights(model, weights)
        except DrSegError as exc:
            return type(exc).__name__

    assert answer("dino_vitb8", None) is None                     # nothing set up: no DR-Seg
    assert answer("dino_vitb8", str(own)) == str(own)
    assert answer("dino_vitb8", "rs-dino-vit-b8") == "ModelError"  # named but not downloaded
    assert answer("dino_vitb8", "no-such-model") == "InputError"
    assert answer("dino_vitb8", str(tmp_path / "gone.pth")) == "InputError"
    assert answer("vit_huge", None) == "InputError"
    cached = put_in_cache(cache_dir, "dino-vit-b8")
    assert answer("dino_vitb8", None) == cached
    assert answer("dino_vitb8", "dino-vit-b8") == cached
    rs = put_in_cache(cache_dir, "rs-dino-vit-b8")
    assert answer("dino_vitb8", "rs-dino-vit-b8") == rs
    # A download record whose size disagrees with the file: not usable.
    with open(cached + ".verified.json", "w") as handle:
        handle.write('{"size": 12345}')
    assert answer("dino_vitb8", None) is None


def test_resolve_dino_weights_looks_in_the_given_cache_and_refuses_other_families(tmp_path):
    path = put_in_cache(tmp_path / "cache", "dino-vit-b8")   # an entry without a published size
    assert resolve_dino_weights("dino_vitb8", "", str(tmp_path / "cache")) == path
    assert resolve_dino_weights("dino_vitb8", "", str(tmp_path / "elsewhere")) is None
    with pytest.raises(InputError, match="SAM model, not DINO"):
        resolve_dino_weights("dino_vitb8", "sam-vit-b", str(tmp_path / "cache"))


def test_load_dino_without_weights_says_how_to_get_them(cache_dir):
    with pytest.raises(ModelError, match="models download dino-vit-s8"):
        load_dino("dino_vits8", None, "cpu")


# -- the loaded-model cache -------------------------------------------------------------------

def _in_thread(fn):
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def test_a_slow_load_does_not_block_lookups_of_loaded_models():
    cache = ModelCache(4)
    loaded = cache.get("clip", lambda: "CLIP")
    started, release = threading.Event(), threading.Event()

    def slow_sam():
        started.set()
        release.wait(30)
        return "SAM"

    thread, box = _in_thread(lambda: cache.get("sam", slow_sam))
    assert started.wait(30)
    # SAM is still loading (its build waits for `release`), yet CLIP comes back, and so does a
    # third model that loads quickly.
    assert cache.get("clip", lambda: "other") is loaded
    assert cache.get("dino", lambda: "DINO") == "DINO"
    assert thread.is_alive() and "sam" not in cache
    release.set()
    thread.join(30)
    assert box == {"value": "SAM"}
    assert cache.get("sam", lambda: "rebuilt") == "SAM"


def test_concurrent_requests_for_one_model_load_it_once():
    cache = ModelCache(4)
    calls, release = [], threading.Event()

    def build():
        calls.append(1)
        release.wait(30)
        return object()

    threads = [_in_thread(lambda: cache.get("sam", build)) for _ in range(4)]
    while not calls:                 # the first caller is building; the others wait on its lock
        threading.Event().wait(0.01)
    release.set()
    for thread, _ in threads:
        thread.join(30)
    values = [box["value"] for _, box in threads]
    assert len(calls) == 1
    assert all(value is values[0] for value in values)


def test_cache_is_a_bounded_lru_and_failed_loads_are_not_kept():
    cache = ModelCache(2)
    cache.get("a", lambda: 1)
    cache.get("b", lambda: 2)
    cache.get("a", lambda: 0)           # a is now the most recently used
    cache.get("c", lambda: 3)           # evicts b
    assert cache.keys() == ["a", "c"]
    assert cache.get("b", lambda: 20) == 20

    def broken():
        raise ModelError("bad weights")

    with pytest.raises(ModelError):
        cache.get("d", broken)
    assert "d" not in cache
    assert cache.get("d", lambda: 4) == 4
    assert len(cache) == 2
