"""The model catalog: every entry names an architecture the libraries really build, the checks
it promises are well-formed, lookups fail helpfully, and `models list` shows it."""
import copy
import json
import re
import urllib.parse

import pytest

from drseg import cli
from drseg.core.models import catalog, registry
from drseg.core.models import download as dl
from drseg.core.models.catalog import get_model, list_models, load_catalog, parse_catalog
from drseg.core.errors import InputError, ModelError


def _raw():
    with open(catalog.CATALOG_PATH, encoding="utf-8") as handle:
        return json.load(handle)


def test_required_models_are_listed():
    names = {e.name for e in list_models()}
    for required in ("clip-vit-b-16-openai", "clip-vit-l-14-openai", "remoteclip-vit-b-32",
                     "remoteclip-vit-l-14", "georsclip-vit-b-32", "skyclip-vit-b-32",
                     "dino-vit-s8", "dino-vit-b8", "dinov2-vit-s14", "dinov2-vit-b14",
                     "rs-dino-vit-b8", "sam-vit-b", "sam-vit-l", "sam-vit-h"):
        assert required in names
    assert {e.family for e in list_models()} == set(registry.FAMILIES)


def test_architectures_exist_in_the_libraries():
    import open_clip
    import timm
    from segment_anything import sam_model_registry

    clip_models = set(open_clip.list_models())
    for entry in list_models("clip"):
        assert entry.architecture in clip_models, entry.name
    for entry in list_models("dino"):
        assert timm.is_model(entry.architecture.split(".")[0]), entry.name
    for entry in list_models("sam"):
        assert entry.architecture in sam_model_registry, entry.name


def test_openai_clip_entries_match_open_clip_pretrained_configs():
    import open_clip

    for entry in list_models("clip"):
        if entry.name.endswith("-openai"):
            cfg = open_clip.get_pretrained_cfg(entry.architecture, "openai")
            assert entry.quick_gelu == bool(cfg.get("quick_gelu")), entry.name
            repo = cfg["hf_hub"].strip("/")
            assert entry.url.startswith(f"https://huggingface.co/{repo}/resolve/"), entry.name


def test_checks_are_well_formed_and_never_guessed():
    for entry in list_models():
        assert entry.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
        assert entry.size is None or entry.size > 0
        if entry.url:
            parsed = urllib.parse.urlparse(entry.url)
            assert parsed.scheme == "https" and parsed.netloc, entry.name
            if not entry.archive:
                assert entry.file.endswith((".pth", ".pt", ".bin", ".safetensors")), entry.name
        else:
            assert entry.homepage and "import" in entry.notes, entry.name
        assert entry.verifiable in ("size and SHA-256", "size only", "SHA-256 only", "nothing")
    # Meta publishes the SAM checkpoints' digests; they are the ones the catalog can fully check
    for entry in list_models("sam"):
        assert entry.verifiable == "size and SHA-256"
        assert entry.url.startswith("https://dl.fbaipublicfiles.com/segment_anything/")


def test_cache_and_mirror_names_are_unique():
    entries = list_models()
    served = [e.download_name for e in entries]
    cached = [e.file for e in entries]
    assert len(set(served)) == len(served)
    assert len(set(cached)) == len(cached)
    sky = get_model("skyclip-vit-b-32")
    assert sky.download_name == sky.archive != sky.file
    assert dl.source_url(sky, mirror="https://mirror.example/models/") == \
        "https://mirror.example/models/" + sky.archive


def test_rs_dino_entry_describes_teacher_format():
    entry = get_model("rs-dino-vit-b8")
    assert entry.key == "teacher"
    assert entry.strip_prefixes == ("module.", "backbone.")
    assert entry.architecture == get_model("dino-vit-b8").architecture


def test_family_filter_and_lookup():
    dinos = list_models("dino")
    assert dinos and all(e.family == "dino" for e in dinos)
    assert sum(len(list_models(family)) for family in registry.FAMILIES) == len(list_models())
    assert get_model("SAM-ViT-B").name == "sam-vit-b"
    entry = get_model("sam-vit-b")
    assert get_model(entry) is entry
    with pytest.raises(InputError, match="Unknown model family 'vit'.*clip, dino, sam"):
        list_models("vit")


def test_unknown_name_lists_valid_names_and_suggests():
    with pytest.raises(InputError) as info:
        get_model("sam-vitb")
    text = str(info.value)
    assert "Did you mean 'sam-vit-b'?" in text
    for entry in list_models():
        assert entry.name in text


@pytest.mark.parametrize("change, message", [
    (lambda m: m[0].update(sha256="abc123"), "invalid sha256"),
    (lambda m: m[0].update(sha256="A" * 64), "invalid sha256"),
    (lambda m: m[0].update(size=-5), "invalid size"),
    (lambda m: m[0].update(size="12"), "invalid size"),
    (lambda m: m[0].update(family="vit"), "unknown family"),
    (lambda m: m[0].update(file="../../etc/passwd"), "unsafe file name"),
    (lambda m: m[0].update(url="ftp://host/file"), "invalid url"),
    (lambda m: m[0].pop("architecture"), "lacks 'architecture'"),
    (lambda m: m[1].update(name=m[0]["name"].upper()), "appears twice"),
    (lambda m: m[1].update(file=m[0]["file"]), "used twice"),
    (lambda m: m[0].update(archive="x.zip", archive_member=None), "both 'archive' and 'archive_member'"),
])
def test_broken_catalog_is_rejected_with_reason(change, message):
    data = copy.deepcopy(_raw())
    change(data["models"])
    with pytest.raises(ModelError, match=re.escape(message)):
        parse_catalog(data)


def test_packaged_catalog_parses_and_round_trips():
    entries = parse_catalog(_raw())
    assert [e.name for e in entries] == [e.name for e in load_catalog()]
    again = parse_catalog({"models": [e.to_dict() for e in entries]})
    assert again == entries


def test_cli_list_shows_catalog_and_cache_state(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(dl.CACHE_ENV, raising=False)
    cache = tmp_path / "cache"
    cache.mkdir()
    sam = get_model("sam-vit-b")
    (cache / sam.file).write_bytes(b"\0" * 10)  # wrong size: not counted as downloaded
    assert cli.main(["models", "list", "--cache-dir", str(cache), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in data["models"]] == [e.name for e in list_models()]
    by_name = {m["name"]: m for m in data["models"]}
    assert by_name["sam-vit-b"]["cached_path"] is None
    assert by_name["sam-vit-b"]["sha256"] == sam.sha256
    assert cli.main(["models", "list", "--family", "sam", "--cache-dir", str(cache)]) == 0
    text = capsys.readouterr().out
    assert "sam-vit-h" in text and "dino-vit-b8" not in text


def test_cli_unknown_model_is_a_user_error(capsys):
    assert cli.main(["models", "download", "no-such-model"]) == 2
    assert "Valid names" in capsys.readouterr().err


def test_base_weights_sha256_knows_files_and_both_catalogs(tmp_path):
    import hashlib

    from drseg.core.models.catalog import base_weights_sha256

    weights = tmp_path / "mine.pth"
    weights.write_bytes(b"not really weights")
    assert base_weights_sha256("vit_b", str(weights), "sam") == hashlib.sha256(
        b"not really weights").hexdigest()
    sam_b = get_model("sam-vit-b")
    assert base_weights_sha256("vit_b", None, "sam") == sam_b.sha256       # the default checkpoint
    assert base_weights_sha256(None, "sam-vit-h", "sam") == get_model("sam-vit-h").sha256
    assert base_weights_sha256("vit_b", "random", "sam") == ""
    assert base_weights_sha256("ViT-B-16", "random") == ""
    assert base_weights_sha256("ViT-B-16", "no-such-tag") == ""
