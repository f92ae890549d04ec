"""Learned prompt context (CoOp-style), the cost-map upsampling decoder and the cache of adapted
text embeddings, on the tiny real CLIP."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_adapt_levels import NAMES, tiny_clip, two_colour_chips

from drseg.core.adapt.adapter import ClassPrompt, load_adapter, save_adapter
from drseg.core.adapt.apply import AdaptedScorer, apply_vision
from drseg.core.adapt.context import encode_with_context, initial_context
from drseg.core.adapt.decoder import CostDecoder
from drseg.core.adapt.train import TrainConfig, Trainer
from drseg.core.dense_clip import encode_prompts
from drseg.core.disk_cache import DiskCache


def test_the_initial_context_is_exactly_the_words_it_starts_from():
    """Oracle: 'X X X X red.' with the placeholders' embeddings replaced by those of 'a photo of
    a' is the prompt 'a photo of a red.' through the same text tower."""
    clip = tiny_clip()
    start = initial_context(clip.model, clip.tokenizer, 4)
    ours = encode_with_context(clip.model, clip.tokenizer, ["red", "blue sea"], start)
    reference = encode_prompts(clip.model, clip.tokenizer, clip.device, ["red", "blue sea"],
                               ["a photo of a {}."])
    assert torch.allclose(ours, reference, atol=1e-5)
    # a context per name: the same when each is the shared one
    each = encode_with_context(clip.model, clip.tokenizer, ["red", "blue sea"],
                               start[None].expand(2, -1, -1))
    assert torch.allclose(each, ours, atol=1e-6)


@pytest.mark.parametrize("class_context", [False, True])
def test_a_context_step_lowers_the_loss_with_the_encoders_frozen(class_context):
    clip = tiny_clip()
    weights = {k: v.clone() for k, v in clip.model.state_dict().items()}
    images, labels = two_colour_chips()
    prompts = {n: ClassPrompt(n) for n in NAMES}
    trainer = Trainer(clip, images, labels, NAMES, prompts, -0.3,
                      TrainConfig(level="prompt", lr=1e-3, text_offsets=False,
                                  class_context=class_context, context_multiplier=1.0))
    with torch.no_grad():
        first = trainer.loss(0)
    assert float(first["context"]) == 0.0          # the untrained context changes nothing
    trainer.step(0)
    with torch.no_grad():
        trained = float(trainer.loss(0)["task"])
        # the same biases with the context put back where it started: the context's own share
        trainer.context.copy_(trainer.context_init)
        if class_context:
            assert torch.count_nonzero(trainer.class_context) > 0
            trainer.class_context.zero_()
        untrained = float(trainer.loss(0)["task"])
    assert trained < untrained and trained < float(first["task"])
    assert torch.count_nonzero(trainer.offset) == 0
    for name, value in clip.model.state_dict().items():   # both towers untouched
        assert torch.equal(value, weights[name]), name


def test_the_context_guidance_keeps_the_context_close():
    images, labels = two_colour_chips()
    prompts = {n: ClassPrompt(n) for n in NAMES}
    moved = {}
    for guidance in (0.0, 10.0):
        trainer = Trainer(tiny_clip(), images, labels, NAMES, prompts, -0.3,
                          TrainConfig(level="prompt", lr=1e-2, context_multiplier=1.0,
                                      context_guidance=guidance))
        for step in range(4):
            trainer.step(step)
        with torch.no_grad():
            moved[guidance] = float(trainer._text_and_delta()[1].norm(dim=-1).mean())
    assert 0 < moved[10.0] < moved[0.0]


def test_unseen_classes_are_encoded_with_the_learned_context(tmp_path):
    clip = tiny_clip()
    images, labels = two_colour_chips()
    prompts = {n: ClassPrompt(n) for n in NAMES}
    trainer = Trainer(clip, images, labels, NAMES, prompts, -0.3,
                      TrainConfig(level="prompt", lr=5e-2, class_context=True))
    for step in range(3):
        trainer.step(step)
    loaded = load_adapter(save_adapter(trainer.adapter("tiny", "random"),
                                       str(tmp_path / "p.safetensors")))
    assert loaded.class_context.shape == (2, 4, 32)
    adapted = tiny_clip()
    scorer = AdaptedScorer(adapted, adapted, loaded)
    scorer.set_queries(["red", "blue", "grass"])
    text = scorer.clip.text_features
    # the seen classes' embeddings are the ones training scored with
    assert torch.allclose(text[:2], trainer.text().detach(), atol=1e-5)
    # 'grass' (unseen) gets the shared context only
    base = tiny_clip()
    base.set_queries(["grass"])
    delta = (encode_with_context(base.model, base.tokenizer, ["grass"], loaded.context)
             - encode_with_context(base.model, base.tokenizer, ["grass"], loaded.context_init))
    assert torch.allclose(text[2], F.normalize(base.text_features[0] + delta[0], dim=-1), atol=1e-6)
    assert np.isfinite(scorer.score_windows(images[:1])).all()


def test_an_untrained_decoder_is_bilinear_upsampling_on_the_patch_grid():
    """Oracle: a cost map linear in the patch index is, after the decoder with its zero-started
    correction, the same line sampled at the centres of the 4x finer cells (away from the border,
    where bilinear upsampling clamps)."""
    decoder = CostDecoder()
    h, w = 6, 7
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float32),
                                torch.arange(w, dtype=torch.float32), indexing="ij")
    cost = torch.stack([0.02 * cols, -0.03 * rows + 0.01 * cols])[None]   # (1,2,h,w)
    pixels = torch.randn(1, 3, h * 16, w * 16)
    out = decoder(cost, pixels)
    assert out.shape == (1, 2, 4 * h, 4 * w)
    fine_r = (torch.arange(4 * h, dtype=torch.float32) + 0.5) / 4 - 0.5   # in patch units
    fine_c = (torch.arange(4 * w, dtype=torch.float32) + 0.5) / 4 - 0.5
    fr, fc = torch.meshgrid(fine_r, fine_c, indexing="ij")
    expected = torch.stack([0.02 * fc, -0.03 * fr + 0.01 * fc])[None]
    inner = (slice(None), slice(None), slice(3, 4 * h - 3), slice(3, 4 * w - 3))
    assert torch.allclose(out[inner], expected[inner], atol=1e-6)
    # and any cost map: exactly two bilinear doublings
    noise = torch.randn(2, 3, h, w)
    twice = F.interpolate(F.interpolate(noise, scale_factor=2, mode="bilinear", align_corners=False),
                          scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.allclose(decoder(noise, torch.randn(2, 3, h * 16, w * 16)), twice, atol=1e-6)


def test_the_decoder_trains_with_the_finetune_level():
    clip = tiny_clip()
    images, labels = two_colour_chips()
    prompts = {n: ClassPrompt(n) for n in NAMES}
    trainer = Trainer(clip, images, labels, NAMES, prompts, -0.3,
                      TrainConfig(level="finetune", lr=1e-2, backbone_multiplier=0.0,
                                  context_tokens=0, text_offsets=False))
    last = trainer.decoder.heads[-1][-1].weight
    assert torch.count_nonzero(last) == 0
    with torch.no_grad():
        first = float(trainer.loss(0)["task"])
    for _ in range(5):
        trainer.step(0)
    with torch.no_grad():
        assert float(trainer.loss(0)["task"]) < first
    assert torch.count_nonzero(last) > 0        # the correction learned something


def test_adapted_text_embeddings_are_cached_on_disk_by_adapter(tmp_path):
    clip = tiny_clip()
    images, labels = two_colour_chips()
    trainer = Trainer(clip, images, labels, NAMES, {n: ClassPrompt(n) for n in NAMES}, -0.3,
                      TrainConfig(level="prompt", lr=5e-2))
    trainer.step(0)
    adapter = load_adapter(save_adapter(trainer.adapter("tiny", "random"),
                                        str(tmp_path / "p.safetensors")))
    cache = DiskCache(str(tmp_path / "embeddings"))

    def run(model_clip, which):
        calls = []
        hook = model_clip.model.transformer.register_forward_hook(lambda *a: calls.append(1))
        model_clip.disk_cache = cache
        scorer = AdaptedScorer(model_clip, model_clip, which)
        scorer.set_queries(["red", "grass", "blue"])
        hook.remove()
        return len(calls), model_clip.text_features.clone()

    first_calls, first = run(tiny_clip(), adapter)
    assert first_calls > 0
    second_calls, second = run(tiny_clip(), adapter)        # a new process: the disk cache
    assert second_calls == 0 and torch.equal(first, second)
    same = tiny_clip()
    run(same, adapter)
    assert run(same, adapter)[0] == 0                          # the same model: memory
    # another adapter (another context) is another key
    other = load_adapter(str(tmp_path / "p.safetensors"))
    other.context = other.context + 0.05 * torch.randn(other.context.shape,
                                                       generator=torch.Generator().manual_seed(1))
    third_calls, third = run(tiny_clip(), other)
    assert third_calls > 0 and not torch.allclose(third, first)
