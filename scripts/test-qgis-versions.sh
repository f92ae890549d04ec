#!/usr/bin/env bash
# Runs the plugin's QGIS-facing tests on other QGIS versions than this machine's:
#   trixie: Debian 13 with QGIS 3.40 LTR       sid: Debian unstable with QGIS 3.44 (or newer)
# Each version lives in a Debian root built once with debootstrap (cached in $DRSEG_QGIS_ROOTS,
# outside the repository) with QGIS, rasterio and numpy from Debian and the project's other Python
# packages in a venv that sees them. Tests run inside the root through chroot, under Xvfb.
# Usage: scripts/test-qgis-versions.sh [trixie|sid|all] [extra pytest arguments]   (needs root)
set -euo pipefail

# Run a command inside a root in a private mount namespace: the mounts vanish when it ends.
in_root() {
  local root=$1; shift
  cp -L /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
  mkdir -p "$root/src/drseg"
  local binds="mount --rbind /dev $root/dev; mount -t proc proc $root/proc; mount --rbind /sys $root/sys;
    mount --bind $repo $root/src/drseg; mount -o remount,bind,ro $root/src/drseg;"
  local d
  for d in $pip_dirs; do
    mkdir -p "$root$d"
    binds="$binds mount --bind $d $root$d; mount -o remount,bind,ro $root$d;"
  done
  unshare --mount --propagation private -- bash -c "set -e; $binds exec chroot $root \"\$@\"" \
    in_root env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin LANG=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive "$@"
}

build_root() {  # idempotent: each stage leaves a stamp
  local dist=$1 root=$roots/$1
  mkdir -p "$roots"
  if [ ! -f "$root/.drseg-debootstrap" ]; then
    echo "== $dist: debootstrap from $mirror into $root"
    rm -rf "$root"
    debootstrap --variant=minbase "$dist" "$root" "$mirror" >"$roots/$dist-debootstrap.log" 2>&1 \
      || { tail -20 "$roots/$dist-debootstrap.log" >&2; return 1; }
    touch "$root/.drseg-debootstrap"
  fi
  local debs_stamp; debs_stamp="$root/.drseg-debs-$(echo $DEBS | sha256sum | cut -c1-12)"
  if [ ! -f "$debs_stamp" ]; then
    echo "== $dist: installing QGIS and Python packages from Debian"
    # sid's Release files can outlive their Valid-Until on a mirror that is not refreshed daily.
    in_root "$root" sh -c "apt-get -o Acquire::Check-Valid-Until=false update -q && apt-get install -y -q --no-install-recommends $(echo $DEBS)" \
      >"$roots/$dist-apt.log" 2>&1 || { tail -20 "$roots/$dist-apt.log" >&2; return 1; }
    touch "$debs_stamp"
  fi
  # Certificate authorities this machine adds (a TLS proxy, a company CA) are trusted in the root.
  if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    in_root "$root" update-ca-certificates >/dev/null 2>&1
  fi
  for conf in $pip_confs; do
    mkdir -p "$root$(dirname "$conf")"; cp "$conf" "$root$conf"
  done
  [ -x "$root/opt/venv/bin/python" ] || in_root "$root" python3 -m venv --system-site-packages /opt/venv
  # The repository's requirements, less what Debian provides; reinstalled when they change.
  local reqs; reqs=$(cat "$repo/requirements.txt" "$repo/requirements-dev.txt" | grep -vE '^\s*(#|-r|$)' \
    | grep -viE "$FROM_DEBIAN" | sed 's/\s*#.*//')
  local pip_stamp; pip_stamp="$root/opt/venv/.drseg-$(echo "$reqs" | sha256sum | cut -c1-12)"
  if [ ! -f "$pip_stamp" ]; then
    echo "== $dist: installing the project's Python packages with pip"
    echo "$reqs" >"$root/opt/requirements.txt"
    local pip_env; pip_env=$(env | grep '^PIP_' | tr '\n' ' ' || true)
    in_root "$root" env $pip_env /opt/venv/bin/python -m pip install -q -r /opt/requirements.txt \
      >"$roots/$dist-pip.log" 2>&1 || { tail -20 "$roots/$dist-pip.log" >&2; return 1; }
    touch "$pip_stamp"
  fi
}

run_tests() {
  local dist=$1 root=$roots/$1 version
  version=$(in_root "$root" /usr/bin/python3 -c 'from qgis.core import Qgis; print(Qgis.QGIS_VERSION.split("-")[0])')
  echo "== $dist: QGIS $version, running the QGIS-facing tests (log: $roots/$dist-tests.log)"
  rm -f "$root/tmp/drseg-junit.xml"
  # PYTHONPATH=/src: `drseg` is the repository, bind-mounted read-only at /src/drseg.
  in_root "$root" env PYTHONPATH=/src PYTHONDONTWRITEBYTECODE=1 TMPDIR=/tmp \
    sh -c 'cd /src/drseg && xvfb-run -a -s "-screen 0 1280x1024x24" /opt/venv/bin/python -P -m pytest \
      -p no:cacheprovider -q --junitxml=/tmp/drseg-junit.xml "$@"' sh $TESTS "${PYTEST_ARGS[@]}" \
    >"$roots/$dist-tests.log" 2>&1 || true
  tail -3 "$roots/$dist-tests.log"
  python3 - "$root/tmp/drseg-junit.xml" "$version" "$dist" >>"$summary" <<'EOF'
import sys, xml.etree.ElementTree as ET
path, version, dist = sys.argv[1:]
try:
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    print(f"QGIS {version} ({dist}): {passed} passed, {n['failures'] + n['errors']} failed, "
          f"{n['skipped']} skipped")
except Exception as error:  # no report: pytest itself failed to start
    print(f"QGIS {version} ({dist}): tests did not run ({error})")
EOF
}

# Everything runs from functions, so that editing this file during a run cannot derail it.
main() {
  repo=$(cd "$(dirname "$0")/.." && pwd)
  roots=${DRSEG_QGIS_ROOTS:-/var/cache/drseg-qgis-roots}
  which=${1:-all}
  shift || true
  case "$which" in
    all) dists="trixie sid" ;;
    trixie|sid) dists=$which ;;
    *) echo "usage: $0 [trixie|sid|all] [pytest arguments]" >&2; exit 2 ;;
  esac
  [ "$(id -u)" = 0 ] || { echo "$0: needs root (debootstrap, chroot, mounts)" >&2; exit 2; }

  # The QGIS-facing tests: every test module that imports QGIS or the QGIS test helpers (plugin
  # load and qgis_process, QGIS desktop, dock, Processing through the toolbox path, batch and
  # model, referring, settings, the QGIS bridge), and the Qt6 source scan.
  TESTS=$(cd "$repo" && { grep -lE '^\s*(from|import)\s+(qgis|conftest_qgis)\b' tests/test_*.py;
                          echo tests/test_qt6_readiness.py; } | sort -u)
  DEBS="qgis qgis-providers python3-qgis xvfb xauth python3-rasterio python3-numpy python3-shapely
  python3-venv python3-pip ca-certificates"
  # Debian provides numpy (its GDAL is built against it) and shapely (built against the GEOS that
  # QGIS loads); pip must not replace them.
  FROM_DEBIAN='^(numpy|shapely)([<>=! ;]|$)'

  # The Debian mirror this machine's apt uses (deb822 or one-line sources), else Debian's CDN.
  mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
             2>/dev/null | grep -oE 'https?://[^ ]+/debian/?( |$)' | grep -v security | head -1 | tr -d ' ') || true
  mirror=${mirror:-http://deb.debian.org/debian}

  command -v debootstrap >/dev/null || { apt-get update -q && apt-get install -y -q debootstrap; }

  # pip's configuration on this machine (local indexes, certificates) goes into each root; local
  # folders it names (an index's whole folder, whose pages link to ../files) are bind-mounted
  # read-only at the same path.
  pip_confs=$(ls /etc/pip.conf "${HOME:-/root}/.config/pip/pip.conf" "${HOME:-/root}/.pip/pip.conf" 2>/dev/null || true)
  pip_dirs=$( { cat $pip_confs /dev/null; env | grep '^PIP_' || true; } | grep -oE '(file://)?/[^ ,]+' \
              | sed 's|^file://||; s|/simple/*$||' | sort -u | while read -r p; do [ -d "$p" ] && echo "$p"; done || true)

  PYTEST_ARGS=("$@")
  summary=$(mktemp)
  trap 'rm -f "$summary"' EXIT
  status=0
  for dist in $dists; do
    start=$SECONDS
    if build_root "$dist"; then
      run_tests "$dist"
    else
      echo "QGIS ? ($dist): root could not be built (logs in $roots)" >>"$summary"
    fi
    echo "== $dist: $((SECONDS - start)) s"
  done
  echo
  cat "$summary"
  grep -qE ': [0-9]+ passed, 0 failed' "$summary" && ! grep -qvE ': [0-9]+ passed, 0 failed' "$summary" || status=1
  return $status
}

main "$@"; exit  # on the same line: bash stops reading here even if the file changed
