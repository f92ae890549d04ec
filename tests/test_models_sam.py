"""SAM models: built from segment_anything's registry, weights through the safe loader only,
catalog names through the model cache, a clear error when offline, shared through the cache."""
from __future__ import annotations

import pickle

import pytest
import torch
from segment_anything.modeling import Sam

from drseg.core.refer.synthetic import tiny_sam
from drseg.core.models import cache as model_cache
from drseg.core.models import download, sam as sam_models, shared
from drseg.core.errors import InputError, ModelError
from drseg.core.models.sam import load_sam, register_sam_architecture, resolve_sam_weights


@pytest.fixture(autouse=True)
def tiny_architectures():
    register_sam_architecture("tiny_test", tiny_sam)
    register_sam_architecture("tiny_test_wide", lambda: tiny_sam(embed_dim=48))
    yield
    sam_models._EXTRA_ARCHITECTURES.pop("tiny_test", None)
    sam_models._EXTRA_ARCHITECTURES.pop("tiny_test_wide", None)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny SAM with non-default weights, saved as a .pth state dict and as safetensors."""
    from safetensors.torch import save_file

    torch.manual_seed(7)
    model = tiny_sam()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    state = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
    tmp_path = tmp_path_factory.mktemp("sam")
    pth = tmp_path / "tiny_sam.pth"
    torch.save(state, pth)
    st = tmp_path / "tiny_sam.safetensors"
    save_file(state, str(st))
    return model, str(pth), str(st)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("which", ["pth", "safetensors"])
def test_weights_round_trip_through_a_file(trained, which):
    model, pth, st = trained
    loaded = load_sam("tiny_test", pth if which == "pth" else st, "cpu")
    assert isinstance(loaded, Sam) and not loaded.training
    assert _same(loaded, model)
    assert not _same(tiny_sam(), model)          # the weights really came from the file
    tokens = torch.randn(1, 5, 256)
    with torch.no_grad():       # a forward through a loaded block gives the trained output
        a = loaded.mask_decoder.transformer.final_attn_token_to_image(tokens, tokens, tokens)
        b = model.mask_decoder.transformer.final_attn_token_to_image(tokens, tokens, tokens)
    assert torch.equal(a, b)


def test_wrong_architecture_is_a_model_error(trained):
    _, pth, st = trained
    with pytest.raises(ModelError, match="SAM tiny_test_wide"):
        load_sam("tiny_test_wide", st, "cpu")
    with pytest.raises(ModelError, match="SAM vit_b") as err:   # the real registry builder
        load_sam("vit_b", pth, "cpu")
    assert "\n" not in str(err.value)


class _Payload:
    def __reduce__(self):
        return (print, ("this would have run",))


@pytest.mark.parametrize("content,message", [
    (b"", "empty"),
    (b"<html><body>Not found</body></html>", "web page"),
    (b"\x80\x02this is not a pickle at all" * 4, "corrupt"),
])
def test_corrupt_files_are_model_errors(tmp_path, content, message):
    path = tmp_path / "sam.pth"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=message):
        load_sam("tiny_test", str(path), "cpu")


def test_truncated_and_code_running_files_are_refused(tmp_path, trained, capsys):
    _, pth, st = trained
    data = open(st, "rb").read()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(ModelError, match="corrupt or truncated"):
        load_sam("tiny_test", str(cut), "cpu")
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as handle:
        pickle.dump({"image_encoder.x": _Payload()}, handle, protocol=2)
    with pytest.raises(ModelError, match="could run code"):
        load_sam("tiny_test", str(evil), "cpu")
    assert "this would have run" not in capsys.readouterr().out


def test_catalog_name_not_cached_and_offline_says_what_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(download, "server_reachable", lambda *a, **k: False)
    built = []
    monkeypatch.setattr(sam_models, "sam_architectures",
                        lambda: {t: lambda: built.append(1) for t in ("vit_b", "vit_l")})
    with pytest.raises(ModelError) as err:
        load_sam("vit_b", "sam-vit-b", "cpu")
    text = str(err.value)
    assert "python -m drseg models download sam-vit-b" in text
    assert "sam_vit_b_01ec64.pth" in text and "--sam-weights" in text
    assert built == []                                   # failed before building anything
    with pytest.raises(ModelError, match="sam-vit-l"):  # no weights named: the type's checkpoint
        load_sam("vit_l", None, "cpu")


def test_catalog_names_resolve_through_the_cache(tmp_path, monkeypatch, trained):
    _, pth, _ = trained
    asked = []

    def fake_cached(entry, cache_dir=None, verify=False):
        asked.append(entry.name)
        return pth

    monkeypatch.setattr(download, "cached_path", fake_cached)
    assert resolve_sam_weights(None, "SAM-ViT-L") == ("vit_l", pth)
    assert resolve_sam_weights("vit_h", None) == ("vit_h", pth)
    assert asked == ["sam-vit-l", "sam-vit-h"]
    with pytest.raises(InputError, match="for vit_l, not vit_b"):
        resolve_sam_weights("vit_b", "sam-vit-l")


def test_bad_names_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="Unknown SAM model 'vit_x'"):
        load_sam("vit_x", "random")
    with pytest.raises(InputError, match="neither a SAM weights file nor a catalog name"):
        load_sam("vit_b", "sam-vit-q")
    with pytest.raises(ModelError, match="not found"):
        load_sam("vit_b", str(tmp_path / "missing.pth"))


def test_models_are_shared_through_the_model_cache(trained):
    _, pth, _ = trained
    model_cache.clear()
    try:
        first = shared.sam_model("tiny_test", pth, "cpu")
        second = shared.sam_model("tiny_test", pth, "cpu")
        assert first is second
        assert shared.sam_model("tiny_test", "random", "cpu") is not first
    finally:
        model_cache.clear()
