"""SAM 3's point prompts: the tracker's neck, prompt encoder and mask decoder (SAM 2's interactive
head) on the image backbone the detector already ran, for refining a result with clicks.

    head = load_sam3_clicks("sam3", "/data/sam3/model.safetensors")   # None: no tracker in it
    features = head.features(backbone_tokens)           # once per area (the detector's ViT output)
    logits, score = head.decode(features, points, labels, prior)      # per click, decoder only

The released checkpoint (facebook/sam3) is the video model: beside the detector (`detector_model.`)
it holds the tracker (`tracker_model.`: prompt encoder, mask decoder, memory modules) and the
tracker's own FPN neck (`tracker_neck.`), which reads the detector's ViT tokens. Only the parts a
single image needs are built here, under the checkpoint's own key names, so the same safetensors
file loads into them (the memory modules are skipped). The configuration is derived from the
detector's: the released one gives transformers' default tracker configuration, a tiny test
architecture a tiny head.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import ModelError
from .registry import DEFAULT_SAM3_MODEL, RANDOM_WEIGHTS

TRACKER_PREFIX = "tracker_model."
NECK_PREFIX = "tracker_neck."
# The tracker's parts a single image uses; the rest of `tracker_model.` is video memory.
_IMAGE_PARTS = ("shared_image_embedding.", "prompt_encoder.", "mask_decoder.",
                "no_memory_embedding")
NOT_A_POINT = -10   # transformers' label for padding points (ignored by the prompt encoder)


def click_configs(detector_config) -> Tuple[object, object]:
    """(prompt encoder config, mask decoder config) matching a `Sam3Config`'s vision sizes."""
    from transformers.models.sam3_tracker_video.configuration_sam3_tracker_video import (
        Sam3TrackerVideoMaskDecoderConfig, Sam3TrackerVideoPromptEncoderConfig)

    vision = detector_config.vision_config
    backbone = vision.backbone_config
    width = int(vision.fpn_hidden_size)
    prompt = Sam3TrackerVideoPromptEncoderConfig(hidden_size=width,
                                                 image_size=int(backbone.image_size),
                                                 patch_size=int(backbone.patch_size))
    decoder = Sam3TrackerVideoMaskDecoderConfig(hidden_size=width)
    return prompt, decoder


class _TrackerParts(nn.Module):
    """The tracker's single-image modules, named as in the checkpoint's `tracker_model.`."""

    def __init__(self, prompt_config, decoder_config, attention: str):
        from transformers.models.sam3_tracker_video.modeling_sam3_tracker_video import (
            Sam3TrackerVideoMaskDecoder, Sam3TrackerVideoPositionalEmbedding,
            Sam3TrackerVideoPromptEncoder)

        super().__init__()
        self.shared_image_embedding = Sam3TrackerVideoPositionalEmbedding(prompt_config)
        self.prompt_encoder = Sam3TrackerVideoPromptEncoder(prompt_config)
        decoder_config._attn_implementation = attention
        self.mask_decoder = Sam3TrackerVideoMaskDecoder(decoder_config)
        self.no_memory_embedding = nn.Parameter(torch.zeros(1, 1, prompt_config.hidden_size))


class Sam3ClickHead(nn.Module):
    """Tracker neck + prompt encoder + mask decoder of SAM 3 (state-dict keys as in the checkpoint).

    Coordinates are pixels of SAM 3's square input (`image_size`); masks come out at
    `mask_size` (4× the patch grid: 288 px for the released model)."""

    def __init__(self, detector_config):
        from transformers.models.sam3.modeling_sam3 import Sam3VisionNeck

        super().__init__()
        vision = detector_config.vision_config
        prompt, decoder = click_configs(detector_config)
        attention = getattr(detector_config, "_attn_implementation", None) or "eager"
        self.tracker_neck = Sam3VisionNeck(vision)
        self.tracker_model = _TrackerParts(prompt, decoder, attention)
        self.image_size = int(prompt.image_size)
        self.grid = self.image_size // int(prompt.patch_size)
        self.mask_size = 4 * self.grid

    @property
    def device(self) -> torch.device:
        return self.tracker_model.no_memory_embedding.device

    @property
    def dtype(self) -> torch.dtype:
        return self.tracker_model.no_memory_embedding.dtype

    @torch.no_grad()
    def features(self, tokens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The decoder's inputs of one image from the detector's backbone tokens (1, grid², C):
        (level 0 and 1 projected as the decoder wants them, the lowest level plus the tracker's
        'no memory' embedding), each (1, C', h, w)."""
        tokens = tokens.to(device=self.device, dtype=self.dtype)
        spatial = tokens.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        levels, _ = self.tracker_neck(spatial)
        decoder = self.tracker_model.mask_decoder
        low = levels[2] + self.tracker_model.no_memory_embedding.reshape(1, -1, 1, 1)
        return decoder.conv_s0(levels[0]), decoder.conv_s1(levels[1]), low

    def _image_positions(self) -> torch.Tensor:
        embedding = self.tracker_model.shared_image_embedding
        grid = torch.ones((self.grid, self.grid), device=self.device, dtype=self.dtype)
        y = (grid.cumsum(dim=0) - 0.5) / self.grid
        x = (grid.cumsum(dim=1) - 0.5) / self.grid
        return embedding(torch.stack([x, y], dim=-1)).permute(2, 0, 1).unsqueeze(0)

    @torch.no_grad()
    def decode(self, features: Sequence[torch.Tensor], points, labels, prior=None
               ) -> Tuple[torch.Tensor, float]:
        """One mask for clicks on one image -> (logits (mask_size, mask_size), predicted IoU).

        points (N, 2) x, y in input pixels; labels (N,) 1 positive, 0 negative; prior: mask
        logits (mask_size, mask_size) of the result being refined, or None."""
        s0, s1, low = features
        parts = self.tracker_model
        points = torch.as_tensor(points, dtype=self.dtype, device=self.device).reshape(1, 1, -1, 2)
        labels = torch.as_tensor(labels, dtype=torch.int64, device=self.device).reshape(1, 1, -1)
        masks = None
        if prior is not None:
            masks = torch.as_tensor(prior, dtype=self.dtype, device=self.device).reshape(
                1, 1, self.mask_size, self.mask_size)
        sparse, dense = parts.prompt_encoder(input_points=points, input_labels=labels,
                                             input_boxes=None, input_masks=masks)
        logits, iou, _, _ = parts.mask_decoder(
            image_embeddings=low, image_positional_embeddings=self._image_positions(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
            multimask_output=False, high_resolution_features=[s0, s1])
        return logits[0, 0, 0].float(), float(iou.reshape(-1)[0])


def build_sam3_clicks(model_name: str = DEFAULT_SAM3_MODEL) -> Sam3ClickHead:
    """An untrained click head for the SAM 3 architecture `model_name` (eval mode, CPU)."""
    from .sam3 import sam3_config

    head = Sam3ClickHead(sam3_config(model_name)).eval()
    parts = head.tracker_model   # one Fourier basis for clicks and pixels, as in the checkpoint
    parts.prompt_encoder.shared_embedding.positional_embedding.copy_(
        parts.shared_image_embedding.positional_embedding)
    return head


def read_click_weights(path: str) -> Optional[dict]:
    """The click head's tensors of a SAM 3 safetensors file (checkpoint key names), or None when
    the file has no tracker (a detector-only export). Only those tensors are read."""
    from safetensors import SafetensorError, safe_open

    wanted = tuple(TRACKER_PREFIX + part for part in _IMAGE_PARTS) + (NECK_PREFIX,)
    try:
        with safe_open(path, framework="pt", device="cpu") as handle:
            keys = [k for k in handle.keys() if k.startswith(wanted)]
            if not any(k.startswith(TRACKER_PREFIX) for k in keys):
                return None
            return {k: handle.get_tensor(k) for k in keys}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"'{path}' is not a readable safetensors file "
                         f"({str(exc).splitlines()[0]})") from None


def load_sam3_clicks(model_name: str, path: str, device="cpu") -> Optional[Sam3ClickHead]:
    """The click head of SAM 3 architecture `model_name` with the weights of `path` (a resolved
    safetensors file, or 'random'), on `device` in SAM 3's dtype; None when the file holds no
    tracker weights (then clicks cannot be decoded by SAM 3)."""
    from ..device import as_device
    from .checkpoints import load_into
    from .sam3 import sam3_dtype

    torch_device = as_device(device)
    state = None
    if path != RANDOM_WEIGHTS:
        state = read_click_weights(path)
        if state is None:
            return None
    head = build_sam3_clicks(model_name)
    if state is not None:
        load_into(head, state, f"SAM 3 tracker ('{os.path.basename(path)}')")
    return head.to(device=torch_device, dtype=sam3_dtype(torch_device)).eval()
