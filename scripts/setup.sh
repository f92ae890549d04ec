#!/usr/bin/env bash
# Installs everything DR-Seg needs on a Debian machine (idempotent):
# QGIS + GDAL + rasterio from Debian, then a .venv that sees them (system site packages)
# with torch, open_clip, segment_anything and the test tools from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
[ "${1:-}" = "--dev" ] && dev=1

need_apt=0
for mod in qgis.core rasterio osgeo.ogr; do
  /usr/bin/python3 -c "import $mod" 2>/dev/null || need_apt=1
done
command -v Xvfb >/dev/null || need_apt=1
command -v geos-config >/dev/null || need_apt=1
# shapely is compiled against the system GEOS below: it needs Python's headers.
[ -f "$(/usr/bin/python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ] || need_apt=1
if [ "$need_apt" = 1 ]; then
  echo "== installing QGIS, GDAL and rasterio from Debian"
  sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q --no-install-recommends \
    python3-qgis qgis-providers qgis xvfb python3-venv python3-rasterio libgeos-dev python3-dev
fi

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv (with system site packages, so qgis and rasterio import)"
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
req=requirements.txt
[ "$dev" = 1 ] && req=requirements-dev.txt
stamp=".venv/.installed-$(cat requirements.txt "$req" pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "== installing Python packages from $req"
  .venv/bin/python -m pip install -q -r "$req"
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  touch "$stamp"
fi

# shapely must use the GEOS that QGIS loads: inside QGIS, a wheel's bundled GEOS gets QGIS's
# library answering some of its calls. Build it against the system GEOS when they differ.
system_geos=$(geos-config --version)
shapely_geos=$(.venv/bin/python -c "import shapely; print('.'.join(map(str, shapely.geos_version)))")
if [ "$system_geos" != "$shapely_geos" ]; then
  echo "== building shapely against the system GEOS $system_geos (was $shapely_geos)"
  .venv/bin/python -m pip install -q --force-reinstall --no-deps --no-binary shapely "shapely>=2.0,<3"
fi
