"""Settings: defaults that work, JSON round trip, validation, environment overrides, config path."""
from __future__ import annotations

import json
import os

import pytest

from drseg.core import settings as st
from drseg.core.errors import InputError
from drseg.core.settings import Settings, load_settings, save_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in (st.CONFIG_ENV, st.CACHE_ENV, st.MIRROR_ENV):
        monkeypatch.delenv(name, raising=False)


def test_defaults_are_valid_and_match_the_engine():
    from drseg.core.segment import SegmentationRequest

    defaults = Settings()
    assert defaults.validate(check_files=True) == []
    request = SegmentationRequest(raster="x.tif", classes="a")
    assert (defaults.window, defaults.stride, defaults.block, defaults.batch_size) == \
        (request.window, request.stride, request.block, request.batch_size)
    assert (defaults.clip_model, defaults.clip_weights) == (request.clip_model, request.clip_weights)
    assert defaults.overlap == 112


def test_default_weights_are_the_catalog_checkpoints_of_the_default_models():
    from drseg.core.models.catalog import get_model

    defaults = Settings()
    sam, dino = get_model(defaults.sam_weights), get_model(defaults.dino_weights)
    assert (sam.family, sam.architecture) == ("sam", defaults.sam_model)
    assert dino.family == "dino"
    assert dino.architecture.split(".")[0] == st.DINO_MODELS[defaults.dino_model].timm_name


def test_default_cache_dir_is_the_downloads_default(monkeypatch, tmp_path):
    from drseg.core.models import download

    monkeypatch.setenv(st.CONFIG_ENV, str(tmp_path / "none.json"))
    assert Settings().effective_cache_dir() == download.resolve_cache_dir("") == st.default_cache_dir()
    monkeypatch.setenv(st.CACHE_ENV, "/env/cache")
    assert Settings(cache_dir="/mine").effective_cache_dir() == os.path.abspath("/env/cache")
    assert download.resolve_cache_dir("/mine") == os.path.abspath("/mine")  # a parameter wins


def test_resolve_follows_parameter_environment_saved_default(tmp_path):
    env = {st.CACHE_ENV: str(tmp_path / "env"), st.MIRROR_ENV: "https://env.example/m/"}
    saved = Settings(cache_dir=str(tmp_path / "saved"), mirror_url="https://saved.example",
                     clip_weights="/data/clip.pt", device="cpu")
    # 1. an explicit parameter wins over everything
    assert st.resolve("cache_dir", str(tmp_path / "p"), saved, env) == (str(tmp_path / "p"), "parameter")
    assert st.resolve("clip_weights", "x.pt", saved, env) == ("x.pt", "parameter")
    # 2. then the environment variable, for the settings that have one
    assert st.resolve("cache_dir", None, saved, env) == (str(tmp_path / "env"),
                                                         "environment DRSEG_CACHE_DIR")
    assert st.resolve("mirror_url", "  ", saved, env) == ("https://env.example/m",
                                                          "environment DRSEG_MODEL_MIRROR")
    # 3. then the saved settings
    assert st.resolve("cache_dir", None, saved, {}) == (str(tmp_path / "saved"), "saved settings")
    assert st.resolve("clip_weights", "", saved, env) == ("/data/clip.pt", "saved settings")
    assert st.resolve("device", None, saved, env) == ("cpu", "saved settings")
    # 4. then the built-in default
    fresh = Settings()
    assert st.resolve("clip_weights", None, fresh, env) == (fresh.clip_weights, "default")
    assert st.resolve("mirror_url", None, fresh, {}) == (None, "default")
    assert st.resolve("cache_dir", None, fresh, {"XDG_CACHE_HOME": str(tmp_path / "xdg")})[1] == "default"
    with pytest.raises(InputError, match="Unknown setting"):
        st.resolve("colour", None, fresh, {})


def test_resolve_reads_the_saved_file_when_no_settings_are_given(tmp_path, monkeypatch):
    path = tmp_path / "settings.json"
    save_settings(Settings(sam_model="vit_l", sam_weights="sam-vit-l"), str(path))
    monkeypatch.setenv(st.CONFIG_ENV, str(path))
    assert st.resolve("sam_weights") == ("sam-vit-l", "saved settings")
    assert st.resolve("sam_weights", "own.pth") == ("own.pth", "parameter")


def test_round_trip_keeps_values_and_unknown_keys(tmp_path):
    path = str(tmp_path / "conf" / "settings.json")
    original = Settings(cache_dir=str(tmp_path / "models"), mirror_url="https://mirror.example/drseg",
                        clip_model="ViT-L-14", clip_weights="remoteclip-vit-l-14",
                        dino_model="dinov2_vits14", dino_weights="dinov2-vit-s14",
                        sam_model="vit_h", sam_weights="sam-vit-h", device="cuda:1",
                        window=336, stride=168, block=1024, batch_size=2,
                        extra={"future_option": [1, 2]})
    assert save_settings(original, path) == path
    loaded = load_settings(path)
    assert loaded == original
    assert loaded.extra == {"future_option": [1, 2]}
    data = json.loads(open(path, encoding="utf-8").read())
    assert data["window"] == 336 and data["format_version"] == st.FORMAT_VERSION
    assert sorted(os.listdir(tmp_path / "conf")) == ["settings.json"]   # no temporary left


def test_missing_file_means_defaults(tmp_path):
    assert load_settings(str(tmp_path / "none.json")) == Settings()


def test_partial_file_fills_in_defaults(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"device": "cpu", "window": 448, "stride": 224}))
    loaded = load_settings(str(path))
    assert (loaded.device, loaded.window, loaded.stride, loaded.block) == ("cpu", 448, 224, 512)


@pytest.mark.parametrize("changes,message", [
    (dict(window=16), "Window size must be between 32 and 4096"),
    (dict(window=224, stride=300), "Stride (300) must not be larger than the window (224)"),
    (dict(stride=0), "Stride must be between"),
    (dict(batch_size=0), "Batch size must be between 1"),
    (dict(block="512"), "Block size must be a whole number"),
    (dict(window=True), "Window size must be a whole number"),
    (dict(device="gpu"), "Unknown device 'gpu'"),
    (dict(mirror_url="ftp://mirror"), "must start with http://"),
    (dict(clip_model=" "), "CLIP model is empty"),
    (dict(clip_weights="sam-vit-b"), "are a SAM model, not CLIP"),
    (dict(dino_model="dino_vitl16"), "Unknown DINO model"),
    (dict(dino_weights="sam-vit-b"), "are a SAM model, not DINO"),
    (dict(dino_model="dinov2_vitb14", dino_weights="dino-vit-b8"), "are for vit_base_patch8_224.dino"),
    (dict(dino_weights="best"), "neither a catalog model"),
    (dict(sam_model="vit_l", sam_weights="sam-vit-b"), "are for vit_b, not the SAM model 'vit_l'"),
    (dict(sam_model="vit_x"), "Unknown SAM model"),
])
def test_validation_names_the_problem(changes, message):
    problems = Settings(**changes).validate()
    assert any(message in p for p in problems), problems
    with pytest.raises(InputError, match="Invalid DR-Seg settings"):
        Settings(**changes).checked()


def test_files_are_checked_only_when_asked(tmp_path):
    weights = tmp_path / "dino.pth"
    settings = Settings(dino_weights=str(weights), clip_weights=str(tmp_path / "clip.pt"),
                        clip_model=str(tmp_path / "tiny.json"))
    assert settings.validate() == []
    problems = settings.validate(check_files=True)
    assert len(problems) == 3 and all("does not exist" in p for p in problems)
    weights.write_bytes(b"x")
    assert not any("dino.pth" in p for p in settings.validate(check_files=True))
    cache_file = tmp_path / "a_file"
    cache_file.write_text("")
    assert "is a file, not a folder" in Settings(cache_dir=str(cache_file)).validate()[0]
    assert Settings(device="cuda:0").validate() == [] and Settings(device="MPS").validate() == []


def test_invalid_settings_are_not_saved(tmp_path):
    path = tmp_path / "s.json"
    with pytest.raises(InputError, match="Stride"):
        save_settings(Settings(stride=999), str(path))
    assert not path.exists()


def test_broken_files_are_clear_errors(tmp_path):
    path = tmp_path / "s.json"
    path.write_text("{not json")
    with pytest.raises(InputError, match="is not valid JSON"):
        load_settings(str(path))
    settings, problem = st.load_settings_or_defaults(str(path))
    assert settings == Settings() and str(path) in problem
    path.write_text(json.dumps({"window": 10}))
    with pytest.raises(InputError, match="invalid values: Window size"):
        load_settings(str(path))
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(InputError, match="expected a JSON object"):
        load_settings(str(path))


def test_environment_overrides_cache_and_mirror_without_changing_the_file(tmp_path, monkeypatch):
    path = str(tmp_path / "s.json")
    save_settings(Settings(cache_dir=str(tmp_path / "mine"), mirror_url="https://mine.example/"), path)
    loaded = load_settings(path)
    assert loaded.effective_cache_dir() == str(tmp_path / "mine")
    assert loaded.effective_mirror() == "https://mine.example"
    assert loaded.overridden_by_environment() == {}
    monkeypatch.setenv(st.CACHE_ENV, str(tmp_path / "env_cache"))
    monkeypatch.setenv(st.MIRROR_ENV, "https://env.example/models/")
    assert loaded.effective_cache_dir() == str(tmp_path / "env_cache")
    assert loaded.effective_mirror() == "https://env.example/models"
    assert set(loaded.overridden_by_environment()) == {"cache_dir", "mirror_url"}
    save_settings(loaded, path)
    assert json.loads(open(path).read())["cache_dir"] == str(tmp_path / "mine")  # env not persisted
    assert Settings().effective_mirror({}) is None


def test_config_path_per_platform_and_override(monkeypatch, tmp_path):
    assert st.config_path({"XDG_CONFIG_HOME": "/cfg"}, "linux", "/home/u") == "/cfg/drseg/settings.json"
    assert st.config_path({}, "linux", "/home/u") == "/home/u/.config/drseg/settings.json"
    assert st.config_path({}, "darwin", "/Users/u") == \
        "/Users/u/Library/Application Support/drseg/settings.json"
    assert st.config_path({"APPDATA": "/appdata"}, "win32", "/u").endswith(
        os.path.join("appdata", "drseg", "settings.json"))
    target = tmp_path / "elsewhere.json"
    monkeypatch.setenv(st.CONFIG_ENV, str(target))
    assert st.config_path() == str(target)
    save_settings(Settings(device="cpu"))
    assert load_settings().device == "cpu" and target.exists()


def test_resolve_all_reads_once_and_saved_weights_follow_their_model(tmp_path):
    from drseg.core.models.registry import DEFAULT_CLIP_WEIGHTS
    from drseg.core.settings import Settings, resolve_all

    saved = Settings(clip_model="ViT-B-32", clip_weights="/w/b32.pt", sam_model="vit_l",
                     sam_weights="/w/sam_l.pth", device="cpu")
    same = resolve_all({"clip_model": None, "clip_weights": None, "device": "cuda"}, saved, {})
    assert same["clip_weights"] == "/w/b32.pt" and same.sources["clip_weights"] == "saved settings"
    assert same["device"] == "cuda" and same.sources["device"] == "parameter"
    other = resolve_all({"clip_model": "ViT-L-14", "clip_weights": None, "sam_model": "vit_h",
                         "sam_weights": None}, saved, {})
    assert other["clip_weights"] == DEFAULT_CLIP_WEIGHTS      # not ViT-B-32's file for ViT-L-14
    assert other.sources["clip_weights"] == "default for ViT-L-14"
    assert other.chosen("sam_weights") is None                 # vit_h's catalog checkpoint
    env = resolve_all({"cache_dir": None}, saved, {"DRSEG_CACHE_DIR": str(tmp_path)})
    assert env.describe() == [f"Model cache folder: {tmp_path} (environment DRSEG_CACHE_DIR)"]
