"""`python -m drseg adapt` end to end on a synthetic raster and a polygon GeoPackage with the tiny
real CLIP; `segment --adapter`; resume after an interruption."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from adapt_scene import pixel_box, write_polygons
from conftest import write_raster

from drseg.cli.app import main
from drseg.core.adapt.adapter import load_adapter
from drseg.core.adapt.run import AdaptRequest, checkpoint_paths, run_adaptation
from drseg.core.errors import RunCancelled

COLOURS = {"meadow": (60, 170, 60), "roof": (200, 60, 50)}


@pytest.fixture
def labelled_scene(tmp_path, tiny_clip_config):
    """256×256 px: vertical stripes of meadow and roof 32 px wide, each labelled by a polygon
    leaving 4 px unlabelled at its edges; the labels are stored in EPSG:4326."""
    from safetensors.torch import save_file

    from drseg.core.models.clip import load_clip

    image = np.zeros((3, 256, 256), np.uint8)
    polygons = []
    for stripe in range(8):
        name = "meadow" if stripe % 2 == 0 else "roof"
        image[:, :, stripe * 32:(stripe + 1) * 32] = np.array(COLOURS[name])[:, None, None]
        polygons.append((name, pixel_box(stripe * 32 + 4, 0, stripe * 32 + 28, 256)))
    raster = write_raster(tmp_path / "scene.tif", image)
    labels = write_polygons(tmp_path / "labels.gpkg", polygons, crs="EPSG:4326")
    torch.manual_seed(0)
    model = load_clip(tiny_clip_config, "random", "cpu")[0]
    weights = str(tmp_path / "tiny.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    return raster, labels, tiny_clip_config, weights


def test_adapt_command_writes_adapter_report_and_segment_uses_it(tmp_path, labelled_scene, capsys):
    raster, labels, config, weights = labelled_scene
    out = str(tmp_path / "mine.safetensors")
    code = main(["adapt", raster, "--labels", labels, "--class-field", "landuse", "--out", out,
                 "--level", "finetune", "--steps", "3", "--lr", "0.01", "--chip", "64",
                 "--validation-share", "0.25", "--clip-model", config, "--clip-weights", weights,
                 "--device", "cpu", "--class-context", "--context-tokens", "3", "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    adapter = load_adapter(out)
    assert adapter.classes == ["meadow", "roof"] and adapter.level == "finetune"
    assert adapter.vision_state and adapter.base_sha256  # the weights file's SHA-256
    assert adapter.context.shape == (3, 32) and adapter.class_context.shape == (2, 3, 32)
    assert adapter.decoder() is not None
    report = json.loads(open(str(tmp_path / "mine.report.json")).read())
    assert report["train_chips"] + report["validation_chips"] == 16
    assert report["validation_chips"] == 4          # one block of 2×2 chips
    assert set(report["before"]["per_class"]) == {"meadow", "roof"}
    assert open(str(tmp_path / "mine.iou.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert "held-out mIoU" in printed
    assert not os.path.exists(checkpoint_paths(out)[0])   # removed after a completed run

    seg = str(tmp_path / "seg.tif")
    assert main(["segment", raster, "--classes", "meadow;roof;water", "--raster-out", seg,
                 "--clip-model", config, "--clip-weights", weights, "--method", "clip",
                 "--adapter", out, "--device", "cpu", "--quiet"]) == 0
    assert "Adapter" in capsys.readouterr().out
    # the adapter belongs to its base model: other weights are one clear error (exit 2)
    assert main(["segment", raster, "--classes", "roof", "--raster-out", str(tmp_path / "x.tif"),
                 "--clip-model", config, "--clip-weights", "random", "--method", "clip",
                 "--adapter", out, "--device", "cpu", "--quiet"]) == 2
    assert "made for" in capsys.readouterr().err


def test_resume_after_interruption_continues_from_the_checkpoint(tmp_path, labelled_scene):
    raster, labels, config, weights = labelled_scene

    def request(out, resume=False):
        return AdaptRequest(raster=raster, labels=labels, class_field="landuse", out=out,
                            level="finetune", steps=6, lr=0.01, chip=64, validation_share=0.25,
                            clip_model=config, clip_weights=weights, device="cpu", resume=resume)

    straight = run_adaptation(request(str(tmp_path / "straight.safetensors")))
    out = str(tmp_path / "resumed.safetensors")
    messages = []

    def cancelled():
        return any(m.startswith("Step 4/") for m in messages)

    with pytest.raises(RunCancelled):
        run_adaptation(request(out), progress=lambda f, m: messages.append(m), cancelled=cancelled)
    assert not os.path.exists(out) and os.path.exists(checkpoint_paths(out)[0])
    resumed = run_adaptation(request(out, resume=True))
    assert resumed.resumed_from == 4
    a, b = load_adapter(straight.adapter_path), load_adapter(out)
    assert torch.allclose(a.text_offset, b.text_offset, atol=1e-5)
    for name in a.vision_state:
        assert torch.allclose(a.vision_state[name], b.vision_state[name], atol=1e-6)
    assert resumed.report["after"] == straight.report["after"]


def test_calibration_run_without_validation_never_lowers_training_miou(tmp_path, labelled_scene):
    raster, labels, config, weights = labelled_scene
    result = run_adaptation(AdaptRequest(
        raster=raster, labels=labels, class_field="landuse", out=str(tmp_path / "c.safetensors"),
        level="calibrate", chip=64, validation_share=0.0, clip_model=config, clip_weights=weights,
        device="cpu"))
    report = result.report
    assert report["held_out"].startswith("training") and report["validation_chips"] == 0
    assert report["after"]["mIoU"] >= report["before"]["mIoU"]
    adapter = load_adapter(result.adapter_path)
    assert adapter.level == "calibrate" and adapter.text_offset is None and not adapter.vision_state
