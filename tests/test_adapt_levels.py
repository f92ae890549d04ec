"""Adaptation levels on the tiny real CLIP: calibration never lowers training mIoU, each training
level's step reduces its loss, the adapter file round-trips safely and changes the scores, and a
class the adapter never saw still scores as without it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_CLIP_CONFIG

from drseg.core.adapt.adapter import Adapter, ClassPrompt, load_adapter, save_adapter
from drseg.core.adapt.apply import AdaptedScorer, adapted_text, apply_vision, evaluate_chips
from drseg.core.adapt.calibrate import calibrate
from drseg.core.adapt.features import mean_iou
from drseg.core.adapt.train import TrainConfig, Trainer
from drseg.core.dense_clip import DenseClip
from drseg.core.errors import InputError

NAMES = ["red", "blue"]


def tiny_clip(seed=0):
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CLIP_CONFIG)
    return DenseClip(model, open_clip.get_tokenizer("ViT-B-32"), torch.device("cpu"),
                     templates=["a photo of {}."])


def two_colour_chips(count=4, size=64):
    """Left half red, right half blue (or swapped), with an unlabelled stripe in the middle."""
    images = np.zeros((count, 3, size, size), np.uint8)
    labels = np.full((count, size, size), 255, np.uint8)
    for i in range(count):
        left, right = (0, 1) if i % 2 == 0 else (1, 0)
        colours = {0: (220, 30, 30), 1: (30, 30, 220)}
        images[i, :, :, : size // 2 - 4] = np.array(colours[left])[:, None, None]
        images[i, :, :, size // 2 + 4:] = np.array(colours[right])[:, None, None]
        labels[i, :, : size // 2 - 4] = left
        labels[i, :, size // 2 + 4:] = right
    return images, labels


def test_calibration_never_lowers_training_miou():
    clip = tiny_clip()
    images, labels = two_colour_chips()
    before = mean_iou(evaluate_chips(clip, None, images, labels, NAMES))
    fitted = calibrate(clip, images, labels, NAMES, synonyms={"red": ["crimson"]},
                       template_sets=("default", "plain"))
    adapter = Adapter("calibrate", "tiny", "random", NAMES, fitted["prompts"], fitted["bias_lambda"])
    after = mean_iou(evaluate_chips(clip, adapter, images, labels, NAMES))
    assert after == pytest.approx(fitted["train_miou"])
    assert after >= before
    assert fitted["prompts"]["red"].text in ("red", "crimson")


@pytest.mark.parametrize("level", ["prompt", "finetune"])
def test_training_step_reduces_the_loss(level):
    clip = tiny_clip()
    images, labels = two_colour_chips()
    prompts = {n: ClassPrompt(n) for n in NAMES}
    trainer = Trainer(clip, images, labels, NAMES, prompts, -0.3,
                      TrainConfig(level=level, lr=1e-2, backbone_multiplier=0.1))
    with torch.no_grad():
        first = float(trainer.loss(0)["total"])
    for _ in range(5):
        trainer.step(0)            # the same batch: the loss on it must go down
    with torch.no_grad():
        parts = trainer.loss(0)
    assert float(parts["total"]) < first
    if level == "finetune":
        assert "guidance" in parts and float(parts["guidance"]) > 0
        changed = [n for n, p in clip.model.visual.named_parameters()
                   if not torch.equal(p, trainer.frozen.model.visual.state_dict()[n])]
        assert changed and all("attn" in n for n in changed)


@pytest.mark.parametrize("context", [0, 4])
def test_adapter_round_trip_changes_scores_and_keeps_unseen_classes(tmp_path, context):
    clip = tiny_clip()
    images, labels = two_colour_chips()
    prompts = {n: ClassPrompt(n) for n in NAMES}
    trainer = Trainer(clip, images, labels, NAMES, prompts, -0.3,
                      TrainConfig(level="finetune", lr=1e-2, backbone_multiplier=0.1,
                                  context_tokens=context, decoder=bool(context)))
    for step in range(3):
        trainer.step(step)
    adapter = trainer.adapter("tiny.json", "random")
    adapter.metrics = {"after": {"mIoU": 50.0}}
    path = save_adapter(adapter, str(tmp_path / "a.safetensors"))
    loaded = load_adapter(path)
    assert loaded.classes == NAMES and loaded.level == "finetune"
    assert loaded.metrics == {"after": {"mIoU": 50.0}} and loaded.created
    assert torch.equal(loaded.text_offset, adapter.text_offset)
    assert set(loaded.vision_state) == set(adapter.vision_state)
    assert loaded.text_digest() == adapter.text_digest()
    if context:
        assert torch.equal(loaded.context, adapter.context) and loaded.context.shape[0] == context
        assert not torch.equal(loaded.context, loaded.context_init)     # it was trained
        assert set(loaded.decoder_state) == set(adapter.decoder_state)
        for name, value in loaded.decoder().state_dict().items():
            assert torch.equal(value, adapter.decoder_state[name]), name
    else:
        assert loaded.context is None and loaded.decoder() is None

    fresh = tiny_clip()                       # the same base weights (same seed)
    fresh.set_queries(["red", "grass"])
    plain = fresh.score_windows(images[:1])
    adapted_clip = tiny_clip()
    apply_vision(adapted_clip.model, loaded)
    scorer = AdaptedScorer(adapted_clip, adapted_clip, loaded)
    scorer.set_queries(["red", "grass"])
    adapted = scorer.score_windows(images[:1])
    # with the decoder the logits are on a grid 4x finer than the patches
    assert adapted.shape[-1] == plain.shape[-1] * (4 if context else 1)
    coarse = torch.nn.functional.avg_pool2d(torch.from_numpy(adapted), 4).numpy() if context else adapted
    assert not np.allclose(coarse[:, 0], plain[:, 0], atol=1e-4)   # the adapter changes 'red'
    text, bias = adapted_text(adapted_clip, loaded, ["grass"])
    assert float(bias[0]) == 0.0
    if not context:   # 'grass' was never seen: its text embedding is the one without the adapter
        assert torch.allclose(text[0], fresh.text_features[1])
    else:             # ... moved by what the learned context changes in the prompt 'X X X X grass.'
        from drseg.core.adapt.context import encode_with_context
        delta = (encode_with_context(fresh.model, fresh.tokenizer, ["grass"], loaded.context)
                 - encode_with_context(fresh.model, fresh.tokenizer, ["grass"], loaded.context_init))
        expected = torch.nn.functional.normalize(fresh.text_features[1] + delta[0], dim=-1)
        assert torch.allclose(text[0], expected, atol=1e-6)
        assert not torch.allclose(text[0], fresh.text_features[1], atol=1e-4)


def test_not_an_adapter_is_one_clear_error(tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(other))
    with pytest.raises(InputError, match="not a DR-Seg adapter"):
        load_adapter(str(other))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 40)
    with pytest.raises(InputError):
        load_adapter(str(junk))


def test_resumed_state_continues_identically():
    images, labels = two_colour_chips()
    prompts = {n: ClassPrompt(n) for n in NAMES}
    config = TrainConfig(level="finetune", lr=1e-2, backbone_multiplier=0.1)
    straight = Trainer(tiny_clip(), images, labels, NAMES, prompts, -0.3, config)
    for step in range(4):
        straight.step(step)
    first = Trainer(tiny_clip(), images, labels, NAMES, prompts, -0.3, config)
    for step in range(2):
        first.step(step)
    state = first.state()
    resumed = Trainer(tiny_clip(), images, labels, NAMES, prompts, -0.3, config)
    resumed.load_state(state, 2)
    for step in range(2, 4):
        resumed.step(step)
    for name in straight.named:
        assert torch.allclose(straight.named[name], resumed.named[name], atol=1e-6), name
