"""Models: which ones exist, where their weights come from, and loading them once.

Importing this package (and `registry`, `catalog`, `formats`, `download`, `cache`, `dino`)
needs neither torch nor QGIS; `checkpoints`, `clip`, `sam` and `shared` import torch.

- `registry`: model families, names and defaults, the one place each is written.
- `catalog`: the checkpoints DR-Seg supports (`core/data/models.json`): source, size, hash, licence.
- `formats`: what kind of file a checkpoint is, told from its bytes.
- `download`: the model cache: downloading (resumable, via a mirror), verifying, importing.
- `checkpoints`: reading weights safely (safetensors or `torch.load(weights_only=True)`).
- `clip`, `sam`, `dino`: the loaders, one shape:
  `load_X(model_name, weights, device, *, cache_dir, mirror, progress) -> loaded model`.
- `cache`: the process-wide cache of loaded models (bounded LRU, one lock per model).
- `shared`: the loaders through that cache, as the engine's runs use them.
"""
