"""The Python packages DR-Seg needs inside QGIS, and the pip command that installs the missing ones.

Nothing here imports QGIS or the heavy packages: presence is checked with
`importlib.util.find_spec` and versions are read from package metadata, so calling this at plugin
start costs milliseconds.

How the installation works (it avoids the usual complaints about segmentation plugins: clashes
with the numpy/GDAL QGIS ships, CUDA set-up):

- Packages go into a folder owned by the plugin (`packages_dir()`, per user and per Python
  version, outside QGIS's own installation), with `pip install --target`. That folder is *appended*
  to `sys.path` at plugin start, so whatever QGIS ships (numpy, GDAL, ...) is always found first.
- `pip --target` ignores what is already installed and may put copies of numpy and friends into
  the folder. A constraints file pins every distribution QGIS's Python already has to the version
  it has, so the resolver picks packages that work with the copies that will really be imported
  (numpy stays below 2 where GDAL was built against numpy 1) and never downloads other versions.
- pip runs under the Python that QGIS runs. Inside QGIS `sys.executable` is often QGIS itself
  (qgis-bin.exe on Windows, QGIS.app/Contents/MacOS/QGIS on macOS); `find_qgis_python` finds the
  interpreter beside it.
- torch: with an NVIDIA driver (nvidia-smi works) the standard wheels (Linux: CUDA builds from
  PyPI; Windows: the PyTorch CUDA index matching the driver); without one, the CPU-only wheels from
  https://download.pytorch.org/whl/cpu (a few hundred MB instead of several GB).
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import ntpath
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

PACKAGES_ENV = "DRSEG_PACKAGES_DIR"
CPU_INDEX_URL = "https://download.pytorch.org/whl/cpu"
CUDA_INDEX_URL = "https://download.pytorch.org/whl/{tag}"
# PyTorch's CUDA wheel indexes (newest first) and the driver CUDA version each needs; used on
# Windows, where PyPI's torch is CPU-only. Update when PyTorch adds a CUDA release.
PYTORCH_CUDA_WHEELS: Tuple[Tuple[Tuple[int, int], str], ...] = (
    ((12, 8), "cu128"), ((12, 6), "cu126"), ((11, 8), "cu118"))
# Never pinned: pip's own tooling (the build environments bring theirs).
UNPINNED = {"pip", "setuptools", "wheel", "distribute"}
# Always added to the constraints (affine 3 breaks rasterio.transform.from_origin).
EXTRA_CONSTRAINTS = ("affine<3",)


@dataclass(frozen=True)
class Requirement:
    module: str        # import name
    package: str       # pip name
    purpose: str


REQUIREMENTS: Tuple[Requirement, ...] = (
    Requirement("torch", "torch", "deep-learning runtime for all models"),
    Requirement("torchvision", "torchvision", "image operations used by the CLIP models"),
    Requirement("open_clip", "open_clip_torch", "CLIP models (open-vocabulary segmentation)"),
    Requirement("segment_anything", "segment-anything", "SAM masks (referring segmentation)"),
    Requirement("timm", "timm", "DINO backbones (DR-Seg rectification)"),
    Requirement("safetensors", "safetensors", "safe checkpoint format"),
    Requirement("rasterio", "rasterio", "reading and writing rasters by windows"),
    Requirement("shapely", "shapely", "polygon simplification and repair"),
    Requirement("tqdm", "tqdm", "download progress of the model libraries"),
)


# ----------------------------------------------------------------------------- presence

def is_importable(module: str) -> bool:
    """True when `module` can be found on sys.path (nothing is imported for a top-level name)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def find_missing(requirements: Iterable[Requirement] = REQUIREMENTS,
                 importable: Callable[[str], bool] = is_importable) -> List[Requirement]:
    """The requirements whose module cannot be found."""
    return [r for r in requirements if not importable(r.module)]


def missing_package_names(requirements: Iterable[Requirement] = REQUIREMENTS) -> List[str]:
    return [r.package for r in find_missing(requirements)]


def installed_version(package: str) -> Optional[str]:
    try:
        return importlib.metadata.version(package)
    except Exception:  # PackageNotFoundError, or broken metadata
        return None


# ----------------------------------------------------------------------------- plugin folder

def packages_dir(environ=None, platform: Optional[str] = None, version=None,
                 home: Optional[str] = None) -> str:
    """The plugin-owned folder pip installs into: `DRSEG_PACKAGES_DIR`, else per user and per
    Python version (compiled packages only work with the Python they were built for). Kept outside
    the plugin folder (survives plugin updates) and outside roaming profiles (torch is large)."""
    environ = os.environ if environ is None else environ
    platform = platform or sys.platform
    major, minor = (version or sys.version_info)[:2]
    chosen = (environ.get(PACKAGES_ENV) or "").strip()
    path = _pathmod(platform)
    if chosen:
        return path.abspath(path.expanduser(chosen)) if path is os.path else chosen
    home = home or os.path.expanduser("~")
    if platform.startswith("win"):
        base = environ.get("LOCALAPPDATA") or path.join(home, "AppData", "Local")
    elif platform == "darwin":
        base = path.join(home, "Library", "Application Support")
    else:
        base = environ.get("XDG_DATA_HOME") or path.join(home, ".local", "share")
    return path.join(base, "drseg", "python-packages", f"py{major}.{minor}")


def add_packages_dir_to_path(folder: Optional[str] = None, path_list: Optional[List[str]] = None
                             ) -> bool:
    """Append the plugin-owned folder to sys.path (once) when it exists; True when it is there.

    Appended, not prepended: what QGIS ships always wins over the copies pip put in the folder.
    """
    folder = folder or packages_dir()
    path_list = sys.path if path_list is None else path_list
    if not os.path.isdir(folder):
        return False
    normalised = os.path.normcase(os.path.abspath(folder))
    if not any(os.path.normcase(os.path.abspath(p or os.curdir)) == normalised for p in path_list):
        path_list.append(folder)
        importlib.invalidate_caches()
    return True


# ----------------------------------------------------------------------------- QGIS's Python

_PYTHON_NAME = re.compile(r"^python(3(\.\d+)?)?w?(\.exe)?$", re.IGNORECASE)


def _pathmod(platform: str):
    """Path functions of the target platform (the tests check Windows paths on Linux, too)."""
    return ntpath if platform.startswith("win") else posixpath


def find_qgis_python(executable: Optional[str] = None, platform: Optional[str] = None,
                     exec_prefix: Optional[str] = None, base_exec_prefix: Optional[str] = None,
                     version=None, exists: Callable[[str], bool] = os.path.isfile) -> Optional[str]:
    """The Python interpreter of the running QGIS, to run pip with; None when none is found.

    `sys.executable` is returned when it is a Python (Linux, a terminal). Inside QGIS it can be the
    QGIS program: Windows `...\\bin\\qgis-bin.exe` (interpreter in `sys.exec_prefix`, e.g.
    `...\\apps\\Python312\\python.exe`, or beside the program), macOS
    `QGIS.app/Contents/MacOS/QGIS` (interpreter in `Contents/MacOS/bin/python3` or
    `Contents/MacOS/python3.X`). `pythonw.exe` is swapped for `python.exe`, whose output can be
    read.
    """
    executable = sys.executable if executable is None else executable
    platform = platform or sys.platform
    exec_prefix = sys.exec_prefix if exec_prefix is None else exec_prefix
    base_exec_prefix = sys.base_exec_prefix if base_exec_prefix is None else base_exec_prefix
    major, minor = (version or sys.version_info)[:2]
    path = _pathmod(platform)
    windows = platform.startswith("win")
    exe_dir = path.dirname(executable) if executable else ""
    name = path.basename(executable) if executable else ""

    if name and _PYTHON_NAME.match(name):
        if windows and name.lower() == "pythonw.exe":
            console = path.join(exe_dir, "python.exe")
            return console if exists(console) else executable
        # Embedded in QGIS, sys.executable may be whatever `python3` came first on PATH (e.g. a
        # virtual environment's): only a Python in this interpreter's own prefix is QGIS's.
        own_dirs = {path.normpath(path.join(p, "bin")) for p in (exec_prefix, base_exec_prefix) if p}
        if windows:
            own_dirs |= {path.normpath(p) for p in (exec_prefix, base_exec_prefix) if p}
        if exists(executable) and (path.normpath(exe_dir) in own_dirs or not own_dirs):
            return executable

    candidates: List[str] = []
    if windows:
        for prefix in (exec_prefix, base_exec_prefix):
            if prefix:
                candidates.append(path.join(prefix, "python.exe"))
        if exe_dir:
            candidates += [path.join(exe_dir, "python.exe"), path.join(exe_dir, "python3.exe"),
                           path.join(path.dirname(exe_dir), "apps", f"Python{major}{minor}", "python.exe")]
    else:
        versioned, plain = f"python{major}.{minor}", "python3"
        if exe_dir and not _PYTHON_NAME.match(name):
            if platform == "darwin":
                candidates += [path.join(exe_dir, "bin", versioned), path.join(exe_dir, "bin", plain),
                               path.join(exe_dir, versioned), path.join(exe_dir, plain)]
            candidates += [path.join(exe_dir, versioned)]
        for prefix in (exec_prefix, base_exec_prefix):
            if prefix:
                candidates += [path.join(prefix, "bin", versioned), path.join(prefix, "bin", plain)]
    seen = set()
    for candidate in candidates:
        if candidate in seen:
            continue
        seen.add(candidate)
        if exists(candidate):
            return candidate
    return None


# ----------------------------------------------------------------------------- torch build

@dataclass(frozen=True)
class TorchBuild:
    kind: str                    # 'cuda', 'cpu' or 'default' (macOS: CPU + Apple GPU)
    index_url: Optional[str]     # extra index pip searches besides PyPI; None: PyPI only
    reason: str


def _nvidia_smi_candidates(platform: str) -> List[str]:
    if platform.startswith("win"):
        return [r"C:\Windows\System32\nvidia-smi.exe",
                r"C:\Program Files\NVIDIA Corporation\NVSMI\nvidia-smi.exe"]
    return ["/usr/bin/nvidia-smi", "/usr/local/bin/nvidia-smi"]


def choose_torch_build(platform: Optional[str] = None, which=shutil.which, run=subprocess.run,
                       exists: Callable[[str], bool] = os.path.isfile) -> TorchBuild:
    """Which torch wheels suit this machine, and why (shown in the install dialog)."""
    platform = platform or sys.platform
    if platform == "darwin":
        return TorchBuild("default", None, "macOS: the standard torch wheels (CPU and Apple GPU "
                                           "through MPS); there are no CUDA builds for macOS")
    smi = which("nvidia-smi") or next((p for p in _nvidia_smi_candidates(platform) if exists(p)), None)
    cpu_reason = "no NVIDIA driver found (no nvidia-smi)"
    if smi:
        try:
            extra = {"creationflags": 0x08000000} if platform.startswith("win") else {}  # no console
            done = run([smi], capture_output=True, text=True, timeout=15, **extra)
            output = (done.stdout or "") + (done.stderr or "")
            ok = done.returncode == 0
        except (OSError, subprocess.SubprocessError) as exc:
            output, ok = str(exc), False
        if ok:
            found = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", output)
            driver = (int(found.group(1)), int(found.group(2))) if found else None
            driver_text = f" (driver supports CUDA {driver[0]}.{driver[1]})" if driver else ""
            if not platform.startswith("win"):
                return TorchBuild("cuda", None, f"NVIDIA driver found{driver_text}: the standard "
                                                "torch wheels from PyPI, which include CUDA "
                                                "(a download of several GB)")
            for needed, tag in PYTORCH_CUDA_WHEELS:
                if driver is None or driver >= needed:
                    return TorchBuild("cuda", CUDA_INDEX_URL.format(tag=tag),
                                      f"NVIDIA driver found{driver_text}: CUDA {needed[0]}.{needed[1]} "
                                      "torch wheels from download.pytorch.org (several GB)")
            cpu_reason = (f"the NVIDIA driver{driver_text} is too old for current torch CUDA builds; "
                          "update the driver to use the GPU")
        else:
            first = next((line.strip() for line in output.splitlines() if line.strip()), "failed")
            cpu_reason = f"nvidia-smi is present but fails ({first[:120]})"
    return TorchBuild("cpu", CPU_INDEX_URL, f"{cpu_reason}: CPU-only torch wheels from "
                                            f"{CPU_INDEX_URL} (a few hundred MB)")


# ----------------------------------------------------------------------------- constraints

# PEP 440 (the `packaging` pattern, public and local parts), to skip versions pip cannot parse.
_PEP440 = re.compile(
    r"^v?(?:(?:[0-9]+)!)?[0-9]+(?:\.[0-9]+)*(?:[-_.]?(?:a|b|c|rc|alpha|beta|pre|preview)[-_.]?[0-9]*)?"
    r"(?:-[0-9]+|[-_.]?(?:post|rev|r)[-_.]?[0-9]*)?(?:[-_.]?dev[-_.]?[0-9]*)?"
    r"(?:\+[a-z0-9]+(?:[-_.][a-z0-9]+)*)?$", re.IGNORECASE)


def canonical_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_distributions(exclude_under: Sequence[str] = ()) -> List[Tuple[str, str]]:
    """(name, version) of every distribution the running Python sees, first on sys.path wins;
    distributions inside `exclude_under` folders (the plugin-owned folder) are left out."""
    excluded = [os.path.normcase(os.path.abspath(p)) + os.sep for p in exclude_under if p]
    found: Dict[str, Tuple[str, str]] = {}
    for dist in importlib.metadata.distributions():
        try:
            name, version = dist.metadata["Name"], dist.version
        except Exception:
            continue
        if not name or not version:
            continue
        try:
            location = os.path.normcase(os.path.abspath(str(dist.locate_file(""))))
        except Exception:
            location = ""
        if excluded and any((location + os.sep).startswith(e) for e in excluded):
            continue
        found.setdefault(canonical_name(name), (name, version))
    return sorted(found.values(), key=lambda item: canonical_name(item[0]))


def build_constraints(distributions: Iterable[Tuple[str, str]],
                      extra: Sequence[str] = EXTRA_CONSTRAINTS) -> List[str]:
    """Constraint lines `name==version` pinning what QGIS's Python already has.

    A local version label (`2.5.1+cu121`) is dropped: `==2.5.1` matches every build of that
    release, while the exact local build may exist on no index. Versions that are not PEP 440
    (some distribution patches) and pip's own tooling are skipped.
    """
    lines, pinned = [], set()
    for name, version in distributions:
        key = canonical_name(name)
        if key in UNPINNED or key in pinned or not _PEP440.match(version.strip()):
            continue
        public = version.strip().split("+", 1)[0]
        lines.append(f"{key}=={public}")
        pinned.add(key)
    for line in extra:
        if canonical_name(re.split(r"[<>=!~ ;\[]", line, maxsplit=1)[0]) not in pinned:
            lines.append(line)
    return lines


# ----------------------------------------------------------------------------- the plan

@dataclass
class InstallPlan:
    """Everything the install dialog shows and runs."""

    python: Optional[str]
    target: str
    requirements: List[Requirement]
    constraints: List[str]
    constraints_path: str
    torch_build: TorchBuild
    warnings: List[str] = field(default_factory=list)
    launcher: Optional[List[str]] = None     # default: [python, '-m', 'pip']

    @property
    def packages(self) -> List[str]:
        return [r.package for r in self.requirements]

    @property
    def can_run(self) -> bool:
        return bool(self.requirements) and bool(self.launcher or self.python)

    @property
    def command(self) -> List[str]:
        launcher = list(self.launcher) if self.launcher else [self.python or "python3", "-m", "pip"]
        args = ["install", "--target", self.target, "--upgrade", "--prefer-binary",
                "--no-input", "--progress-bar", "off", "--disable-pip-version-check",
                "--no-warn-script-location", "--constraint", self.constraints_path]
        if self.torch_build.index_url and any(r.module in ("torch", "torchvision")
                                              for r in self.requirements):
            args += ["--extra-index-url", self.torch_build.index_url]
        return launcher + args + self.packages

    def command_text(self, platform: Optional[str] = None) -> str:
        if (platform or sys.platform).startswith("win"):
            return subprocess.list2cmdline(self.command)
        return " ".join(shlex.quote(part) for part in self.command)

    def environment(self) -> Dict[str, str]:
        """Variables set for the pip process (on top of QGIS's environment)."""
        return {"PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8",
                "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1",
                # user pip settings that would refuse --target
                "PIP_USER": "0", "PIP_REQUIRE_VIRTUALENV": "0"}

    def constraints_text(self) -> str:
        return ("# Written by DR-Seg: versions QGIS's Python already has, so pip picks packages "
                "that work with them.\n" + "\n".join(self.constraints) + "\n")

    def write_constraints(self) -> str:
        folder = os.path.dirname(self.constraints_path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        with open(self.constraints_path, "w", encoding="utf-8") as handle:
            handle.write(self.constraints_text())
        return self.constraints_path

    def notable_pins(self) -> List[str]:
        """The pins users ask about (numpy first), for the summary."""
        wanted = ("numpy", "scipy", "pillow", "gdal", "shapely", "pyproj", "pandas", "matplotlib",
                  "torch")
        by_name = {line.split("==")[0]: line for line in self.constraints if "==" in line}
        return [by_name[name] for name in wanted if name in by_name]

    def summary(self) -> str:
        """Plain-text description: what, where, with which Python, which torch build."""
        if not self.requirements:
            return "All packages DR-Seg needs are already installed."
        lines = ["These Python packages will be installed (with the packages they need):"]
        lines += [f"  • {r.package} — {r.purpose}" for r in self.requirements]
        lines += ["", f"Into the folder: {self.target}",
                  "  (owned by DR-Seg; added to QGIS's Python path after QGIS's own packages)",
                  f"Using QGIS's Python: {self.python or 'NOT FOUND'}"]
        if any(r.module in ("torch", "torchvision") for r in self.requirements):
            lines.append(f"torch build: {self.torch_build.kind.upper()} — {self.torch_build.reason}")
        pins = self.notable_pins()
        lines.append(f"Kept at QGIS's versions ({len(self.constraints)} constraints): "
                     + (", ".join(pins) if pins else "none found"))
        lines.append("  (pip may put copies of some of these into the folder; QGIS keeps using "
                     "its own)")
        lines += [f"Warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def plan_install(requirements: Optional[Sequence[Requirement]] = None, target: Optional[str] = None,
                 python: Optional[str] = None, torch_build: Optional[TorchBuild] = None,
                 distributions: Optional[Iterable[Tuple[str, str]]] = None,
                 pip_found: Optional[bool] = None) -> InstallPlan:
    """The plan for installing `requirements` (default: the missing ones) into `target`
    (default: `packages_dir()`), computed from this Python's environment."""
    requirements = find_missing() if requirements is None else list(requirements)
    target = target or packages_dir()
    python = python or find_qgis_python()
    needs_torch = any(r.module in ("torch", "torchvision") for r in requirements)
    if torch_build is None:
        torch_build = choose_torch_build() if needs_torch else TorchBuild("default", None, "")
    if distributions is None:
        distributions = installed_distributions(exclude_under=[target])
    installing = {canonical_name(r.package) for r in requirements}
    # What is being (re)installed is not pinned: a broken copy must not hold the repair back.
    constraints = build_constraints((n, v) for n, v in distributions
                                    if canonical_name(n) not in installing)
    warnings = []
    if python is None:
        warnings.append("The Python interpreter QGIS runs could not be found (sys.executable is "
                        f"'{sys.executable}'); install the packages from a terminal with QGIS's "
                        "Python instead")
    if pip_found is None:
        pip_found = is_importable("pip")
    if not pip_found:
        hint = (" (Debian/Ubuntu: sudo apt install python3-pip)" if sys.platform.startswith("linux")
                else "")
        warnings.append(f"pip is not installed in QGIS's Python{hint}; the installation will fail "
                        "without it")
    constraints_path = os.path.join(os.path.dirname(os.path.abspath(target)),
                                    os.path.basename(os.path.normpath(target)) + "-constraints.txt")
    return InstallPlan(python, target, list(requirements), constraints, constraints_path,
                       torch_build, warnings)


def refresh_after_install(folder: Optional[str] = None) -> List[Requirement]:
    """Make freshly installed packages importable in this process; -> what is still missing."""
    add_packages_dir_to_path(folder)
    importlib.invalidate_caches()
    return find_missing()
