"""Levels 2 and 3: gradient training on the training chips, from the calibrated prompts.

prompt   — learned prompt context (CoOp-style, M token embeddings before the class name through
           the frozen text tower; shared by all classes, optionally one more per seen class;
           core/adapt/context.py), a learned offset per seen class added to its text embedding,
           and its bias; both encoders frozen.
finetune — soft-guided (SGSeg): additionally the vision tower's attention weights (qkv and
           output projections) at a small learning-rate multiplier of the base rate, with a frozen
           copy of the model guiding the fine-tuned one: its tokens after every block but the last
           and its dense features are kept close (MSE or cosine, `guidance_weight` each); and the
           light cost-map upsampling decoder (core/adapt/decoder.py) at the base rate.
           `direct=True` (for the collapse benchmark) trains every vision weight at the base rate
           without guidance: plain fine-tuning.

The task loss is a per-class binary cross-entropy on the dense logits (centred over the classes,
which leaves the argmax unchanged) against the labels, unlabelled pixels left out.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..dense_clip import DenseClip
from ..evaluation.metrics import IGNORE_INDEX
from .adapter import Adapter, ClassPrompt
from .context import context_delta, initial_context, supports_context
from .defaults import (BACKBONE_MULTIPLIER, CONTEXT_GUIDANCE, CONTEXT_MULTIPLIER, DEFAULT_BATCH,
                       DEFAULT_CONTEXT_TOKENS, DEFAULT_LR, DEFAULT_STEPS)
from .features import LABEL_GRID, class_logits, labels_at, prompt_embedding

WEIGHT_DECAY = 1e-4
GUIDANCE_WEIGHT = 0.1
ATTENTION_PARAMETERS = ("attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
                        "attn.out_proj.bias")


@dataclass
class TrainConfig:
    level: str = "finetune"
    steps: int = DEFAULT_STEPS
    batch_size: int = DEFAULT_BATCH
    lr: Optional[float] = None                 # None: DEFAULT_LR of the level
    backbone_multiplier: float = BACKBONE_MULTIPLIER
    weight_decay: float = WEIGHT_DECAY
    guidance_weight: float = GUIDANCE_WEIGHT
    guidance: str = "mse"                      # or "cosine"
    direct: bool = False                       # plain fine-tuning (benchmark ablation)
    seed: int = 0
    context_tokens: int = DEFAULT_CONTEXT_TOKENS  # learned prompt context (0: none)
    class_context: bool = False                # each seen class adds its own context
    context_multiplier: float = CONTEXT_MULTIPLIER  # the context's rate: this × the base rate
    context_guidance: float = CONTEXT_GUIDANCE   # weight of ‖what the context changes‖²
    text_offsets: bool = True                  # per-class text offsets
    decoder: bool = True                       # finetune: the cost-map upsampling decoder

    @property
    def base_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.level]


def augment(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
    """Random flips and quarter turns, the same for a chip and its labels."""
    turns, flip = int(rng.integers(4)), bool(rng.integers(2))
    images, labels = np.rot90(images, turns, axes=(-2, -1)), np.rot90(labels, turns, axes=(-2, -1))
    if flip:
        images, labels = images[..., ::-1], labels[..., ::-1]
    return np.ascontiguousarray(images), np.ascontiguousarray(labels)


def binary_loss(logits: torch.Tensor, target: torch.Tensor, scale: float) -> torch.Tensor:
    """Per-class BCE of class-centred scaled logits (N,K,s,s) against labels (N,s,s)."""
    valid = target != IGNORE_INDEX
    if not valid.any():
        return logits.sum() * 0.0
    centred = scale * (logits - logits.mean(dim=1, keepdim=True))
    one_hot = F.one_hot(target.clamp(max=logits.shape[1] - 1), logits.shape[1]).permute(0, 3, 1, 2)
    per_pixel = F.binary_cross_entropy_with_logits(centred, one_hot.float(), reduction="none").mean(dim=1)
    return per_pixel[valid].mean()


class Trainer:
    """One level's parameters, optimiser and loss; `step(i)` trains on batch i (batches are a
    function of the seed and i, so a resumed run sees the batches it would have seen)."""

    def __init__(self, clip: DenseClip, images: np.ndarray, labels: np.ndarray,
                 class_names: List[str], prompts: Dict[str, ClassPrompt], bias_lambda: float,
                 config: TrainConfig):
        self.clip, self.images, self.labels = clip, images, labels
        self.class_names, self.prompts, self.bias_lambda = list(class_names), prompts, bias_lambda
        self.config = config
        device = clip.device
        with torch.no_grad():
            self.base_text = torch.stack([prompt_embedding(clip, prompts[n].text, prompts[n].templates)
                                          for n in class_names])
        self.offset = torch.nn.Parameter(torch.zeros_like(self.base_text),
                                         requires_grad=config.text_offsets)
        self.bias = torch.nn.Parameter(torch.tensor([prompts[n].bias for n in class_names],
                                                    device=device, dtype=torch.float32))
        self.named: Dict[str, torch.nn.Parameter] = {"offset": self.offset, "bias": self.bias}
        text_params = [self.bias] + ([self.offset] if config.text_offsets else [])
        groups = [{"params": text_params, "lr": config.base_lr, "weight_decay": 0.0}]
        self.context = self.context_init = self.class_context = None
        if config.context_tokens and supports_context(clip.model):
            self.context_init = initial_context(clip.model, clip.tokenizer, config.context_tokens)
            self.context = torch.nn.Parameter(self.context_init.clone())
            self.named["context"] = self.context
            context_params = [self.context]
            if config.class_context:
                self.class_context = torch.nn.Parameter(
                    torch.zeros(len(class_names), *self.context_init.shape, device=device))
                self.named["class_context"] = self.class_context
                context_params.append(self.class_context)
            groups.append({"params": context_params,
                           "lr": config.base_lr * config.context_multiplier, "weight_decay": 0.0})
        self.frozen: Optional[DenseClip] = None
        self.decoder = None
        for p in clip.model.parameters():
            p.requires_grad_(False)
        if config.level == "finetune":
            vision = {n: p for n, p in clip.model.visual.named_parameters()
                      if config.direct or n.endswith(ATTENTION_PARAMETERS)}
            for name, p in vision.items():
                p.requires_grad_(True)
                self.named["vision." + name] = p
            rate = config.base_lr if config.direct else config.base_lr * config.backbone_multiplier
            groups.append({"params": list(vision.values()), "lr": rate,
                           "weight_decay": config.weight_decay})
            if not config.direct:
                frozen_model = copy.deepcopy(clip.model)
                for p in frozen_model.parameters():
                    p.requires_grad_(False)
                self.frozen = DenseClip(frozen_model, clip.tokenizer, device, clip.attention,
                                        bias_lambda, templates=clip.templates)
            if config.decoder:
                from .decoder import CostDecoder

                with torch.random.fork_rng(devices=[]):   # a seeded start, global RNG untouched
                    torch.manual_seed(config.seed)
                    self.decoder = CostDecoder(scale=clip.logit_scale).to(device)
                for name, p in self.decoder.named_parameters():
                    self.named["decoder." + name] = p
                groups.append({"params": list(self.decoder.parameters()), "lr": config.base_lr,
                               "weight_decay": config.weight_decay})
        self.optimizer = torch.optim.AdamW(groups)
        self.done = 0

    # -- one step ---------------------------------------------------------------------------
    def batch(self, step: int) -> Tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.config.seed, step])
        pick = rng.choice(len(self.images), size=min(self.config.batch_size, len(self.images)),
                          replace=False)
        return augment(self.images[pick], self.labels[pick], rng)

    def loss(self, step: int) -> Dict[str, torch.Tensor]:
        images, labels = self.batch(step)
        pixels = self.clip.normalise(images)
        target = labels_at(labels, LABEL_GRID).to(self.clip.device)
        text, delta = self._text_and_delta()
        if self.config.level == "finetune":
            self.clip.model.train(False)
            hidden: List[torch.Tensor] = []
            patches, cls = self.clip.forward_features(pixels, hidden=hidden)
        else:
            with torch.no_grad():
                patches, cls = self.clip.dense_features(pixels)
        logits = class_logits(F.normalize(patches, dim=1), F.normalize(cls, dim=-1), text,
                              self.bias_lambda, self.bias, decoder=self.decoder, pixels=pixels)
        parts = {"task": binary_loss(logits, target, self.clip.logit_scale)}
        if delta is not None and self.config.context_guidance:
            # the context may move embeddings only a little: it moves unseen classes' too
            parts["context"] = self.config.context_guidance * delta.pow(2).sum(dim=-1).mean()
        if self.frozen is not None:
            with torch.no_grad():
                frozen_hidden: List[torch.Tensor] = []
                frozen_patches, _ = self.frozen.forward_features(pixels, hidden=frozen_hidden)
            pairs = list(zip(hidden, frozen_hidden)) + [(patches, frozen_patches)]
            guidance = sum(self._distance(a, b) for a, b in pairs)
            parts["guidance"] = self.config.guidance_weight * guidance
        parts["total"] = sum(parts.values())
        return parts

    def text(self) -> torch.Tensor:
        """The seen classes' text embeddings (K, D) as the adapter will make them
        (core/adapt/apply.adapted_text), differentiable in the context and offsets."""
        return self._text_and_delta()[0]

    def _text_and_delta(self):
        text, delta = self.base_text + self.offset, None
        if self.context is not None:
            texts = [self.prompts[n].text for n in self.class_names]
            delta = context_delta(self.clip.model, self.clip.tokenizer, texts, self.context,
                                  self.context_init, self.class_context)
            text = text + delta
        return F.normalize(text, dim=-1), delta

    def _distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.config.guidance == "cosine":
            dim = 1 if a.dim() == 4 else -1
            return (1 - F.cosine_similarity(a, b, dim=dim)).mean()
        return F.mse_loss(a, b)

    def step(self, step: int) -> Dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        parts = self.loss(step)
        parts["total"].backward()
        self.optimizer.step()
        self.done = step + 1
        return {k: float(v.detach()) for k, v in parts.items()}

    # -- results and checkpoints --------------------------------------------------------------
    def adapter(self, base_model: str, base_weights: str, base_sha256: str = "") -> Adapter:
        bias = self.bias.detach().cpu()
        prompts = {n: ClassPrompt(self.prompts[n].text, self.prompts[n].templates,
                                  round(float(bias[i]), 5)) for i, n in enumerate(self.class_names)}
        vision = {k[len("vision."):]: v.detach().cpu().clone() for k, v in self.named.items()
                  if k.startswith("vision.")}
        def plain(t):
            return None if t is None else t.detach().cpu().clone()

        decoder = {} if self.decoder is None else {
            k: v.detach().cpu().clone() for k, v in self.decoder.state_dict().items()}
        return Adapter(self.config.level, base_model, base_weights, self.class_names, prompts,
                       self.bias_lambda, base_sha256, plain(self.offset), vision,
                       context=plain(self.context), context_init=plain(self.context_init),
                       class_context=plain(self.class_context), decoder_state=decoder,
                       decoder_config=self.decoder.config_json() if self.decoder is not None else "")

    def state(self) -> Dict[str, torch.Tensor]:
        """Trainable tensors and the optimiser's moments, by name (for safetensors)."""
        tensors = {"param." + k: v.detach().cpu().contiguous() for k, v in self.named.items()}
        for name, p in self.named.items():
            for key, value in self.optimizer.state.get(p, {}).items():
                if torch.is_tensor(value):
                    tensors[f"opt.{name}.{key}"] = value.detach().cpu().reshape(value.shape).contiguous()
        return tensors

    def load_state(self, tensors: Dict[str, torch.Tensor], done: int) -> None:
        with torch.no_grad():
            for name, p in self.named.items():
                p.copy_(tensors["param." + name].to(p))
                state = {key.split(".")[-1]: value.to(p.device) for key, value in tensors.items()
                         if key.startswith(f"opt.{name}.") and key.count(".") == name.count(".") + 2}
                if state:
                    self.optimizer.state[p] = state
        self.done = done
