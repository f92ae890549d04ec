"""DINO backbones from local checkpoint files, grid alignment, and DR-Seg end to end (issue 3)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from support.tiny_models import TINY_DINO_DIMS
from drseg.core.drseg import DrSegRectifier, DrSegScorer, align_to_grid, load_dino_checkpoint, make_dino
from drseg.core.errors import ModelError
from drseg.core.models.registry import DINO_MODELS

ARCHS = sorted(DINO_MODELS)


@pytest.fixture(scope="module")
def tiny_models():
    torch.manual_seed(0)
    return {name: make_dino(name, **TINY_DINO_DIMS) for name in ARCHS}


def _images(h=100, w=90, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), generator=g, dtype=torch.uint8)


def _official(name, model):
    """The state dict as the authors release it: the backbone alone (plus DINOv2's mask_token)."""
    state = {k: v.clone() for k, v in model.model.state_dict().items()}
    if name.startswith("dinov2"):
        state["mask_token"] = torch.zeros(1, model.embed_dim)
    return state


def _teacher(name, model):
    """A DINO training checkpoint (the RS-pretrained ViT-B/8 layout): weights under 'teacher' with
    'backbone.' prefixes, a projection head to ignore, the student under 'module.'."""
    backbone = _official(name, model)
    head = {"head.mlp.0.weight": torch.randn(64, model.embed_dim), "head.mlp.0.bias": torch.zeros(64),
            "head.last_layer.weight_g": torch.ones(100, 1), "head.last_layer.weight_v": torch.randn(100, 64)}
    teacher = {**{"backbone." + k: v for k, v in backbone.items()}, **head}
    student = {"module." + k: torch.zeros_like(v) for k, v in teacher.items()}
    return {"teacher": teacher, "student": student, "epoch": 100}


@pytest.mark.parametrize("name", ARCHS)
def test_each_release_format_loads(name, tiny_models, tmp_path):
    source = tiny_models[name]
    images = _images()
    expected = source(images)
    p = DINO_MODELS[name].patch_size
    assert expected.shape == (2, 32, round(100 / p), round(90 / p))
    formats = {
        "plain.pth": _official(name, source),
        "teacher.pth": _teacher(name, source),
        "ddp.pth": {"module." + k: v for k, v in _official(name, source).items()},
        "wrapped.pth": {"state_dict": _official(name, source)},
    }
    for filename, payload in formats.items():
        path = tmp_path / filename
        torch.save(payload, path)
        loaded = load_dino_checkpoint(name, str(path), **TINY_DINO_DIMS)
        assert torch.allclose(loaded(images), expected, atol=1e-5), filename
    fresh = make_dino(name, **TINY_DINO_DIMS)  # other random weights: loading must have mattered
    assert not torch.allclose(fresh(images), expected, atol=1e-3)
    forced = load_dino_checkpoint(name, str(tmp_path / "teacher.pth"), key="teacher",
                                  **TINY_DINO_DIMS)
    assert torch.allclose(forced(images), expected, atol=1e-5)


def test_dinov2_chunked_blocks_and_other_training_size(tiny_models, tmp_path):
    source = tiny_models["dinov2_vits14"]
    state = _official("dinov2_vits14", source)
    chunked = {}
    for key, value in state.items():  # two chunks of one block each: blocks.<chunk>.<block>.
        if key.startswith("blocks."):
            i = int(key.split(".")[1])
            key = f"blocks.{i}.{i}." + key.split(".", 2)[2]
        chunked[key] = value
    torch.save(chunked, tmp_path / "chunked.pth")
    images = _images(70, 70)
    chunked = load_dino_checkpoint("dinov2_vits14", str(tmp_path / "chunked.pth"), **TINY_DINO_DIMS)
    assert torch.allclose(chunked(images),
                          source(images), atol=1e-5)
    # a ViT-B/8 trained at 256 px (32x32 positions) is resampled to the 28x28 definition
    vit8 = _official("dino_vitb8", tiny_models["dino_vitb8"])
    vit8["pos_embed"] = torch.randn(1, 32 * 32 + 1, 32)
    torch.save({"teacher": {"backbone." + k: v for k, v in vit8.items()}}, tmp_path / "rs256.pth")
    features = load_dino_checkpoint("dino_vitb8", str(tmp_path / "rs256.pth"), **TINY_DINO_DIMS)(_images(64, 64))
    assert features.shape == (2, 32, 8, 8) and bool(torch.isfinite(features).all())


def test_wrong_architecture_is_refused_clearly(tiny_models, tmp_path):
    torch.save(_official("dinov2_vits14", tiny_models["dinov2_vits14"]), tmp_path / "v2.pth")
    with pytest.raises(ModelError, match=r"does not match DINO model 'dino_vitb8'.*14px patches"):
        load_dino_checkpoint("dino_vitb8", str(tmp_path / "v2.pth"), **TINY_DINO_DIMS)
    torch.save(_official("dino_vits8", tiny_models["dino_vits8"]), tmp_path / "s8.pth")
    with pytest.raises(ModelError, match="dinov2_vitb14"):
        load_dino_checkpoint("dinov2_vitb14", str(tmp_path / "s8.pth"), **TINY_DINO_DIMS)
    with pytest.raises(ModelError, match="expected"):  # right family, wrong width
        load_dino_checkpoint("dino_vits8", str(tmp_path / "s8.pth"))
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3)}, tmp_path / "cnn.pth")
    with pytest.raises(ModelError, match="not a ViT"):
        load_dino_checkpoint("dino_vits8", str(tmp_path / "cnn.pth"), **TINY_DINO_DIMS)
    regs = _official("dinov2_vits14", tiny_models["dinov2_vits14"])
    regs["register_tokens"] = torch.zeros(1, 4, 32)
    torch.save(regs, tmp_path / "reg.pth")
    with pytest.raises(ModelError, match="registers"):
        load_dino_checkpoint("dinov2_vits14", str(tmp_path / "reg.pth"), **TINY_DINO_DIMS)
    with pytest.raises(ModelError, match="Unknown DINO model"):
        load_dino_checkpoint("dino_vitl16", str(tmp_path / "s8.pth"))
    with pytest.raises(ModelError, match="not found"):
        load_dino_checkpoint("dino_vits8", str(tmp_path / "missing.pth"))


def test_keys_feature_and_numpy_input(tiny_models):
    torch.manual_seed(3)
    model = make_dino("dino_vits8", feature="keys", **TINY_DINO_DIMS)
    images = _images(64, 48)
    out = model(images.numpy())
    assert out.shape == (2, 32, 8, 6)
    captured = {}  # the keys the last block's attention really uses, taken from a full forward
    hook = model.model.blocks[-1].attn.qkv.register_forward_hook(
        lambda _m, _i, o: captured.setdefault("qkv", o))
    model.feature = "tokens"
    tokens = model(images)
    hook.remove()
    keys = captured["qkv"][:, 1:, 32:64].permute(0, 2, 1).reshape(2, 32, 8, 6)
    assert torch.allclose(out, keys, atol=1e-5)
    assert not torch.allclose(out, tokens)


def test_align_to_grid():
    fine = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(2, 3, 1, 1)
    coarse = align_to_grid(fine, (2, 2))  # DINO /8 onto CLIP /16: area averaging
    assert torch.equal(coarse[0, 0], torch.tensor([[2.5, 4.5], [10.5, 12.5]]))
    up = align_to_grid(coarse, (4, 4))  # CLIP onto DINO: bilinear
    assert up.shape == (2, 3, 4, 4)
    assert torch.equal(up, F.interpolate(coarse, size=(4, 4), mode="bilinear", align_corners=False))
    const = torch.full((5, 16, 16), 3.0)  # DINOv2 /14 grid 16x16 onto CLIP /16 grid 14x14
    assert torch.allclose(align_to_grid(const, (14, 14)), torch.full((5, 14, 14), 3.0))
    assert align_to_grid(fine, (4, 4)) is fine or torch.equal(align_to_grid(fine, (4, 4)), fine)


def test_drseg_scorer_end_to_end_with_tiny_clip_and_dino(tiny_models):
    """DR-Seg as a sliding-window scorer: tiny open_clip ViT + tiny DINO ViT-B/8, uint8 windows."""
    import open_clip

    from drseg.core.dense_clip import DenseClip

    torch.manual_seed(0)
    clip_model = open_clip.model.CLIP(
        embed_dim=32, vision_cfg=dict(layers=2, width=64, patch_size=16, image_size=64, head_width=32),
        text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
    clip = DenseClip(clip_model, open_clip.get_tokenizer("ViT-B-16"), torch.device("cpu"),
                     templates=["a satellite photo of {}."], batch_size=2)
    windows = np.random.default_rng(0).integers(0, 256, (3, 3, 96, 96), dtype=np.uint8)
    scorer = DrSegScorer(clip, tiny_models["dino_vitb8"], DrSegRectifier(spatial_prior=2, graph_k=4))
    scorer.set_queries(["building", "road", "tree"])
    logits = scorer.score_windows(windows)
    assert logits.shape == (3, 3, 6, 6) and logits.dtype == np.float32
    assert np.isfinite(logits).all()
    plain = DrSegScorer(clip, None, DrSegRectifier(rectify=False)).score_windows(windows)
    assert np.array_equal(plain, clip.score_windows(windows))  # switched off = plain dense CLIP
    assert not np.allclose(plain, logits)
