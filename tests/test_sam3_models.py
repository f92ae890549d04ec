"""SAM 3 weights: safetensors only (the released layout with its `detector_model.` prefix and
tracker keys), a config.json stands for an architecture, the catalog entry names the SAM
License, and the offline / gated messages explain how to import a downloaded file."""
from __future__ import annotations


import pytest
import torch
from safetensors.torch import save_file

from conftest import tiny_sam3_config
from drseg.core.errors import InputError, ModelError
from drseg.core.models import download, registry
from drseg.core.models import sam3 as sam3_models
from drseg.core.models.catalog import get_model, list_models


@pytest.fixture(autouse=True)
def tiny_architecture():
    sam3_models.register_sam3_architecture("tiny_sam3", tiny_sam3_config)
    yield
    sam3_models._EXTRA_ARCHITECTURES.pop("tiny_sam3", None)


def _released_layout(model) -> dict:
    """The state dict as facebook/sam3's model.safetensors stores it: detector under a prefix,
    plus video-tracker tensors the image detector has no place for."""
    state = {"detector_model." + k: v.clone().contiguous() for k, v in model.state_dict().items()}
    state["tracker_model.some.weight"] = torch.zeros(2)
    return state


def test_safetensors_weights_load_exactly(tmp_path):
    torch.manual_seed(1)
    source = sam3_models.build_sam3("tiny_sam3")
    path = tmp_path / "model.safetensors"
    save_file(_released_layout(source), str(path))
    torch.manual_seed(2)  # the loaded model starts from other random weights
    for weights in (str(path), str(tmp_path)):  # the file, or the Hugging Face folder
        loaded = sam3_models.load_sam3("tiny_sam3", weights, "cpu")
        for name, value in source.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], value), name


def test_pickled_checkpoint_is_refused(tmp_path):
    path = tmp_path / "sam3.pt"
    torch.save({"x": torch.zeros(1)}, str(path))
    with pytest.raises(ModelError, match="safetensors"):
        sam3_models.load_sam3("tiny_sam3", str(path), "cpu")


def test_damaged_safetensors_is_one_clear_error(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelError, match="not a readable safetensors file"):
        sam3_models.load_sam3("tiny_sam3", str(path), "cpu")


def test_weights_of_another_size_name_the_mismatch(tmp_path):
    source = sam3_models.build_sam3("tiny_sam3")
    state = _released_layout(source)
    state["detector_model.text_projection.weight"] = torch.zeros(3, 3)
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    with pytest.raises(ModelError, match="text_projection"):
        sam3_models.load_sam3("tiny_sam3", str(path), "cpu")


def test_config_json_is_an_architecture(tiny_sam3_json):
    model = sam3_models.load_sam3(tiny_sam3_json, "random", "cpu")
    assert model.config.vision_config.backbone_config.hidden_size == 32
    with pytest.raises(InputError, match="needs its weights"):
        sam3_models.resolve_sam3_weights(tiny_sam3_json, None)


def test_catalog_entry_names_the_licence_and_is_safetensors():
    entry = get_model(registry.DEFAULT_SAM3_WEIGHTS)
    assert entry.family == "sam3" and entry.licence == registry.SAM3_LICENCE
    assert entry.file.endswith(".safetensors") and entry.url.endswith(".safetensors")
    assert [e.name for e in list_models("sam3")] == ["sam3"]
    # nothing invented: the hash is unknown until someone measures the gated file
    assert entry.sha256 is None and "models import sam3" in entry.notes


def test_offline_message_explains_the_import(tmp_path, monkeypatch):
    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(download, "server_reachable", lambda *a, **k: False)
    with pytest.raises(ModelError) as error:
        sam3_models.resolve_sam3_weights("sam3", None)
    text = str(error.value)
    assert "python -m drseg models import sam3 FILE" in text and "SAM License" in text
    assert "huggingface.co/facebook/sam3" in text


def test_no_access_message_explains_the_import(tmp_path, monkeypatch):
    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(download, "server_reachable", lambda *a, **k: True)

    def refused(entry, *args, **kwargs):
        raise ModelError("Downloading 'sam3' failed: huggingface.co answered HTTP 401")

    monkeypatch.setattr(sam3_models, "ensure_cached", refused)
    with pytest.raises(ModelError, match="accept the licence .* models import sam3 FILE"):
        sam3_models.resolve_sam3_weights("sam3", None)


def test_download_command_shows_the_licence_first(tmp_path, monkeypatch, capsys):
    from drseg.cli import app
    from drseg.cli import models as models_cli

    shown = []
    monkeypatch.setattr(download, "download",
                        lambda entry, *a, **k: shown.append(capsys.readouterr().err) or str(tmp_path / "f"))
    monkeypatch.setattr(models_cli, "_verified_text", lambda *a: "checked")
    code = app.main(["models", "download", "sam3", "--cache-dir", str(tmp_path), "--quiet"])
    assert code == 0 and "licence SAM License" in shown[0]


def test_unknown_model_is_an_input_error():
    with pytest.raises(InputError, match="Unknown SAM 3 model"):
        sam3_models.resolve_sam3_weights("sam4", "random")


def test_half_precision_only_on_cuda():
    assert sam3_models.sam3_dtype(torch.device("cpu")) == torch.float32
