"""The model families DR-Seg knows, their names and defaults: the one place each is written.

Front ends (CLI, Processing, the dock) build their choices and defaults from here, and the engine
its requests, so adding a model family or architecture is one edit. Nothing here imports torch:
QGIS builds its Processing parameters and the dock at start-up, perhaps without torch installed.

- CLIP: open_clip architecture names and pretrained tags (weights may also be a catalog name or a
  file, see `core/models/clip.py`).
- DINO: our names for the DINO/DINOv2 backbones, each with its timm definition (sizes, patch) and
  the catalog checkpoint it uses by default.
- SAM: segment_anything registry keys and the catalog checkpoint of each.
- Devices: the choices front ends offer (`core/device.py` resolves them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

FAMILIES = ("clip", "dino", "sam")

# Untrained weights: tests and speed measurements only.
RANDOM_WEIGHTS = "random"

# ----------------------------------------------------------------------------- CLIP

DEFAULT_CLIP_MODEL = "ViT-B-16"
DEFAULT_CLIP_WEIGHTS = "openai"   # an open_clip pretrained tag; the catalog mirrors it
CLIP_MODEL_CHOICES = (DEFAULT_CLIP_MODEL, "ViT-B-32", "ViT-L-14")
# open_clip's suffix for an architecture built with QuickGELU (what OpenAI's weights need).
QUICKGELU_SUFFIX = "-quickgelu"


# ----------------------------------------------------------------------------- DINO

@dataclass(frozen=True)
class DinoArch:
    """A DINO backbone: its timm definition and the catalog checkpoint it uses by default."""

    timm_name: str
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    layer_scale: bool
    img_size: int
    catalog_name: str


DEFAULT_DINO_MODEL = "dino_vitb8"
DINO_MODELS: Dict[str, DinoArch] = {
    "dino_vits8": DinoArch("vit_small_patch8_224", 8, 384, 12, 6, False, 224, "dino-vit-s8"),
    DEFAULT_DINO_MODEL: DinoArch("vit_base_patch8_224", 8, 768, 12, 12, False, 224, "dino-vit-b8"),
    "dinov2_vits14": DinoArch("vit_small_patch14_dinov2", 14, 384, 12, 6, True, 518, "dinov2-vit-s14"),
    "dinov2_vitb14": DinoArch("vit_base_patch14_dinov2", 14, 768, 12, 12, True, 518, "dinov2-vit-b14"),
}
DINO_MODEL_CHOICES = tuple(DINO_MODELS)
DEFAULT_DINO_WEIGHTS = DINO_MODELS[DEFAULT_DINO_MODEL].catalog_name


def dino_catalog_name(dino_model: str) -> str:
    """The catalog checkpoint `dino_model` uses when no weights are named (KeyError if unknown)."""
    return DINO_MODELS[dino_model].catalog_name


# ----------------------------------------------------------------------------- SAM

DEFAULT_SAM_MODEL = "vit_b"
# segment_anything registry key -> the catalog checkpoint used when only the architecture is given
SAM_CATALOG: Dict[str, str] = {DEFAULT_SAM_MODEL: "sam-vit-b", "vit_l": "sam-vit-l",
                               "vit_h": "sam-vit-h"}
SAM_MODELS = tuple(SAM_CATALOG)
DEFAULT_SAM_WEIGHTS = SAM_CATALOG[DEFAULT_SAM_MODEL]


# ----------------------------------------------------------------------------- devices

# What front ends offer (CLI --device, Processing enum, dock). 'mps' and 'cuda:N' are accepted too
# (DEVICE_NAMES and `core.device.resolve_device`); 'auto' already picks MPS on a Mac.
DEVICE_CHOICES = ("auto", "cpu", "cuda")
DEVICE_NAMES = DEVICE_CHOICES + ("mps",)
DEFAULT_DEVICE = DEVICE_CHOICES[0]
