"""A light cost-map upsampling decoder (level finetune).

The class logits at patch resolution (B,K,h,w) are upsampled ×2 twice; after each doubling a
small convolutional head, guided by the image pooled to that resolution, adds a correction. The
head's weights are shared by all classes (class-agnostic, as in CAT-Seg), so a class the adapter
never saw is refined the same way. Its last layer starts at zero, so an untrained decoder is
plain bilinear upsampling: the logits on a grid 4× finer than the patches, covering the same
(padded) window, which the engine resizes to pixels as it does patch logits.

Per class the head sees its logits relative to the mean and to the best of the classes (scaled
by the engine's logit scale, so convolutions see values of order one) and the image guidance.
"""
from __future__ import annotations

import json
from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

STAGES = 2                       # ×2 twice
GUIDE_CHANNELS = 8
HIDDEN_CHANNELS = 16


class CostDecoder(nn.Module):
    def __init__(self, guide_channels: int = GUIDE_CHANNELS, hidden_channels: int = HIDDEN_CHANNELS,
                 scale: float = 50.0, stages: int = STAGES):
        super().__init__()
        self.config = {"guide_channels": int(guide_channels),
                       "hidden_channels": int(hidden_channels), "scale": float(scale),
                       "stages": int(stages)}
        self.scale = float(scale)
        self.guides = nn.ModuleList(nn.Conv2d(3, guide_channels, 3, padding=1) for _ in range(stages))
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Conv2d(2 + guide_channels, hidden_channels, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(hidden_channels, 1, 3, padding=1))
            for _ in range(stages))
        for head in self.heads:          # the correction starts at zero: bilinear upsampling
            nn.init.zeros_(head[-1].weight)
            nn.init.zeros_(head[-1].bias)

    def forward(self, logits: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """logits (B,K,h,w) of a window whose normalised pixels (B,3,H,W) it covers ->
        (B,K,h·2^stages,w·2^stages)."""
        batch, classes = logits.shape[:2]
        x = logits.float()
        for guide, head in zip(self.guides, self.heads):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            size = x.shape[-2:]
            image = F.adaptive_avg_pool2d(pixels.float(), size)
            g = F.relu(guide(image))                                        # (B,G,H',W')
            relative = torch.stack([x - x.mean(dim=1, keepdim=True),
                                    x - x.max(dim=1, keepdim=True).values], dim=2)  # (B,K,2,H',W')
            features = torch.cat([self.scale * relative,
                                  g[:, None].expand(-1, classes, -1, -1, -1)], dim=2)
            correction = head(features.reshape(batch * classes, -1, *size))
            x = x + correction.reshape(batch, classes, *size) / self.scale
        return x

    def config_json(self) -> str:
        return json.dumps(self.config)

    @classmethod
    def from_state(cls, config: str, state: Dict[str, torch.Tensor]) -> "CostDecoder":
        decoder = cls(**json.loads(config))
        decoder.load_state_dict(state)
        return decoder.eval()
