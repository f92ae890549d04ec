"""The model families DR-Seg knows, their names and defaults: the one place each is written.

Front ends (CLI, Processing, the dock) build their choices and defaults from here, and the engine
its requests, so adding a model family or architecture is one edit. Nothing here imports torch:
QGIS builds its Processing parameters and the dock at start-up, perhaps without torch installed.

- CLIP: open_clip architecture names and pretrained tags (weights may also be a catalog name or a
  file, see `core/models/clip.py`).
- DINO: our names for the DINO/DINOv2 backbones, each with its timm definition (sizes, patch) and
  the catalog checkpoint it uses by default.
- SAM: segment_anything registry keys and the catalog checkpoint of each.
- SAM 3: the transformers SAM 3 detector (concept prompts) and its catalog checkpoint.
- Engines: what the class segmentation runs (dense CLIP, DR-Seg, SAM 3 or both fused).
- Devices: the choices front ends offer (`core/device.py` resolves them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

FAMILIES = ("clip", "dino", "sam", "sam3")

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


# ----------------------------------------------------------------------------- SAM 3

# Our architecture name for the released SAM 3 detector (transformers' default Sam3Config).
DEFAULT_SAM3_MODEL = "sam3"
SAM3_CATALOG: Dict[str, str] = {DEFAULT_SAM3_MODEL: "sam3"}
SAM3_MODELS = tuple(SAM3_CATALOG)
DEFAULT_SAM3_WEIGHTS = SAM3_CATALOG[DEFAULT_SAM3_MODEL]
SAM3_LICENCE = "SAM License"
SAM3_IMAGE_SIZE = 1008       # the released model's input size: the tile the sam3 engine scores
SAM3_OVERLAP = 0.25          # fraction of a tile shared with its neighbour


# ----------------------------------------------------------------------------- engines

# 'drseg' and 'clip' are the two CLIP engines ('auto' method picks DR-Seg when DINO is set up);
# 'sam3' runs SAM 3 concept prompts; 'hybrid' fuses SAM 3 with the CLIP engine per pixel.
ENGINE_CHOICES = ("drseg", "clip", "sam3", "hybrid")
SAM3_ENGINES = ("sam3", "hybrid")
# Referring: 'sam' (dense CLIP localises, SAM delineates) or 'sam3' (SAM 3 concept prompts).
REFER_ENGINE_CHOICES = ("sam", "sam3")
DEFAULT_REFER_ENGINE = REFER_ENGINE_CHOICES[0]

# The Python modules each kind of model imports, slow to import the first time (seconds, hundreds
# of modules): the QGIS front ends import a run's ahead, in its worker thread, under
# core.background_imports (qgis_bridge.engine.import_model_libraries).
CLIP_LIBRARIES = ("torch", "open_clip")
DINO_LIBRARIES = ("timm",)
SAM_LIBRARIES = ("segment_anything",)
SAM3_LIBRARIES = ("torch", "open_clip",                      # its tokenizer is open_clip's
                  "transformers.models.sam3.modeling_sam3")    # where `Sam3Model` lives


# ----------------------------------------------------------------------------- devices

# What front ends offer (CLI --device, Processing enum, dock). 'mps' and 'cuda:N' are accepted too
# (DEVICE_NAMES and `core.device.resolve_device`); 'auto' already picks MPS on a Mac.
DEVICE_CHOICES = ("auto", "cpu", "cuda")
DEVICE_NAMES = DEVICE_CHOICES + ("mps",)
DEFAULT_DEVICE = DEVICE_CHOICES[0]
