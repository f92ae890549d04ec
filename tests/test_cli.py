"""`python -m drseg segment ...` as a user runs it: exit codes, one-line errors, outputs."""
import os
import subprocess
import sys

import numpy as np
import rasterio

from support.rasters import write_raster

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def drseg(*args, cwd=None, **environ):
    env = dict(os.environ, **environ,
               PYTHONPATH=os.path.dirname(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
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


def test_saved_settings_reach_segment_and_it_says_where_values_came_from(tmp_path, tiny_clip_config):
    """CLIP weights saved as a local file are used when the command line does not name any, and
    an option given on the command line wins; each run logs the source of its values."""
    from safetensors.torch import save_file

    from drseg.core.models.clip import load_clip
    from drseg.core.settings import Settings, save_settings

    model = load_clip(tiny_clip_config, "random", "cpu")[0]
    weights = str(tmp_path / "tiny_clip.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    data = np.random.default_rng(1).integers(0, 255, (3, 90, 100), dtype=np.uint8)
    raster = write_raster(tmp_path / "in.tif", data)
    common = ("segment", raster, "--classes", "building; water; tree", "--device", "cpu",
              "--threshold", "0")

    told = drseg(*common, "--raster-out", str(tmp_path / "told.tif"), "--clip-model",
                 tiny_clip_config, "--clip-weights", weights)
    assert told.returncode == 0, told.stderr
    assert f"setting CLIP weights: {weights} (parameter)" in told.stderr

    config = str(tmp_path / "settings.json")
    save_settings(Settings(clip_model=tiny_clip_config, clip_weights=weights, window=112,
                           stride=56), config)
    saved = drseg(*common, "--raster-out", str(tmp_path / "saved.tif"), "--window", "224",
                  "--stride", "112", DRSEG_CONFIG=config)
    overridden = drseg(*common, "--raster-out", str(tmp_path / "random.tif"),
                       "--clip-weights", "random", DRSEG_CONFIG=config)
    assert saved.returncode == 0, saved.stderr
    assert f"setting CLIP weights: {weights} (saved settings)" in saved.stderr
    assert f"setting CLIP model: {tiny_clip_config} (saved settings)" in saved.stderr
    assert "setting Window size: 224 (parameter)" in saved.stderr
    assert "setting Block size: 512 (default)" in saved.stderr
    with rasterio.open(tmp_path / "told.tif") as a, rasterio.open(tmp_path / "saved.tif") as b:
        assert np.array_equal(a.read(), b.read())   # the saved weights were the ones used
    assert overridden.returncode == 0, overridden.stderr
    assert "setting CLIP weights: random (parameter)" in overridden.stderr
    assert "setting Window size: 112 (saved settings)" in overridden.stderr
