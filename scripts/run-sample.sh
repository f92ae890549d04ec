#!/usr/bin/env bash
# The main job: installs what is needed, then segments the sample scene shipped in resources/
# into building / road / tree / water / grass polygons (out/sample.gpkg) and a class raster.
# CLIP ViT-B-16 (OpenAI) weights are downloaded by open_clip on first use; without network it
# stops with a message saying what to download and where to pass it (--clip-weights).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
mkdir -p out
exec .venv/bin/python -m drseg segment resources/sample_scene.tif \
  --classes "building,roof,house; road,street; tree,forest; water,pond; grass,field" \
  --out out/sample.gpkg --raster-out out/sample_classes.tif "$@"
