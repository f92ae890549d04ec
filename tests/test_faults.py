"""The bad-input and fault matrix (issue 11): every case gives a correct result or one clear line
(exit 2), never a traceback, a damaged older file or a leftover beside the outputs.

One case is one line of FAULTS: (name, input builder, CLI arguments, exit code, stderr substring,
files present, files absent, files unchanged). Arguments and file names may use the placeholders
of `Place` below ({raster}, {dir}, {other}, ...). Every case also checks that no hidden
`.drseg-*` work file is left in any folder it used.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, Tuple

import numpy as np
import pytest
import rasterio

from support.rasters import write_raster
from support.tiny_models import TINY_CLIP_CONFIG, write_tiny_clip_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- places: folders a case can write into ---------------------------------------------------------

def _mount_tmpfs(path, *options) -> bool:
    os.makedirs(path, exist_ok=True)
    opts = ",".join(options if any(o.startswith("size=") for o in options) else ("size=4m",) + options)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def _umount(path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def mounted(path, *options):
    """A tmpfs at `path` (another file system, read-only, or a tiny 'full disk'); skips the test
    where mounting is not allowed."""
    if os.geteuid() != 0 or not _mount_tmpfs(path, *options):
        pytest.skip("mounting a tmpfs needs root (another file system / full disk / read-only)")
    try:
        yield str(path)
    finally:
        _umount(path)


def make_read_only(path) -> str:
    """A folder nobody can write in (root ignores permissions: then a read-only mount)."""
    os.makedirs(path, exist_ok=True)
    if os.geteuid() == 0:
        if not _mount_tmpfs(path, "ro"):
            pytest.skip("a read-only folder for root needs a read-only mount")
    else:
        os.chmod(path, 0o555)
    return str(path)


# -- inputs --------------------------------------------------------------------------------------

def rgb_raster(path, size=(3, 64, 80), seed=0):
    data = np.random.default_rng(seed).integers(0, 255, size, dtype=np.uint8)
    return write_raster(path, data)


def truncated_raster(path):
    """A GeoTIFF whose header opens but whose image data is cut off (an interrupted copy)."""
    full = str(path) + ".full.tif"
    data = np.random.default_rng(1).integers(0, 255, (3, 300, 300), dtype=np.uint8)
    with rasterio.open(full, "w", driver="GTiff", width=300, height=300, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=rasterio.transform.from_origin(5e5, 4.1e6, 1, 1),
                       tiled=True, blockxsize=64, blockysize=64, compress="deflate") as dst:
        dst.write(data)
    blob = open(full, "rb").read()
    os.remove(full)
    with open(path, "wb") as handle:
        handle.write(blob[:len(blob) // 2])
    return str(path)


def digest(path) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


@dataclass
class Place:
    """What a case's placeholders stand for."""
    dir: str          # the case's own folder
    raster: str       # a valid input raster
    tiny: str         # the tiny CLIP config
    extra: Dict[str, str] = field(default_factory=dict)

    def fill(self, text: str) -> str:
        return text.format(dir=self.dir, raster=self.raster, tiny=self.tiny, **self.extra)


def _old_outputs(place: Place) -> None:
    """Valid older outputs at {dir}/o.gpkg and {dir}/o.tif, which a failing run must keep."""
    from drseg.cli import main

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["segment", place.raster, "--classes", "water;road", "--out",
                     f"{place.dir}/o.gpkg", "--raster-out", f"{place.dir}/o.tif", "--quiet",
                     *TINY]) == 0


# Builders: name -> function(place, tmp_path) that prepares inputs and placeholders.
def build_truncated(place, tmp):
    place.extra["bad"] = truncated_raster(tmp / "cut.tif")


def build_old(place, tmp):
    _old_outputs(place)


def build_symlink(place, tmp):
    os.symlink(place.raster, os.path.join(place.dir, "link.tif"))


def build_hardlink(place, tmp):
    os.link(place.raster, os.path.join(place.dir, "hard.tif"))


def build_other_fs(place, tmp):
    place.extra["other"] = place.stack.enter_context(mounted(tmp / "other"))


def build_read_only(place, tmp):
    place.extra["ro"] = make_read_only(tmp / "ro")
    place.stack.callback(_umount, tmp / "ro")


def build_full_disk(place, tmp):
    """A disk holding the older outputs with a few kB to spare, and a large input."""
    import shutil

    _old_outputs(place)
    olds = [f"{place.dir}/o.tif", f"{place.dir}/o.gpkg"]
    pages = sum(-(-os.path.getsize(p) // 4096) for p in olds) + 3
    place.extra["full"] = place.stack.enter_context(mounted(tmp / "full", f"size={pages * 4}k"))
    for path in olds:
        shutil.copy(path, place.extra["full"])
    place.extra["big"] = rgb_raster(tmp / "big.tif", (3, 800, 800), seed=3)


def build_nan_weights(place, tmp):
    """The tiny CLIP's weights with NaN in the image tower (a damaged checkpoint)."""
    import open_clip
    import torch

    model = open_clip.CLIP(**TINY_CLIP_CONFIG)
    state = model.state_dict()
    state["visual.proj"] = torch.full_like(state["visual.proj"], float("nan"))
    place.extra["nan"] = str(tmp / "nan.pt")
    torch.save(state, place.extra["nan"])


class _Evil:
    """Unpickling this creates the file `marker`: proof that loading ran code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def build_checkpoints(place, tmp):
    """Files a user might hand over as weights: code-running pickles, CLIP weights, broken
    safetensors (all named as the real thing)."""
    import pickle

    import open_clip
    import torch

    d = place.dir
    place.extra["marker"] = f"{d}/marker"
    with open(f"{d}/evil.pt", "wb") as handle:
        pickle.dump({"visual.proj": _Evil(f"{d}/marker")}, handle, protocol=2)
    torch.save({"visual.proj": _Evil(f"{d}/marker")}, f"{d}/evil_zip.pt")
    torch.save(open_clip.CLIP(**TINY_CLIP_CONFIG).state_dict(), f"{d}/clip.pt")
    blob = b"\x10\x00\x00\x00\x00\x00\x00\x00" + b'{"a": [1, 2, 3]}' + b"\x00" * 5
    open(f"{d}/bad_header.safetensors", "wb").write(blob)
    open(f"{d}/garbage.safetensors", "wb").write(bytes(range(256)) * 8)
    open(f"{d}/huge_header.safetensors", "wb").write((2 ** 40).to_bytes(8, "little") + b"{}")
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in open_clip.CLIP(**TINY_CLIP_CONFIG).state_dict().items()},
              f"{d}/cut.safetensors")
    data = open(f"{d}/cut.safetensors", "rb").read()
    open(f"{d}/cut.safetensors", "wb").write(data[:len(data) // 2])


def build_loveda(place, tmp):
    """A two-image LoveDA set with saved predictions (scoring needs no model)."""
    from PIL import Image

    for rel, value in (("LoveDA/img_dir/val/a.png", np.full((2, 4, 3), 90)),
                       ("LoveDA/ann_dir/val/a.png", [[1, 1, 2, 2], [3, 3, 0, 4]]),
                       ("preds/a.png", [[1, 2, 2, 2], [3, 1, 5, 4]])):
        path = os.path.join(place.dir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(np.asarray(value, np.uint8)).save(path)


BUILDERS: Dict[str, Callable] = {
    "loveda": build_loveda,
    "checkpoints": build_checkpoints,
    "nan_weights": build_nan_weights,
    "": lambda place, tmp: None,
    "truncated": build_truncated,
    "old": build_old,
    "symlink": build_symlink,
    "hardlink": build_hardlink,
    "other_fs": build_other_fs,
    "read_only": build_read_only,
    "full_disk": build_full_disk,
}

TINY = ["--clip-weights", "random", "--device", "cpu"]  # + --clip-model {tiny}, added per case
SEG = "segment {raster} --classes water;road --quiet --clip-model {tiny} --clip-weights random --device cpu"


@dataclass(frozen=True)
class Fault:
    name: str
    build: str                       # key of BUILDERS
    args: str                        # command line (placeholders allowed), split on spaces
    exit: int
    stderr: str = ""                 # substring of stderr ('' for a success)
    present: Tuple[str, ...] = ()
    absent: Tuple[str, ...] = ()
    unchanged: Tuple[str, ...] = ()  # existing before the run, byte-identical after


F = Fault
FAULTS = [
    F("ok", "", SEG + " --out {dir}/o.gpkg --raster-out {dir}/o.tif", 0, "",
      present=("{dir}/o.gpkg", "{dir}/o.tif")),
    # output = input
    F("raster-out is the input", "", SEG + " --raster-out {raster}", 2, "is the input",
      unchanged=("{raster}",)),
    F("raster-out is a symlink to the input", "symlink", SEG + " --raster-out {dir}/link.tif", 2,
      "is the input", unchanged=("{raster}",)),
    F("raster-out is a hard link to the input", "hardlink", SEG + " --raster-out {dir}/hard.tif", 2,
      "is the input", unchanged=("{raster}",)),
    F("out is the input through ..", "", SEG + " --raster-out {dir}/../" + "{name}/in.tif", 2,
      "is the input", unchanged=("{raster}",)),
    F("the two outputs are one file", "", SEG + " --raster-out {dir}/a.tif --out {dir}/a.tif", 2,
      "must end with .gpkg"),
    # destinations checked before any work
    F("raster-out folder missing", "old", SEG + " --out {dir}/o.gpkg --raster-out {dir}/nope/o.tif",
      2, "does not exist", unchanged=("{dir}/o.gpkg",)),
    F("raster-out folder read-only", "read_only", SEG + " --out {dir}/o.gpkg --raster-out {ro}/o.tif",
      2, "is not writable", absent=("{dir}/o.gpkg",)),
    F("out folder read-only", "read_only", SEG + " --out {ro}/o.gpkg", 2, "is not writable"),
    F("raster-out on another file system", "other_fs",
      SEG + " --out {dir}/o.gpkg --raster-out {other}/o.tif", 0, "",
      present=("{dir}/o.gpkg", "{other}/o.tif")),
    # full disk: older outputs stay, one line saying so
    F("full disk, class raster", "full_disk",
      "segment {big} --classes water;road --quiet --clip-model {tiny} --clip-weights random "
      "--device cpu --raster-out {full}/o.tif", 2, "disk is full", unchanged=("{full}/o.tif",)),
    F("full disk, both outputs", "full_disk",
      "segment {big} --classes water;road --quiet --clip-model {tiny} --clip-weights random "
      "--device cpu --out {full}/o.gpkg --raster-out {full}/o.tif", 2, "disk is full",
      unchanged=("{full}/o.tif", "{full}/o.gpkg")),
    # parameters: non-finite, zero, absurd
    F("extent with infinity", "", SEG + " --out {dir}/o.gpkg --extent=500000,-inf,inf,4100000", 2,
      "not a finite number", absent=("{dir}/o.gpkg",)),
    F("extent nan", "", SEG + " --out {dir}/o.gpkg --extent=nan,4099970,500010,4100000", 2,
      "not a finite number"),
    F("resolution nan", "", SEG + " --out {dir}/o.gpkg --resolution nan", 2, "positive number"),
    F("resolution inf", "", SEG + " --out {dir}/o.gpkg --resolution inf", 2, "positive number"),
    F("resolution 0 is not native", "", SEG + " --out {dir}/o.gpkg --resolution 0", 2,
      "positive number"),
    F("resolution negative", "", SEG + " --out {dir}/o.gpkg --resolution=-1", 2, "positive number"),
    F("resolution 1e9", "", SEG + " --out {dir}/o.gpkg --resolution 1e9", 2, "coarser than the whole area"),
    F("resolution 0.001 asks for a huge grid", "", SEG + " --out {dir}/o.gpkg --resolution 0.001", 2,
      "asks for a 40000×32000 px grid"),
    F("resolution 17x finer than native", "", SEG + " --out {dir}/o.gpkg --resolution 0.029", 2,
      "16× finer"),
    F("resolution 2x finer works", "", SEG + " --out {dir}/o.gpkg --resolution 0.25", 0, "",
      present=("{dir}/o.gpkg",)),
    F("window smaller than the patch", "", SEG + " --out {dir}/o.gpkg --window 8 --stride 4", 2,
      "smaller than the model's 16-px patch"),
    F("window zero", "", SEG + " --out {dir}/o.gpkg --window 0 --stride 1", 2, "positive"),
    F("NaN weights", "nan_weights", SEG.replace("random", "{nan}") + " --out {dir}/o.gpkg", 2,
      "NaN or infinity", absent=("{dir}/o.gpkg",)),
    # checkpoints: never run code, must fit the architecture, broken files are one line
    F("import a code-running pickle", "checkpoints",
      "models import clip-vit-b-16-openai {dir}/evil.pt --cache-dir {dir}/cache", 2,
      "could run code", absent=("{marker}", "{dir}/cache/ViT-B-16.pt")),
    F("import a code-running torch zip", "checkpoints",
      "models import dino-vit-b8 {dir}/evil_zip.pt --cache-dir {dir}/cache", 2,
      "could run code", absent=("{marker}",)),
    F("import CLIP weights as DINO", "checkpoints",
      "models import dino-vit-b8 {dir}/clip.pt --cache-dir {dir}/cache", 2,
      "does not match DINO model 'dino_vitb8'"),
    F("import tiny CLIP weights as ViT-B-16", "checkpoints",
      "models import clip-vit-b-16-openai {dir}/clip.pt --cache-dir {dir}/cache", 2,
      "do not fit"),
    F("segment with a code-running pickle", "checkpoints",
      SEG.replace("random", "{dir}/evil.pt") + " --out {dir}/o.gpkg", 2, "could run code",
      absent=("{marker}", "{dir}/o.gpkg")),
    F("safetensors with a bad header", "checkpoints",
      SEG.replace("random", "{dir}/bad_header.safetensors") + " --out {dir}/o.gpkg", 2, "safetensors"),
    F("safetensors that is garbage", "checkpoints",
      SEG.replace("random", "{dir}/garbage.safetensors") + " --out {dir}/o.gpkg", 2, "safetensors"),
    F("safetensors with a huge header length", "checkpoints",
      SEG.replace("random", "{dir}/huge_header.safetensors") + " --out {dir}/o.gpkg", 2, "safetensors"),
    F("truncated safetensors", "checkpoints",
      SEG.replace("random", "{dir}/cut.safetensors") + " --out {dir}/o.gpkg", 2, "safetensors"),
    F("import garbage named .safetensors", "checkpoints",
      "models import dino-vit-b8 {dir}/garbage.safetensors --cache-dir {dir}/cache", 2, ""),
    # model cache folders
    F("download into a read-only cache", "read_only", "models download dino-vit-b8 --quiet --cache-dir {ro}",
      2, "Cannot write in the model cache folder"),
    F("download into an uncreatable cache", "read_only",
      "models download dino-vit-b8 --quiet --cache-dir {ro}/sub", 2, "Cannot create the model cache folder"),
    F("import into an uncreatable cache", "checkpoints+read_only",
      "models import dino-vit-b8 {dir}/clip.pt --cache-dir {ro}/sub", 2,
      "Cannot create the model cache folder"),
    F("import into a read-only cache", "checkpoints+read_only",
      "models import dino-vit-b8 {dir}/clip.pt --cache-dir {ro}", 2, "Cannot write in the model cache"),
    # evaluation results
    F("evaluate --json into a read-only folder", "loveda+read_only",
      "evaluate ovss --dataset LoveDA --root {dir}/LoveDA --predictions {dir}/preds --quiet "
      "--json {ro}/m.json", 2, "is not writable"),
    F("evaluate --out read-only", "loveda+read_only",
      "evaluate ovss --dataset LoveDA --root {dir}/LoveDA --predictions {dir}/preds --quiet "
      "--out {ro}/results", 2, "is not writable"),
    F("evaluate --json is a folder", "loveda",
      "evaluate ovss --dataset LoveDA --root {dir}/LoveDA --predictions {dir}/preds --quiet "
      "--json {dir}/preds", 2, "is a folder"),
    F("evaluate --json works", "loveda",
      "evaluate ovss --dataset LoveDA --root {dir}/LoveDA --predictions {dir}/preds --quiet "
      "--json {dir}/res/m.json", 0, "", present=("{dir}/res/m.json",)),
    # unreadable input
    F("truncated GeoTIFF", "truncated", SEG.replace("{raster}", "{bad}") + " --out {dir}/o.gpkg", 2,
      "cannot be read", absent=("{dir}/o.gpkg",)),
]


def _ids(cases):
    return [c.name.replace(" ", "-") for c in cases]


def run_cli(argv):
    """`python -m drseg` in this process: -> (exit code, stdout, stderr)."""
    from drseg.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's own errors
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def leftovers(folders):
    found = []
    for folder in folders:
        if os.path.isdir(folder):
            found += [os.path.join(folder, n) for n in os.listdir(folder) if n.startswith(".drseg-")]
    return found


@pytest.mark.parametrize("case", FAULTS, ids=_ids(FAULTS))
def test_fault_matrix(case, tmp_path):
    case_dir = tmp_path / "case"
    case_dir.mkdir()
    tiny = write_tiny_clip_config(tmp_path)
    with contextlib.ExitStack() as stack:
        place = Place(str(case_dir), rgb_raster(case_dir / "in.tif"), str(tiny))
        place.stack = stack
        place.extra["name"] = "case"
        for build in case.build.split("+"):
            BUILDERS[build](place, tmp_path)
        before = {place.fill(p): digest(place.fill(p)) for p in case.unchanged}
        argv = [place.fill(a) for a in case.args.split(" ")]

        code, out, err = run_cli(argv)

        assert code == case.exit, f"{case.name}: exit {code}\nstdout: {out}\nstderr: {err}"
        assert "Traceback" not in err
        if case.exit == 2:
            lines = [line for line in err.strip().splitlines() if line.strip()]
            assert lines and lines[-1].startswith("error: "), err
            assert case.stderr in lines[-1], err
        for path in case.present:
            assert os.path.exists(place.fill(path)), path
        for path in case.absent:
            assert not os.path.exists(place.fill(path)), path
        for path, sha in before.items():
            assert digest(path) == sha, f"{path} was changed"
        used = {str(case_dir), str(tmp_path)} | {v for v in place.extra.values() if os.path.isdir(v)}
        assert leftovers(used) == []


# -- cases with an oracle: the result must be right, not only free of errors -----------------------

def _oracle_run(path, out_dir, name, **kw):
    from support.oracles import ColourOracleScorer
    from drseg.core.segment import SegmentationRequest, run_segmentation

    colours = dict(ColourOracleScorer().colours, field=(215, 205, 150))
    request = SegmentationRequest(raster=path, classes="building; road; water; tree; field",
                                  out_raster=str(out_dir / f"{name}.tif"), threshold=0.0, **kw)
    run_segmentation(request, scorer=ColourOracleScorer(colours))
    with rasterio.open(out_dir / f"{name}.tif") as src:
        return src.read(1)


def test_paletted_raster_is_read_through_its_colour_table(tmp_path):
    """A paletted GeoTIFF whose palette holds the scene colours segments like the RGB scene."""
    from support.rasters import SCENE_COLOURS, scene_image, scene_labels

    labels = scene_labels(240, 256)
    rgb = write_raster(tmp_path / "rgb.tif", scene_image(labels))
    with rasterio.open(tmp_path / "pal.tif", "w", driver="GTiff", width=256, height=240, count=1,
                       dtype="uint8", crs="EPSG:32633",
                       transform=rasterio.transform.from_origin(5e5, 4.1e6, 0.5, 0.5)) as dst:
        dst.write(labels[None])
        table = {0: (215, 205, 150, 255)}
        table.update({i: (*c, 255) for i, c in enumerate(SCENE_COLOURS.values(), start=1)})
        dst.write_colormap(1, table)
    expected = _oracle_run(rgb, tmp_path, "from_rgb")
    assert (expected == np.where(labels == 0, 5, labels)).mean() > 0.95  # the oracle is right
    np.testing.assert_array_equal(_oracle_run(str(tmp_path / "pal.tif"), tmp_path, "from_pal"), expected)
    # resampled (nearest: indices are never blended into other palette entries)
    coarse_rgb = _oracle_run(rgb, tmp_path, "rgb_1m", resolution=1.0)
    coarse_pal = _oracle_run(str(tmp_path / "pal.tif"), tmp_path, "pal_1m", resolution=1.0)
    assert (coarse_pal == coarse_rgb).mean() > 0.97


def _zone_area(lon_span_deg, lat1, lat2, a=6378137.0, f=1 / 298.257223563):
    """Exact area of the WGS84 ellipsoid between two parallels over a longitude span (authalic q)."""
    import math

    e2 = f * (2 - f)
    e = math.sqrt(e2)

    def q(lat):
        s = math.sin(math.radians(lat))
        return (1 - e2) * (s / (1 - e2 * s * s) - math.log((1 - e * s) / (1 + e * s)) / (2 * e))

    return a * a / 2 * math.radians(lon_span_deg) * (q(lat2) - q(lat1))


@pytest.mark.parametrize("box", [(-60, 70, 60, 85), (0, 85, 170, 89.5), (10, -80, 130, -65),
                                 (10, 40, 10.01, 40.01)])
def test_geographic_area_matches_the_ellipsoid(box):
    """area_m2 of lon/lat boxes (edges along parallels) equals the analytic ellipsoidal zone area,
    near the poles too (a chord in the projection made large polygons 4-20x too small)."""
    import shapely
    from rasterio.crs import CRS

    from drseg.core.vectorize import AreaMeter

    polygon = shapely.box(*box)
    (area,) = AreaMeter(CRS.from_epsg(4326), box).area([polygon])
    expected = _zone_area(box[2] - box[0], min(box[1], box[3]), max(box[1], box[3]))
    assert abs(area) == pytest.approx(abs(expected), rel=1e-4)


# -- promises: signals, stale work folders, publishing a set ---------------------------------------

def _drseg_process(*args):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "drseg", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_termination_signals_stop_like_ctrl_c(signame, tmp_path):
    """kill / a closed terminal: exit 130, 'cancelled', the work folder removed, no output."""
    import signal
    import time

    tiny = write_tiny_clip_config(tmp_path, "tiny.json")
    # Large enough that the run is far from publishing when the signal comes (it is killed
    # long before it would finish, so the size costs only the writing of the raster).
    raster = rgb_raster(tmp_path / "big.tif", (3, 3000, 3000), seed=5)
    out = tmp_path / "out"
    out.mkdir()
    proc = _drseg_process("segment", raster, "--classes", "water;road", "--out", str(out / "o.gpkg"),
                          "--clip-model", str(tiny), "--clip-weights", "random", "--device", "cpu",
                          "--quiet")
    deadline = time.monotonic() + 120
    while not leftovers([str(out)]) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before its work folder could be seen"
    time.sleep(0.3)
    proc.send_signal(getattr(signal, signame))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "cancelled" in err and "Traceback" not in err
    assert os.listdir(out) == []


# Runs the command line with model loading slowed down deterministically: every parameter a
# model registers while it loads (core.interrupt.cancellable_loading) takes 0.2 s, and the first
# one leaves a marker file, so a test knows the process is loading a model.
SLOW_LOADING_CLI = """
import os, runpy, sys, time
import torch
from drseg.core import interrupt
marker = sys.argv.pop(1)

def slow(module, name, param):
    if interrupt._current.loading:
        if not os.path.exists(marker):
            open(marker, "w").close()
        time.sleep(0.2)

torch.nn.modules.module.register_module_parameter_registration_hook(slow)
sys.argv[0] = "drseg"
runpy.run_module("drseg", run_name="__main__", alter_sys=True)
"""


def test_ctrl_c_while_a_model_loads_exits_130_in_one_line(tmp_path):
    """Ctrl-C while the CLIP model is being built: exit 130, one line 'cancelled', no traceback,
    nothing left in the output folder."""
    import signal
    import time

    tiny = write_tiny_clip_config(tmp_path, "tiny.json")
    out = tmp_path / "out"
    out.mkdir()
    marker = tmp_path / "loading"
    env = dict(os.environ, PYTHONPATH=os.path.dirname(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_LOADING_CLI, str(marker), "segment", rgb_raster(tmp_path / "in.tif"),
         "--classes", "water;road", "--out", str(out / "o.gpkg"), "--raster-out", str(out / "o.tif"),
         "--clip-model", str(tiny), "--clip-weights", "random", "--device", "cpu", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(tmp_path))
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists() and proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["cancelled"], err
    assert os.listdir(out) == [] and leftovers([str(out), str(tmp_path)]) == []


def test_stale_work_folders_of_dead_runs_are_swept(tmp_path):
    """Leftovers of a killed run (its process gone) are removed by the next run into the folder;
    folders of live processes, of other hosts or without an owner record are left alone."""
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    folders = {"dead": f"{host} {dead.pid}", "live": f"{host} {os.getppid()}",
               "other-host": f"elsewhere.example {dead.pid}", "no-owner": None}
    for name, owner in folders.items():
        path = tmp_path / f".drseg-{name}"
        path.mkdir()
        (path / "score.tif").write_bytes(b"x" * 1000)
        if owner:
            (path / "owner").write_text(owner + "\n")
    (tmp_path / f".drseg-stage-{dead.pid}-o.tif").write_bytes(b"partial copy")
    tiny = write_tiny_clip_config(tmp_path, "tiny.json")
    code, _, err = run_cli(["segment", rgb_raster(tmp_path / "in.tif"), "--classes", "water",
                            "--out", str(tmp_path / "o.gpkg"), "--quiet", "--clip-model", str(tiny),
                            *TINY])
    assert code == 0, err
    assert sorted(leftovers([str(tmp_path)])) == sorted(
        str(tmp_path / f".drseg-{n}") for n in ("live", "other-host", "no-owner"))


def _set_of_outputs(tmp_path):
    tiny = write_tiny_clip_config(tmp_path, "tiny.json")
    place = Place(str(tmp_path), rgb_raster(tmp_path / "in.tif"), str(tiny))
    _old_outputs(place)
    old = {p: digest(tmp_path / p) for p in ("o.gpkg", "o.tif")}
    argv = ["segment", rgb_raster(tmp_path / "other.tif", seed=9), "--classes", "water;road;tree",
            "--out", str(tmp_path / "o.gpkg"), "--raster-out", str(tmp_path / "o.tif"), "--quiet",
            "--clip-model", str(tiny), *TINY]
    return argv, old


def test_ctrl_c_while_publishing_gives_the_whole_new_set(tmp_path, monkeypatch):
    """An interrupt between two outputs' renames must not leave one new and one old file."""
    import signal

    from drseg.core import outputs

    argv, old = _set_of_outputs(tmp_path)
    real_replace = os.replace
    calls = []

    def replace_then_interrupt(src, dst):
        done = real_replace(src, dst)
        if os.path.basename(dst) in old:   # the first output is in place: Ctrl-C now
            calls.append(dst)
            if len(calls) == 1:
                os.kill(os.getpid(), signal.SIGINT)
        return done

    monkeypatch.setattr(outputs.os, "replace", replace_then_interrupt)
    code, _, err = run_cli(argv)
    monkeypatch.undo()
    new = {p: digest(tmp_path / p) for p in old}
    changed = [p for p in old if new[p] != old[p]]
    assert (code, changed) in ((0, ["o.gpkg", "o.tif"]), (130, [])), (code, changed, err)
    assert leftovers([str(tmp_path)]) == []


def test_a_failed_rename_keeps_the_whole_old_set(tmp_path, monkeypatch):
    from drseg.core import outputs

    argv, old = _set_of_outputs(tmp_path)
    real_replace = os.replace

    def second_output_fails(src, dst):
        if os.path.basename(src) == "polygons.gpkg":
            raise OSError(5, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(outputs.os, "replace", second_output_fails)
    code, _, err = run_cli(argv)
    monkeypatch.undo()
    assert code == 2 and "older outputs were kept" in err, err
    assert {p: digest(tmp_path / p) for p in old} == old
    assert leftovers([str(tmp_path)]) == []


def test_cancel_after_publishing_is_too_late_the_run_is_done(tmp_path, monkeypatch):
    """Once every output is in place the run is done: no 'cancelled' with new files on disk."""
    from support.oracles import ColourOracleScorer
    from drseg.core import segment

    published = []
    real = segment.publish_all
    monkeypatch.setattr(segment, "publish_all", lambda pairs: (real(pairs), published.append(1)))
    request = segment.SegmentationRequest(raster=rgb_raster(tmp_path / "in.tif"), classes="water",
                                          out_raster=str(tmp_path / "o.tif"))
    result = segment.run_segmentation(request, scorer=ColourOracleScorer(),
                                      cancelled=lambda: bool(published))
    assert result.raster_path == str(tmp_path / "o.tif") and os.path.exists(result.raster_path)


def test_import_of_weights_that_fit_says_what_was_checked(tmp_path, monkeypatch):
    """Weights that fit the entry's architecture (here a tiny DINO ViT-B/8 of the same definition,
    since the real one is 340 MB) are imported; the message says what could be checked."""
    import torch

    from support.tiny_models import TINY_DINO_DIMS
    from drseg.core.models import weights_fit
    from drseg.core.drseg.dino import build_timm_vit

    def tiny_meta(entry):
        with torch.device("meta"):
            return build_timm_vit(weights_fit.dino_name(entry.architecture), **TINY_DINO_DIMS)

    monkeypatch.setattr(weights_fit, "build_meta_model", tiny_meta)
    torch.save(build_timm_vit("dino_vitb8", **TINY_DINO_DIMS).state_dict(), tmp_path / "dino.pth")
    code, out, err = run_cli(["models", "import", "dino-vit-b8", str(tmp_path / "dino.pth"),
                              "--cache-dir", str(tmp_path / "cache")])
    assert code == 0, err
    assert "checked against the vit_base_patch8_224.dino architecture" in out
    assert "no size or SHA-256" in out


def test_a_mirror_that_never_answers_shows_retries_and_gives_up(tmp_path, monkeypatch):
    """A server that accepts connections and never replies: each retry is shown, and the download
    gives up after the retries (DOWNLOAD_RETRIES + 1 attempts of the configured timeout)."""
    import socket
    import threading

    from drseg.core.models import download as dl

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted = []

    def accept_and_stay_silent():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(conn)

    threading.Thread(target=accept_and_stay_silent, daemon=True).start()
    monkeypatch.setenv(dl.TIMEOUT_ENV, "0.3")
    try:
        code, _, err = run_cli(["models", "download", "dino-vit-b8", "--quiet", "--cache-dir",
                                str(tmp_path / "cache"), "--mirror",
                                f"http://127.0.0.1:{server.getsockname()[1]}/"])
    finally:
        server.close()
        for conn in accepted:
            conn.close()
    assert code == 2 and "Traceback" not in err
    assert [f"retry {i} of {dl.DOWNLOAD_RETRIES}" in err for i in (1, 2)] == [True, True], err
    assert "no answer within 0.3 s" in err and "run the download again" in err
    assert len(accepted) == dl.DOWNLOAD_RETRIES + 1
    assert dl.DOWNLOAD_TIMEOUT * (dl.DOWNLOAD_RETRIES + 1) <= 30


def test_no_pretrained_weights_warning_when_we_load_the_weights(caplog):
    """open_clip warns 'No pretrained weights loaded' for every named model we build before
    loading the weights ourselves; the user must not see it."""
    import logging

    import open_clip

    from drseg.core.models.clip import load_clip

    with caplog.at_level(logging.WARNING):
        open_clip.create_model("ViT-B-32", pretrained=None, device="meta")
    assert "No pretrained weights loaded" in caplog.text  # what the user saw before
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_clip("ViT-B-32", "random")
    assert "No pretrained weights loaded" not in caplog.text


def test_geopackage_on_a_full_disk_is_one_line_naming_the_destination(tmp_path, capfd):
    """SQLite's 'database or disk is full' with the hidden temporary file's SQL becomes one short
    line with 'disk is full' and the name the user chose."""
    import shapely
    from rasterio.crs import CRS

    from drseg.core.errors import OutputError
    from drseg.core.gpkg import PolygonLayerWriter

    with mounted(tmp_path / "small", "size=160k") as small:
        writer = None
        with pytest.raises(OutputError) as failure:
            writer = PolygonLayerWriter(f"{small}/hidden-tmp.gpkg",
                                        "layer", CRS.from_epsg(32633), [("name", "str")],
                                        destination="/data/result.gpkg")
            rng = np.random.default_rng(0)
            for i in range(20000):
                x, y = rng.uniform(0, 1e4, 2)
                writer.add(shapely.box(x, y, x + 1, y + 1).buffer(0.3, 64), name="x" * 200)
            writer.close()
        message = str(failure.value)
        assert "disk is full" in message and "/data/result.gpkg" in message
        assert "\n" not in message and len(message) < 300 and "hidden-tmp" not in message
    assert "Exception ignored" not in capfd.readouterr().err  # GDAL's failing clean-up is quiet
