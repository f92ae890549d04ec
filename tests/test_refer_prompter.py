"""The cascaded prompter and LoRA adapters on tiny real architectures (open_clip, segment_anything)."""
import numpy as np
import pytest
import torch

from support.tiny_models import TINY_CLIP_CONFIG
from drseg.core.refer.lora import (LoraDelta, apply_lora, load_lora_state, lora_state, merge,
                                   unmerge)
from drseg.core.refer.prompter import CascadedPrompter, PromptedSegmenter, PrompterConfig
from drseg.core.refer.synthetic import tiny_clip, tiny_sam


@pytest.fixture
def models():
    """Fresh models per test: PromptedSegmenter adapts the models it is given in place."""
    clip, tokenizer = tiny_clip(TINY_CLIP_CONFIG)
    return clip, tokenizer, tiny_sam(128)


def test_prompter_shapes_follow_the_models(models):
    clip, tokenizer, sam = models
    model = PromptedSegmenter(clip, tokenizer, sam, PrompterConfig(text_queries=3, prompt_tokens=9,
                                                                   width=64, heads=4))
    images = torch.rand(2, 3, 80, 100) * 255
    patches, embeddings = model.encode_images(images)
    assert patches.shape == (2, 32, 14, 14)            # 224 / 16, CLIP's joint width 32
    assert embeddings.shape == (2, 256, 8, 8)          # SAM 128 / 16
    text = model.encode_text(["the red roof", "the pond"])
    sparse, dense, activation = model.prompter(patches, text)
    assert sparse.shape == (2, 9, 256) and dense.shape == (2, 256, 8, 8)
    assert activation.shape == (2, 1, 14, 14) and float(activation.detach().abs().max()) <= 1.0 + 1e-5
    logits = model(images, ["the red roof", "the pond"])
    assert logits.shape == (2, 1, 80, 100)
    # the dense prompt starts as SAM's own "no mask" prompt (last conv zero)
    assert float(dense.detach().abs().max()) == 0.0


def test_text_queries_are_k_projections_and_orthogonality_penalises_equal_ones():
    prompter = CascadedPrompter(32, 32, 256, (8, 8), PrompterConfig(text_queries=3, width=16,
                                                                    heads=2))
    assert prompter.text_proj.weight.shape == (3 * 16, 32)
    with torch.no_grad():
        w = prompter.text_proj.weight.reshape(3, 16, 32)
        w[1] = w[0]
        w[2] = w[0]
    assert float(prompter.orthogonality().detach()) == pytest.approx(1.0, abs=1e-5)
    with torch.no_grad():
        prompter.text_proj.weight.zero_()
        for k in range(3):   # disjoint supports: orthogonal
            prompter.text_proj.weight[k * 16, k] = 1.0
    assert float(prompter.orthogonality().detach()) == pytest.approx(0.0, abs=1e-6)


def test_prompts_depend_on_the_text_and_on_position(models):
    clip, tokenizer, sam = models
    torch.manual_seed(0)
    model = PromptedSegmenter(clip, tokenizer, sam, PrompterConfig(width=32, heads=2))
    torch.nn.init.normal_(model.prompter.dense_out.weight)
    patches = torch.randn(1, 32, 6, 6)
    text = model.encode_text(["a", "the blue circle"])
    s1, d1, _ = model.prompter(patches.expand(2, -1, -1, -1), text)
    assert not torch.allclose(s1[0], s1[1]) and not torch.allclose(d1[0], d1[1])
    # identical features in every cell: only the position code tells cells apart
    flat = torch.ones(1, 32, 6, 6)
    _, dense, _ = model.prompter(flat, text[:1])
    assert float(dense[0, :, :, 0].sub(dense[0, :, :, -1]).abs().max().detach()) > 0


def test_lora_starts_as_identity_and_merge_unmerge_restore(models):
    clip, tokenizer, sam = models
    images = torch.rand(1, 3, 128, 128) * 255
    x = (images - sam.pixel_mean) / sam.pixel_std
    with torch.no_grad():
        before = sam.image_encoder(x).clone()
    import copy

    encoder = copy.deepcopy(sam.image_encoder)
    weights = {n: p.detach().clone() for n, p in encoder.named_parameters()}
    adapters = apply_lora(encoder, rank=4, alpha=8)
    names = sorted(adapters)
    assert any(n.endswith("attn.qkv.weight") for n in names)
    assert any(n.endswith("attn.proj.weight") for n in names)
    assert all(isinstance(d, LoraDelta) and float(d.lora_B.detach().abs().max()) == 0 for d in adapters.values())
    with torch.no_grad():
        assert torch.allclose(encoder(x), before, atol=1e-6)    # B = 0: the base model
        for d in adapters.values():
            d.lora_B.normal_()
        adapted = encoder(x).clone()
        assert not torch.allclose(adapted, before, atol=1e-4)
        qkv_name = next(n for n in names if n.endswith("attn.qkv.weight"))
        module = encoder.get_submodule(qkv_name.rsplit(".", 1)[0])
        delta = adapters[qkv_name]
        base = weights[qkv_name]
        expected = base + delta.lora_B @ delta.lora_A * (8 / 4)
        merge(encoder, adapters)
        assert torch.allclose(module.parametrizations.weight.original, expected, atol=1e-6)
        assert torch.allclose(module.weight, expected, atol=1e-6)
        assert torch.allclose(encoder(x), adapted, atol=1e-4)
        unmerge(encoder, adapters)
        assert torch.allclose(module.parametrizations.weight.original, base, atol=1e-6)
        assert torch.allclose(encoder(x), adapted, atol=1e-4)   # unmerged: the delta applies again
        # the state round-trips into fresh adapters
        state = lora_state(adapters, "sam.")
        other = copy.deepcopy(sam.image_encoder)
        other_adapters = apply_lora(other, rank=4, alpha=8)
        load_lora_state(other_adapters, state, "sam.")
        assert torch.allclose(other(x), adapted, atol=1e-4)
        with pytest.raises(KeyError):
            load_lora_state(other_adapters, {k: v for k, v in list(state.items())[1:]}, "sam.")


def test_lora_on_open_clip_fused_attention(models):
    clip, tokenizer, _ = models
    import copy

    visual = copy.deepcopy(clip.visual)
    image = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        before = visual(image).clone()
    adapters = apply_lora(visual, rank=2, alpha=2)
    assert any(n.endswith("attn.in_proj_weight") for n in adapters)
    assert any(n.endswith("attn.out_proj.weight") for n in adapters)
    assert not any("mlp" in n for n in adapters)
    assert all(not p.requires_grad for n, p in visual.named_parameters() if "lora_" not in n)
    with torch.no_grad():
        assert torch.allclose(visual(image), before, atol=1e-6)
        for d in adapters.values():
            d.lora_B.fill_(0.05)
        changed = visual(image).clone()
        merge(visual, adapters)
        merged = visual(image).clone()
        unmerge(visual, adapters)
        for d in adapters.values():
            d.lora_B.zero_()
        restored = visual(image)
    assert not torch.allclose(changed, before, atol=1e-4)
    assert torch.allclose(merged, changed, atol=1e-5)
    assert torch.allclose(restored, before, atol=1e-5)


def test_gradients_reach_only_the_prompter_and_adapters(models):
    clip, tokenizer, sam = models
    import copy

    model = PromptedSegmenter(copy.deepcopy(clip), tokenizer, copy.deepcopy(sam),
                              PrompterConfig(width=32, heads=2, lora_rank=2))
    logits = model(torch.rand(1, 3, 64, 64) * 255, ["the large red square"])
    logits.mean().backward()
    trainable = {id(p) for p in model.trainable_parameters()}
    for name, p in model.named_parameters():
        if id(p) in trainable:
            continue
        assert p.grad is None, name
    adapters = model.adapters
    assert set(adapters) == {"clip", "sam", "decoder"}
    # B starts at zero, so A gets no gradient yet but B does
    assert any(float(d.lora_B.grad.abs().sum()) > 0 for d in adapters["sam"].values())
    assert any(float(d.lora_B.grad.abs().sum()) > 0 for d in adapters["clip"].values())
    assert model.prompter.tokens.grad is not None
