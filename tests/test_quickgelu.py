"""OpenAI CLIP weights run with QuickGELU however they arrive: a catalog name, a checkpoint file
the catalog knows by its SHA-256, or a `<model>-quickgelu` name as in open_clip."""
import hashlib

import pytest
import torch
from open_clip.transformer import QuickGELU

from support.tiny_models import TINY_CLIP_CONFIG, load_tiny_clip
from drseg.core.models import catalog, download
from drseg.core.models import clip as clip_models
from drseg.core.models.clip import catalog_entry, load_clip
from drseg.core.errors import ModelError


def activation(model):
    return type(model.visual.transformer.resblocks[0].mlp.gelu)


@pytest.fixture
def tiny_checkpoint(tmp_path):
    model, _, config = load_tiny_clip(tmp_path, seed=1)
    weights = tmp_path / "openai-like.pt"
    torch.save(model.state_dict(), weights)
    return str(config), str(weights), hashlib.sha256(weights.read_bytes()).hexdigest()


def register(monkeypatch, sha256, quick_gelu=True, architecture="ViT-B-16"):
    """A test catalog holding one CLIP entry that publishes `sha256`."""
    entries = catalog.parse_catalog({"models": [{
        "name": "clip-test-openai", "family": "clip", "architecture": architecture,
        "url": "http://127.0.0.1:9/x.bin", "file": "clip_test_openai.bin", "licence": "test",
        "good_for": "tests", "sha256": sha256, "quick_gelu": quick_gelu}]})
    monkeypatch.setattr(catalog, "list_models",
                        lambda family=None: [e for e in entries if family in (None, e.family)])


def test_a_checkpoint_file_known_by_its_sha256_gets_quickgelu(tiny_checkpoint, monkeypatch):
    config, weights, digest = tiny_checkpoint
    plain, _ = load_clip(config, weights)
    assert activation(plain) is torch.nn.GELU         # unknown file: built as its config says
    register(monkeypatch, digest)
    known, _ = load_clip(config, weights)
    assert activation(known) is QuickGELU
    # Same weights, the activation decides the output: QuickGELU is x·σ(1.702x), not GELU.
    pixels = torch.randn(1, 3, 224, 224)
    reference = clip_models._model_from_config_file(config, quick_gelu=True)[0]
    reference.load_state_dict(torch.load(weights, weights_only=True))
    with torch.no_grad():
        assert torch.allclose(known.encode_image(pixels), reference.eval().encode_image(pixels),
                              atol=1e-6)
        assert not torch.allclose(plain.encode_image(pixels), known.encode_image(pixels),
                                  atol=1e-4)


def test_a_file_with_another_hash_keeps_plain_gelu(tiny_checkpoint, monkeypatch):
    config, weights, digest = tiny_checkpoint
    register(monkeypatch, "0" * 64)
    model, _ = load_clip(config, weights)
    assert activation(model) is torch.nn.GELU
    assert clip_models.identify_checkpoint(weights) is None
    register(monkeypatch, digest)
    assert clip_models.identify_checkpoint(weights).name == "clip-test-openai"


def test_quickgelu_model_names_mean_the_same_catalog_weights():
    assert catalog_entry("ViT-B-16-quickgelu", "openai").name == "clip-vit-b-16-openai"
    assert catalog_entry("ViT-L-14-quickgelu", "openai").name == "clip-vit-l-14-openai"
    assert catalog_entry("ViT-B-16", "openai").quick_gelu


def test_quickgelu_model_name_builds_quickgelu(monkeypatch):
    """`--clip-model ViT-B-16-quickgelu`: QuickGELU whatever the weights, as in open_clip."""
    import open_clip

    built = []

    def tiny_instead(name, pretrained=None, force_quick_gelu=False, **kw):
        built.append((name, force_quick_gelu))
        return open_clip.model.CLIP(**dict(TINY_CLIP_CONFIG, quick_gelu=force_quick_gelu))

    monkeypatch.setattr(open_clip, "create_model", tiny_instead)
    model, _ = load_clip("ViT-B-16-quickgelu", "random")
    assert built == [("ViT-B-16-quickgelu", True)] and activation(model) is QuickGELU


def test_offline_advice_for_clip_names_models_import(monkeypatch, tmp_path):
    monkeypatch.setenv("DRSEG_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(download, "server_reachable", lambda url, timeout=5.0: False)
    with pytest.raises(ModelError) as error:
        load_clip("ViT-B-16-quickgelu", "openai")
    message = str(error.value)
    assert "models import clip-vit-b-16-openai FILE" in message
    assert "--clip-weights PATH" not in message
    # DINO and SAM files carry no such setting: a file path stays a fine answer there.
    entry = catalog.get_model("sam-vit-b")
    with pytest.raises(ModelError, match="models import sam-vit-b FILE.*--sam-weights PATH"):
        download.ensure_cached(entry, "SAM weights", "--sam-weights", "SAM weights")
