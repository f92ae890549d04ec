#!/usr/bin/env bash
# Installs everything (QGIS from Debian, .venv with test tools) and runs the whole test suite
# offscreen: engine, tiny real-architecture models, QGIS plugin, Processing and the dock.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --dev
export QT_QPA_PLATFORM=offscreen
# -P: the repository root stays off sys.path, so its processing/ never hides QGIS's own.
exec .venv/bin/python -P -m pytest -q tests "$@"
