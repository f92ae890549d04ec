"""Which packages are missing, where they go, which Python runs pip, and the exact pip command."""
from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import types

import pytest

from drseg.core import dependencies as deps
from drseg.core.dependencies import CPU_INDEX_URL, Requirement, TorchBuild


# ----------------------------------------------------------------------------- QGIS's Python

def only(*paths):
    present = set(paths)
    return lambda path: path in present


def test_plain_python_is_used_as_is():
    assert deps.find_qgis_python("/usr/bin/python3", "linux", "/usr", "/usr", (3, 11),
                                 only("/usr/bin/python3")) == "/usr/bin/python3"


def test_linux_qgis_binary_finds_the_versioned_python_of_its_prefix():
    assert deps.find_qgis_python("/usr/bin/qgis", "linux", "/usr", "/usr", (3, 11),
                                 only("/usr/bin/python3", "/usr/bin/python3.11")) == "/usr/bin/python3.11"
    assert deps.find_qgis_python("/opt/qgis/bin/qgis", "linux", "/opt/py", "/opt/py", (3, 11),
                                 only("/opt/py/bin/python3")) == "/opt/py/bin/python3"


def test_a_python_first_on_path_but_not_qgis_own_is_not_taken():
    """Embedded Python sets sys.executable to the first `python3` on PATH (here a virtual
    environment's); QGIS runs the interpreter of its prefix."""
    assert deps.find_qgis_python("/home/u/venv/bin/python3", "linux", "/usr", "/usr", (3, 11),
                                 only("/home/u/venv/bin/python3", "/usr/bin/python3.11")) == \
        "/usr/bin/python3.11"


def test_windows_standalone_installer_uses_the_python_of_exec_prefix():
    exe = r"C:\Program Files\QGIS 3.34.4\bin\qgis-bin.exe"
    prefix = r"C:\PROGRA~1\QGIS33~1.4\apps\Python312"
    assert deps.find_qgis_python(exe, "win32", prefix, prefix, (3, 12),
                                 only(prefix + r"\python.exe",
                                      r"C:\Program Files\QGIS 3.34.4\bin\python.exe")) == prefix + r"\python.exe"


def test_windows_falls_back_to_python_beside_qgis_then_to_apps():
    exe = r"C:\OSGeo4W\bin\qgis-ltr-bin.exe"
    assert deps.find_qgis_python(exe, "win32", r"C:\nowhere", "", (3, 12),
                                 only(r"C:\OSGeo4W\bin\python3.exe")) == r"C:\OSGeo4W\bin\python3.exe"
    assert deps.find_qgis_python(exe, "win32", "", "", (3, 12),
                                 only(r"C:\OSGeo4W\apps\Python312\python.exe")) == \
        r"C:\OSGeo4W\apps\Python312\python.exe"


def test_windows_pythonw_is_swapped_for_the_console_python():
    assert deps.find_qgis_python(r"C:\Py\pythonw.exe", "win32", r"C:\Py", r"C:\Py", (3, 12),
                                 only(r"C:\Py\python.exe", r"C:\Py\pythonw.exe")) == r"C:\Py\python.exe"


@pytest.mark.parametrize("present,expected", [
    (("/Applications/QGIS.app/Contents/MacOS/bin/python3",),
     "/Applications/QGIS.app/Contents/MacOS/bin/python3"),
    (("/Applications/QGIS.app/Contents/MacOS/bin/python3", "/Applications/QGIS.app/Contents/MacOS/bin/python3.12"),
     "/Applications/QGIS.app/Contents/MacOS/bin/python3.12"),
    (("/Applications/QGIS.app/Contents/MacOS/python3.12",),
     "/Applications/QGIS.app/Contents/MacOS/python3.12"),
    (("/Applications/QGIS.app/Contents/Frameworks/Python.framework/Versions/3.12/bin/python3.12",),
     "/Applications/QGIS.app/Contents/Frameworks/Python.framework/Versions/3.12/bin/python3.12"),
])
def test_macos_app_bundle_finds_the_bundled_python(present, expected):
    prefix = "/Applications/QGIS.app/Contents/Frameworks/Python.framework/Versions/3.12"
    assert deps.find_qgis_python("/Applications/QGIS.app/Contents/MacOS/QGIS", "darwin", prefix,
                                 prefix, (3, 12), only(*present)) == expected


def test_no_python_found_is_none_and_the_plan_cannot_run(monkeypatch):
    assert deps.find_qgis_python("/usr/bin/qgis", "linux", "/usr", "/usr", (3, 11), only()) is None
    monkeypatch.setattr(deps, "find_qgis_python", lambda: None)
    plan = deps.plan_install([deps.REQUIREMENTS[0]], target="/tmp/x",
                             torch_build=TorchBuild("cpu", CPU_INDEX_URL, "test"), distributions=[],
                             pip_found=True)
    assert not plan.can_run
    assert "could not be found" in plan.warnings[0]


def test_the_real_interpreter_is_found():
    found = deps.find_qgis_python()
    assert found and os.path.isfile(found)


# ----------------------------------------------------------------------------- the folder

def test_packages_dir_per_platform_and_override():
    assert deps.packages_dir({"XDG_DATA_HOME": "/data"}, "linux", (3, 11), "/home/u") == \
        "/data/drseg/python-packages/py3.11"
    assert deps.packages_dir({}, "linux", (3, 12), "/home/u") == \
        "/home/u/.local/share/drseg/python-packages/py3.12"
    assert deps.packages_dir({"LOCALAPPDATA": r"C:\Users\u\AppData\Local"}, "win32", (3, 12),
                             r"C:\Users\u") == r"C:\Users\u\AppData\Local\drseg\python-packages\py3.12"
    assert deps.packages_dir({}, "darwin", (3, 12), "/Users/u") == \
        "/Users/u/Library/Application Support/drseg/python-packages/py3.12"
    assert deps.packages_dir({deps.PACKAGES_ENV: "/srv/pkgs"}, "linux", (3, 11)) == "/srv/pkgs"


def test_folder_is_appended_once_and_makes_its_modules_importable(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    missing_folder = tmp_path / "absent"
    assert deps.add_packages_dir_to_path(str(missing_folder)) is False
    assert str(missing_folder) not in sys.path

    folder = tmp_path / "pkgs"
    (folder / "drseg_fake_dependency").mkdir(parents=True)
    (folder / "drseg_fake_dependency" / "__init__.py").write_text("VALUE = 7\n")
    requirement = Requirement("drseg_fake_dependency", "drseg-fake-dependency", "test")
    assert deps.find_missing([requirement]) == [requirement]
    first = sys.path[0]
    assert deps.add_packages_dir_to_path(str(folder)) is True
    assert deps.add_packages_dir_to_path(str(folder)) is True
    assert sys.path.count(str(folder)) == 1
    assert sys.path[-1] == str(folder) and sys.path[0] == first   # after QGIS's own packages
    assert deps.find_missing([requirement]) == []


def test_missing_modules_are_found_without_importing(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)      # simulates an absent package
    missing = deps.find_missing()
    assert [r.package for r in missing] == ["open_clip_torch"]
    imported = []
    assert deps.find_missing(importable=lambda m: imported.append(m) or m != "timm")[0].module == "timm"
    assert imported == [r.module for r in deps.REQUIREMENTS]
    for module in ("torch", "open_clip", "segment_anything", "rasterio"):
        assert any(r.module == module for r in deps.REQUIREMENTS)


# ----------------------------------------------------------------------------- torch build

def smi(returncode=0, output="| NVIDIA-SMI 550.54   Driver Version: 550.54   CUDA Version: 12.4 |"):
    calls = []

    def run(command, **kwargs):
        calls.append(command)
        return types.SimpleNamespace(returncode=returncode, stdout=output, stderr="")

    run.calls = calls
    return run


def no_which(name):
    return None


def test_linux_without_nvidia_gets_cpu_wheels():
    build = deps.choose_torch_build("linux", which=no_which, run=smi(), exists=only())
    assert build.kind == "cpu" and build.index_url == CPU_INDEX_URL
    assert "no NVIDIA driver" in build.reason


def test_linux_with_working_nvidia_smi_gets_the_default_index():
    run = smi()
    build = deps.choose_torch_build("linux", which=lambda n: "/usr/bin/nvidia-smi", run=run)
    assert build.kind == "cuda" and build.index_url is None and "CUDA 12.4" in build.reason
    assert run.calls == [["/usr/bin/nvidia-smi"]]


def test_nvidia_smi_that_fails_means_cpu():
    build = deps.choose_torch_build("linux", which=lambda n: "/usr/bin/nvidia-smi",
                                    run=smi(9, "NVIDIA-SMI has failed because it couldn't "
                                               "communicate with the NVIDIA driver"))
    assert build.kind == "cpu" and "couldn't communicate" in build.reason

    def broken(*a, **k):
        raise subprocess.TimeoutExpired("nvidia-smi", 15)

    assert deps.choose_torch_build("linux", which=lambda n: "/x/nvidia-smi", run=broken).kind == "cpu"


@pytest.mark.parametrize("driver,tag", [("12.9", "cu128"), ("12.6", "cu126"), ("12.4", "cu118"),
                                        ("11.4", None)])
def test_windows_picks_the_cuda_index_the_driver_supports(driver, tag):
    build = deps.choose_torch_build("win32", which=no_which,
                                    run=smi(output=f"CUDA Version: {driver}"),
                                    exists=only(r"C:\Windows\System32\nvidia-smi.exe"))
    if tag:
        assert build.kind == "cuda" and build.index_url == f"https://download.pytorch.org/whl/{tag}"
    else:
        assert build.kind == "cpu" and "too old" in build.reason


def test_macos_uses_the_standard_wheels():
    build = deps.choose_torch_build("darwin", which=lambda n: 1 / 0)
    assert build.kind == "default" and build.index_url is None


# ----------------------------------------------------------------------------- constraints

def test_constraints_pin_what_qgis_has():
    lines = deps.build_constraints([("numpy", "1.26.4"), ("Pillow", "9.4.0"), ("torch", "2.5.1+cu121"),
                                    ("pip", "23.0.1"), ("setuptools", "66.1.1"),
                                    ("python_apt", "2.6.0~rc1"), ("NumPy", "2.0.0"),
                                    ("typing_extensions", "4.4.0")])
    assert lines == ["numpy==1.26.4", "pillow==9.4.0", "torch==2.5.1", "typing-extensions==4.4.0",
                     "affine<3"]
    assert "affine==2.4.0" in deps.build_constraints([("affine", "2.4.0")])
    assert "affine<3" not in deps.build_constraints([("affine", "2.4.0")])


def test_distributions_inside_the_plugin_folder_are_not_pinned(tmp_path, monkeypatch):
    def fake_dist(folder, name, version):
        info = folder / f"{name}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")

    fake_dist(tmp_path / "qgis_site", "drseg_qgis_side", "1.2.0")
    fake_dist(tmp_path / "plugin_pkgs", "drseg_plugin_side", "3.0.0")
    monkeypatch.setattr(sys, "path", list(sys.path) + [str(tmp_path / "qgis_site"),
                                                        str(tmp_path / "plugin_pkgs")])
    found = dict(deps.installed_distributions(exclude_under=[str(tmp_path / "plugin_pkgs")]))
    assert found["drseg_qgis_side"] == "1.2.0"
    assert "drseg_plugin_side" not in found
    assert found["numpy"] == importlib.metadata.version("numpy")


# ----------------------------------------------------------------------------- the plan

def test_cpu_plan_command_constraints_and_summary(tmp_path):
    wanted = [r for r in deps.REQUIREMENTS if r.module in ("torch", "open_clip", "rasterio")]
    target = str(tmp_path / "py3.11")
    plan = deps.plan_install(wanted, target=target, python="/usr/bin/python3.11",
                             torch_build=TorchBuild("cpu", CPU_INDEX_URL, "no NVIDIA driver"),
                             distributions=[("numpy", "1.26.4"), ("torch", "2.0.0"), ("GDAL", "3.6.2")],
                             pip_found=True)
    command = plan.command
    assert command[:4] == ["/usr/bin/python3.11", "-m", "pip", "install"]
    assert command[command.index("--target") + 1] == target
    assert command[command.index("--constraint") + 1] == plan.constraints_path == target + "-constraints.txt"
    assert command[command.index("--extra-index-url") + 1] == CPU_INDEX_URL
    assert "--upgrade" in command and "--progress-bar" in command
    assert command[-3:] == ["torch", "open_clip_torch", "rasterio"]
    assert "torch==2.0.0" not in plan.constraints          # what is installed is not pinned
    assert plan.constraints == ["numpy==1.26.4", "gdal==3.6.2", "affine<3"]
    plan.write_constraints()
    text = open(plan.constraints_path, encoding="utf-8").read()
    assert "numpy==1.26.4\n" in text and "affine<3" in text
    summary = plan.summary()
    for part in (target, "/usr/bin/python3.11", "open_clip_torch", "CPU", "numpy==1.26.4"):
        assert part in summary
    assert plan.environment()["PIP_USER"] == "0"


def test_no_extra_index_without_torch_and_windows_quoting(tmp_path):
    plan = deps.plan_install([r for r in deps.REQUIREMENTS if r.module == "tqdm"],
                             target=r"C:\Users\A B\drseg\py3.12",
                             python=r"C:\Program Files\QGIS 3.34\apps\Python312\python.exe",
                             torch_build=TorchBuild("cpu", CPU_INDEX_URL, ""), distributions=[],
                             pip_found=True)
    assert "--extra-index-url" not in plan.command
    text = plan.command_text("win32")
    assert text.startswith('"C:\\Program Files\\QGIS 3.34\\apps\\Python312\\python.exe" -m pip install')
    assert '--target "C:\\Users\\A B\\drseg\\py3.12"' in text


def test_plan_warns_when_pip_is_missing_and_nothing_missing_means_nothing_to_do():
    plan = deps.plan_install([deps.REQUIREMENTS[-1]], target="/tmp/t", python="/usr/bin/python3",
                             torch_build=TorchBuild("default", None, ""), distributions=[],
                             pip_found=False)
    assert any("pip is not installed" in w for w in plan.warnings)
    assert "pip is not installed" in plan.summary()
    empty = deps.plan_install([], target="/tmp/t", python="/usr/bin/python3", distributions=[],
                              pip_found=True)
    assert not empty.can_run and "already installed" in empty.summary()
