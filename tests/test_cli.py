"""`python -m drseg segment ...` as a user runs it: exit codes, one-line errors, outputs."""
import os
import subprocess
import sys

import numpy as np
import rasterio

from conftest import write_raster

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def drseg(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "drseg", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_segment_writes_outputs_and_exits_zero(tmp_path, tiny_clip_config):
    data = np.random.default_rng(0).integers(0, 255, (3, 120, 140), dtype=np.uint8)
    path = write_raster(tmp_path / "in.tif", data)
    proc = drseg("segment", path, "--classes", "building,roof; water", "--out", str(tmp_path / "o.gpkg"),
                 "--raster-out", str(tmp_path / "o.tif"), "--clip-model", tiny_clip_config,
                 "--clip-weights", "random", "--device", "cpu", "--threshold", "0.2")
    assert proc.returncode == 0, proc.stderr
    assert "polygons" in proc.stdout and "wrote" in proc.stdout
    with rasterio.open(tmp_path / "o.tif") as out, rasterio.open(path) as ref:
        assert out.transform == ref.transform and out.crs == ref.crs
    assert os.path.getsize(tmp_path / "o.gpkg") > 0


def test_bad_input_is_one_line_and_exit_two(tmp_path, tiny_clip_config):
    missing = drseg("segment", str(tmp_path / "nope.tif"), "--classes", "water", "--out", str(tmp_path / "o.gpkg"))
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1].startswith("error: Cannot open raster")
    assert "Traceback" not in missing.stderr

    path = write_raster(tmp_path / "in.tif", np.zeros((3, 20, 20), np.uint8))
    empty = drseg("segment", path, "--classes", " ; ", "--out", str(tmp_path / "o.gpkg"),
                  "--clip-model", tiny_clip_config, "--clip-weights", "random")
    assert empty.returncode == 2 and "class prompt is empty" in empty.stderr
    no_output = drseg("segment", path, "--classes", "water")
    assert no_output.returncode == 2 and "--out" in no_output.stderr
    assert sorted(os.listdir(tmp_path)) == ["in.tif", "tiny_clip.json"]
