#!/usr/bin/env bash
# GPU readiness check (what it prints: benchmarks/gpu_check.py). Runs within 8 minutes on one GPU.
#   benchmarks/gpu_check.sh             # on the GPU machine
#   benchmarks/gpu_check.sh --dry-run   # every stage on the CPU, tiny architectures, < 1 min
# Uses .venv/bin/python when the working tree has one, else python3. Installs nothing slow: torch
# must already be there; other missing requirements are pip-installed (quick wheels) if possible.
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi

if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "[env] FAILED: torch is not installed for $PY; install a CUDA build of torch first" \
         "(not done here: a multi-GB download)"
    exit 1
fi

# module -> pip requirement (pins from requirements.txt), only for what is missing.
missing=$("$PY" - <<'PYEOF'
import importlib.util
wanted = {"numpy": "numpy<2", "rasterio": "rasterio", "shapely": "shapely>=2.0,<3",
          "open_clip": "open-clip-torch==3.3.0", "timm": "timm>=1.0,<2",
          "segment_anything": "segment-anything==1.0", "safetensors": "safetensors>=0.4",
          "affine": "affine<3", "tqdm": "tqdm>=4.60"}
print(" ".join(f"'{req}'" for module, req in wanted.items() if importlib.util.find_spec(module) is None))
PYEOF
)
if [ -n "$missing" ]; then
    echo "[env] installing missing requirements: $missing"
    eval "\"$PY\" -m pip install --quiet --disable-pip-version-check --timeout 20 --retries 1 $missing" \
        || echo "[env] could not install $missing (offline?): the stages that need them will fail"
fi

# The repository root is the package `drseg`: make it importable under that name wherever the
# working tree lies and whatever its folder is called.
LINKS="$(mktemp -d)"
trap 'rm -rf "$LINKS"' EXIT
ln -s "$ROOT" "$LINKS/drseg"
export PYTHONPATH="$LINKS${PYTHONPATH:+:$PYTHONPATH}"
"$PY" benchmarks/gpu_check.py "$@"
