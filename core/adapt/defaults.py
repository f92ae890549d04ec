"""Adaptation defaults and choices, free of heavy imports (Processing reads them when QGIS loads
the provider, before torch or rasterio are checked)."""

LEVELS = ("calibrate", "prompt", "finetune")
DEFAULT_CHIP = 224
DEFAULT_VALIDATION_SHARE = 0.2
DEFAULT_STEPS = 200
DEFAULT_BATCH = 4
DEFAULT_LR = {"prompt": 1e-3, "finetune": 2e-4}   # the base rate (text offsets, biases)
BACKBONE_MULTIPLIER = 0.01                       # attention weights: 0.01× the base rate
ADAPTER_FORMAT = "drseg-adapter/1"                # the adapter file's metadata "format"
MAX_CONTEXT_TOKENS = 16                            # more gains nothing and slows the text tower
DEFAULT_CONTEXT_TOKENS = 4                         # learned prompt context words (core/adapt/context.py)
CONTEXT_MULTIPLIER = 0.1                          # learned prompt context: 0.1× the base rate
CONTEXT_GUIDANCE = 1.0                            # weight of ‖what the context changes‖²
