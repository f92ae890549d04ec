"""Adapters as local catalog entries: `models list` shows them from their safetensors header,
`models import adapter FILE` adds one, `adapt --out NAME` writes one into the cache, and
`--adapter NAME` finds it (an adapter of other base weights is still refused)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from adapt_scene import pixel_box, write_polygons
from conftest import write_raster

from drseg.cli.app import main
from drseg.core.adapt.adapter import Adapter, ClassPrompt, save_adapter
from drseg.core.adapt.catalog import adapter_info, list_adapters, resolve_adapter
from drseg.core.errors import InputError

METRICS = {"held_out": "validation", "before": {"mIoU": 41.0, "per_class": {}},
           "after": {"mIoU": 63.5, "per_class": {}}, "train_chips": 12, "validation_chips": 4}


@pytest.fixture
def base(tmp_path, tiny_clip_config):
    """The tiny CLIP's config and a weights file of it (seed 0) with its SHA-256."""
    from safetensors.torch import save_file

    from drseg.core.models.clip import load_clip
    from drseg.core.models.download import sha256_of

    torch.manual_seed(0)
    model = load_clip(tiny_clip_config, "random", "cpu")[0]
    weights = str(tmp_path / "tiny.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    return tiny_clip_config, weights, sha256_of(weights)


def make_adapter(path, base, classes=("meadow", "roof"), level="prompt", created="2026-11-29T12:00:00+00:00"):
    config, weights, sha = base
    offset = torch.zeros(len(classes), 32)
    offset[0, 0] = 0.5
    adapter = Adapter(level, config, weights, list(classes), {c: ClassPrompt(c) for c in classes},
                      -0.3, sha, offset if level != "calibrate" else None, metrics=METRICS,
                      created=created)
    return save_adapter(adapter, str(path))


def test_models_list_shows_the_adapters_in_the_cache(tmp_path, base, capsys):
    cache = tmp_path / "cache"
    (cache / "adapters").mkdir(parents=True)
    make_adapter(cache / "adapters" / "farm.safetensors", base)
    make_adapter(cache / "loose.safetensors", base, classes=("water",), level="calibrate")
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(cache / "some_model.safetensors"))   # not an adapter
    (cache / "adapters" / "broken.safetensors").write_bytes(b"\x01" * 20)

    assert main(["models", "list", "--cache-dir", str(cache)]) == 0
    printed = capsys.readouterr().out
    section = printed.split("ADAPTERS", 1)[1]
    lines = [line.strip() for line in section.strip().splitlines()[1:]]
    assert [line.split()[0] for line in lines] == ["farm", "loose"]
    assert "prompt, base " + base[0] in lines[0] and "(tiny.safetensors)" in lines[0]
    assert "classes: meadow, roof" in lines[0] and "held-out mIoU 41.0 -> 63.5" in lines[0]
    assert lines[0].endswith("2026-11-29T12:00:00+00:00")
    assert "calibrate" in lines[1] and "classes: water" in lines[1]

    assert main(["models", "list", "--cache-dir", str(cache), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    farm = data["adapters"][0]
    assert farm["name"] == "farm" and farm["metrics"]["after"]["mIoU"] == 63.5
    assert farm["path"] == str(cache / "adapters" / "farm.safetensors")
    # a family other than CLIP's has no adapters
    assert main(["models", "list", "--cache-dir", str(cache), "--family", "sam"]) == 0
    assert "ADAPTERS" not in capsys.readouterr().out


def test_adapter_metadata_is_read_without_torch(tmp_path, base):
    path = make_adapter(tmp_path / "a.safetensors", base)
    code = ("import sys; from drseg.core.adapt.catalog import adapter_info; "
            f"info = adapter_info({str(path)!r}); "
            "assert info.classes == ['meadow', 'roof'] and info.level == 'prompt', info; "
            "assert 'torch' not in sys.modules and 'safetensors' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with pytest.raises(InputError, match="not a safetensors file"):
        (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 16)
        adapter_info(str(tmp_path / "junk.safetensors"))


def test_import_then_segment_by_name_and_other_weights_are_refused(tmp_path, base, capsys):
    config, weights, _ = base
    cache = tmp_path / "cache"
    made = make_adapter(tmp_path / "my farm adapter.safetensors", base)
    assert main(["models", "import", "adapter", made, "--as", "farm", "--cache-dir", str(cache)]) == 0
    assert "adapter 'farm': imported" in capsys.readouterr().out
    assert os.path.isfile(made)                                          # the original is kept
    assert resolve_adapter("farm", str(cache)) == str(cache / "adapters" / "farm.safetensors")
    # not an adapter: refused before anything is copied
    other = tmp_path / "weights.safetensors"
    other.write_bytes(open(weights, "rb").read())
    assert main(["models", "import", "adapter", str(other), "--cache-dir", str(cache)]) == 2
    assert "not a DR-Seg adapter" in capsys.readouterr().err
    assert [a.name for a in list_adapters(str(cache))] == ["farm"]

    image = np.zeros((3, 64, 64), np.uint8)
    image[:, :, :32] = np.array((60, 170, 60))[:, None, None]
    raster = write_raster(tmp_path / "scene.tif", image)
    common = ["--clip-model", config, "--method", "clip", "--device", "cpu", "--quiet",
              "--cache-dir", str(cache)]
    assert main(["segment", raster, "--classes", "meadow;roof", "--raster-out",
                 str(tmp_path / "seg.tif"), "--clip-weights", weights, "--adapter", "farm"]
                + common) == 0
    assert "Adapter 'farm' (prompt, classes: meadow, roof)" in capsys.readouterr().out
    assert main(["segment", raster, "--classes", "meadow", "--raster-out", str(tmp_path / "x.tif"),
                 "--clip-weights", weights, "--adapter", "pasture"] + common) == 2
    err = capsys.readouterr().err
    assert "'pasture' not found" in err and "farm" in err
    # the catalog name resolves to the same check as a path: other base weights, one clear line
    assert main(["segment", raster, "--classes", "meadow", "--raster-out", str(tmp_path / "y.tif"),
                 "--clip-weights", "random", "--adapter", "farm"] + common) == 2
    assert "made for" in capsys.readouterr().err


def test_adapt_out_name_registers_the_adapter_in_the_cache(tmp_path, base, capsys):
    config, weights, _ = base
    cache = tmp_path / "cache"
    image = np.zeros((3, 128, 128), np.uint8)
    polygons = []
    for stripe, name in enumerate(["meadow", "roof"] * 2):
        image[:, :, stripe * 32:(stripe + 1) * 32] = np.array(
            (60, 170, 60) if name == "meadow" else (200, 60, 50))[:, None, None]
        polygons.append((name, pixel_box(stripe * 32 + 4, 0, stripe * 32 + 28, 128)))
    raster = write_raster(tmp_path / "scene.tif", image)
    labels = write_polygons(tmp_path / "labels.gpkg", polygons)
    assert main(["adapt", raster, "--labels", labels, "--class-field", "landuse", "--out", "stripes",
                 "--chip", "64", "--validation-share", "0", "--clip-model", config,
                 "--clip-weights", weights, "--device", "cpu", "--cache-dir", str(cache),
                 "--quiet"]) == 0
    capsys.readouterr()
    (info,) = list_adapters(str(cache))
    assert info.name == "stripes" and info.level == "calibrate"
    assert info.classes == ["meadow", "roof"] and info.metrics["after"]["mIoU"] is not None
    assert info.path == str(cache / "adapters" / "stripes.safetensors")
