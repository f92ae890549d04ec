"""What every adaptation level shares: prompt template sets, text embeddings of a class prompt,
dense class logits of chips at a label resolution, and per-class IoU on labelled chips."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..dense_clip import dense_logits, encode_prompts, imagenet_templates
from ..evaluation.metrics import IGNORE_INDEX, ConfusionMatrix

# Prompt wordings calibration chooses from per class ("default": the scorer's own templates, the
# engine's ImageNet set unless a scorer was built with others).
AERIAL_TEMPLATES = ("an aerial photo of {}.", "a satellite image of {}.",
                    "a remote sensing image of {}.", "an overhead view of {}.")
TEMPLATE_SETS = {"default": None, "aerial": AERIAL_TEMPLATES, "plain": ("{}",)}
LABEL_GRID = 56   # chips are scored at this resolution (labels by nearest, logits bilinear)


def templates_of(clip, key: str) -> List:
    if key not in TEMPLATE_SETS:
        raise KeyError(f"unknown template set '{key}'")
    if TEMPLATE_SETS[key] is None:
        return list(getattr(clip, "templates", None) or imagenet_templates())
    return list(TEMPLATE_SETS[key])


def prompt_embedding(clip, text: str, templates: str = "default") -> torch.Tensor:
    """The normalised text embedding (D,) of `text` in a template set, on the clip's device."""
    return encode_prompts(clip.model, clip.tokenizer, clip.device, [text],
                          templates_of(clip, templates))[0]


def labels_at(labels: np.ndarray, size: int = LABEL_GRID) -> torch.Tensor:
    """(N,S,S) labels -> (N,size,size) long tensor by nearest sampling."""
    tensor = torch.from_numpy(labels.astype(np.int64))[:, None].float()
    return F.interpolate(tensor, size=(size, size), mode="nearest")[:, 0].long()


def chip_features(clip, images: np.ndarray, batch_size: int = 8):
    """Frozen dense features of chips: (normalised patches (N,D,h,w), normalised cls (N,D))."""
    patches, tokens = [], []
    for start in range(0, len(images), batch_size):
        p, c = clip.dense_features(clip.normalise(images[start:start + batch_size]))
        patches.append(F.normalize(p, dim=1))
        tokens.append(F.normalize(c, dim=-1))
    return torch.cat(patches), torch.cat(tokens)


def class_logits(patches: torch.Tensor, cls: Optional[torch.Tensor], text: torch.Tensor,
                 bias_lambda: float, bias: Optional[torch.Tensor] = None,
                 size: int = LABEL_GRID, decoder=None, pixels: Optional[torch.Tensor] = None
                 ) -> torch.Tensor:
    """(N,K,size,size) cosine logits (+λ·cls term, + per-class bias), through the cost-map
    decoder when given (it needs the chips' normalised `pixels`), upsampled bilinearly."""
    logits = dense_logits(patches, cls, text, bias_lambda)
    if bias is not None:
        logits = logits + bias[None, :, None, None]
    if decoder is not None:
        logits = decoder(logits, pixels)
    return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)


@torch.no_grad()
def decoded_chip_logits(clip, images: np.ndarray, text: torch.Tensor, bias_lambda: float,
                        bias: Optional[torch.Tensor], decoder, batch_size: int = 8) -> torch.Tensor:
    """`class_logits` of chips through a cost-map decoder, batch by batch (it needs pixels)."""
    decoder = decoder.to(clip.device)
    out = []
    for start in range(0, len(images), batch_size):
        pixels = clip.normalise(images[start:start + batch_size])
        p, c = clip.dense_features(pixels)
        out.append(class_logits(F.normalize(p, dim=1), F.normalize(c, dim=-1), text, bias_lambda,
                                bias, decoder=decoder, pixels=pixels))
    return torch.cat(out)


def class_iou(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> np.ndarray:
    """Per-class IoU (NaN: class absent from labels and predictions) of the argmax over classes,
    on labelled pixels only."""
    confusion = ConfusionMatrix(num_classes, IGNORE_INDEX)
    confusion.update(labels.cpu().numpy(), logits.argmax(dim=1).cpu().numpy().astype(np.uint8))
    return confusion.iou()


def mean_iou(per_class: np.ndarray) -> float:
    values = per_class[~np.isnan(per_class)]
    return float(values.mean()) if values.size else 0.0


def iou_report(per_class: np.ndarray, names: Sequence[str]) -> Dict:
    """{"mIoU": %, "per_class": {name: % or None}}."""
    return {"mIoU": round(100 * mean_iou(per_class), 2),
            "per_class": {n: (None if np.isnan(v) else round(100 * float(v), 2))
                          for n, v in zip(names, per_class)}}
