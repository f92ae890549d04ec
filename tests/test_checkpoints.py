"""The safe checkpoint loader: real state dicts load, code-running pickles and TorchScript are
refused, damaged files get a message that says so."""
import io
import os
import pickle
import warnings
import zipfile

import pytest
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from drseg.core.models import formats as checkpoints
from drseg.core.models.checkpoints import load_into, load_state_dict, probe_format
from drseg.core.errors import ModelError


def _tiny_vit(embed_dim=32):
    torch.manual_seed(0)
    # the DINO ViT architecture (timm), shrunk: real key names, real layer types
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=embed_dim, depth=2, num_heads=2,
                             num_classes=0)


def _assert_same(loaded, reference):
    assert set(loaded) == set(reference)
    for name, tensor in reference.items():
        assert torch.equal(loaded[name], tensor), name


class _RunsCode:
    """Unpickling this would call os.system and create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


# ----------------------------------------------------------------------------- refusing code

@pytest.mark.parametrize("writer", ["plain-pickle", "torch-zip", "torch-legacy"])
def test_pickle_that_would_run_code_is_refused(tmp_path, writer):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    payload = {"weight": torch.zeros(2), "trap": _RunsCode(marker)}
    if writer == "plain-pickle":
        with open(path, "wb") as handle:
            pickle.dump(payload, handle, protocol=2)
    elif writer == "torch-zip":
        torch.save(payload, path)
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    assert not marker.exists()
    with pytest.raises(ModelError, match=r"could run code.*posix\.system|could run code.*os\.system"):
        load_state_dict(str(path))
    assert not marker.exists(), "the pickle's code ran"


def test_torchscript_archive_is_refused(tmp_path):
    module = torch.nn.Linear(3, 2)
    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(module, torch.zeros(1, 3)).save(str(path))
    assert probe_format(str(path)) == checkpoints.TORCHSCRIPT
    with pytest.raises(ModelError, match="TorchScript.*can run code"):
        load_state_dict(str(path))


# ----------------------------------------------------------------------------- real weights

@pytest.mark.parametrize("legacy", [False, True])
def test_real_state_dict_loads_unchanged(tmp_path, legacy):
    model = _tiny_vit()
    path = tmp_path / "vit.pth"
    torch.save(model.state_dict(), path, _use_new_zipfile_serialization=not legacy)
    assert probe_format(str(path)) == (checkpoints.TORCH_LEGACY if legacy else checkpoints.TORCH_ZIP)
    _assert_same(load_state_dict(str(path)), model.state_dict())


def test_safetensors_loads_even_without_the_extension(tmp_path):
    model = _tiny_vit()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    for name in ("vit.safetensors", "vit.bin"):
        path = tmp_path / name
        save_file(state, str(path))
        assert probe_format(str(path)) == checkpoints.SAFETENSORS
        _assert_same(load_state_dict(str(path)), state)


def test_wrappers_and_prefixes(tmp_path):
    model = _tiny_vit()
    state = model.state_dict()
    # open_clip / DataParallel training checkpoint: {'state_dict': {'module.x': ...}, 'epoch': ...}
    path = tmp_path / "train.pt"
    torch.save({"epoch": 20, "name": "run", "state_dict": {"module." + k: v for k, v in state.items()}},
               path)
    _assert_same(load_state_dict(str(path)), state)
    # DINO training format: weights under 'teacher' with 'module.backbone.' prefixes and a head
    teacher = {"module.backbone." + k: v for k, v in state.items()}
    teacher["module.head.mlp.0.weight"] = torch.ones(4, 32)
    student = {k: torch.zeros_like(v) for k, v in teacher.items()}
    path = tmp_path / "rs_dino.pth"
    torch.save({"student": student, "teacher": teacher, "epoch": 100}, path)
    loaded = load_state_dict(str(path), key="teacher", strip_prefixes=("module.", "backbone."))
    assert "head.mlp.0.weight" in loaded
    fresh = _tiny_vit()
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    load_into(fresh, loaded, "RS DINO ViT-B/8", ignore_unexpected=("head.",))
    _assert_same(fresh.state_dict(), state)
    # without a key the 'teacher' wrapper is found on its own (never the student's zeros)
    auto = load_state_dict(str(path), strip_prefixes=(p for p in ("module.", "backbone.")))
    assert torch.equal(auto["cls_token"], state["cls_token"])
    assert all(not k.startswith(("module.", "backbone.")) for k in auto)


def test_missing_key_and_no_tensors_are_explained(tmp_path):
    path = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "args": {"lr": 0.1}}, path)
    with pytest.raises(ModelError, match="no weights.*epoch, args"):
        load_state_dict(str(path))
    with pytest.raises(ModelError, match="no 'teacher' entry.*epoch"):
        load_state_dict(str(path), key="teacher")
    with pytest.raises(ModelError, match="not found"):
        load_state_dict(str(tmp_path / "absent.pth"))


# ----------------------------------------------------------------------------- damaged files

def _saved_bytes(legacy=False):
    buf = io.BytesIO()
    torch.save(_tiny_vit().state_dict(), buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_torch_file(tmp_path, legacy):
    data = _saved_bytes(legacy)
    path = tmp_path / "cut.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="corrupt or truncated.*download it again"):
        load_state_dict(str(path))


def test_truncated_safetensors(tmp_path):
    path = tmp_path / "cut.safetensors"
    save_file({k: v.contiguous() for k, v in _tiny_vit().state_dict().items()}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(ModelError, match="corrupt or truncated safetensors"):
        load_state_dict(str(path))


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"<!DOCTYPE html>\n<html><body>Please log in</body></html>", "web page"),
    (bytes(range(7, 250)) * 10, "corrupt or not a PyTorch weights file"),
])
def test_not_weights_at_all(tmp_path, content, message):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=message):
        load_state_dict(str(path))


def test_zip_around_the_checkpoint_is_named(tmp_path):
    path = tmp_path / "SkyCLIP.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("SkyCLIP/epoch_20.pt", _saved_bytes())
    with pytest.raises(ModelError, match="zip archive.*SkyCLIP/epoch_20.pt.*extract"):
        load_state_dict(str(path))


# ----------------------------------------------------------------------------- load_into

def test_load_into_wrong_architecture_lists_a_few_keys():
    state = _tiny_vit(embed_dim=32).state_dict()
    other = _tiny_vit(embed_dim=48)
    with pytest.raises(ModelError) as info:
        load_into(other, state, "DINO ViT-S/8")
    text = str(info.value)
    assert "DINO ViT-S/8" in text and "VisionTransformer" in text
    assert "another shape" in text and "cls_token: file [1, 1, 32] vs model [1, 1, 48]" in text
    assert len(text) < 600  # one short message, not the whole state dict


def test_load_into_missing_and_unexpected_keys():
    model = _tiny_vit()
    state = dict(model.state_dict())
    del state["norm.weight"]
    state["head.weight"] = torch.zeros(3, 32)
    with pytest.raises(ModelError, match=r"1 missing \(norm.weight\).*1 unexpected \(head.weight\)"):
        load_into(_tiny_vit(), state, "test weights")
    prefixed = {"visual." + k: v for k, v in model.state_dict().items()}
    with pytest.raises(ModelError, match="no key matches at all.*prefix"):
        load_into(_tiny_vit(), prefixed, "test weights")


def test_load_into_copies_values():
    source = _tiny_vit()
    target = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                               num_classes=0)
    assert not torch.equal(target.pos_embed, source.pos_embed)
    assert load_into(target, source.state_dict(), "test") is target
    _assert_same(target.state_dict(), source.state_dict())
