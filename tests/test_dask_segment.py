"""The engine on Dask: a real `dask scheduler` with two `dask worker` processes on 127.0.0.1 and a
local cluster give the class raster of a one-process run bit for bit, and the same polygons; a
worker killed mid-run changes nothing; `segment-batch` resumes and records failures.

The scorer here is the colour oracle made sensitive to its batch: each window's logits depend on
the other windows scored with it (as a real ViT's do, slightly), so a task that batched its
windows differently from a whole run would give another class raster.
"""
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
import pytest
import rasterio
import shapely
from osgeo import ogr

from support.oracles import ColourOracleScorer
from support.rasters import scene_image, scene_labels, write_raster
from support.tiny_models import TINY_CLIP_CONFIG
from drseg.core.batch import (DONE, FAILED, SKIPPED, expand_inputs, plan, request_parameters,
                              run_batch)
from drseg.core.cluster.spec import DaskSpec, parse_dask_spec
from drseg.core.cluster.tasks import choose_task_blocks, group_blocks
from drseg.core.errors import InputError, RunCancelled
from drseg.core.raster_io import RasterReader
from drseg.core.segment import SegmentationRequest, run_segmentation
from drseg.core.sliding import SlidingWindowSegmenter

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
CLASSES = "building,roof; road; water; tree; field"
FIELD = (215, 205, 150)
# Small windows and blocks: 600×520 px in 5×5 blocks, 288 windows, a few seconds per run.
GEOMETRY = dict(window=64, stride=32, block=128, batch_size=5)
BUILDS = []  # scorers built in this process (read on the workers by client.run)


class BatchSensitiveOracle(ColourOracleScorer):
    """The colour oracle plus a query-dependent term from the whole batch, and an optional delay."""

    def __init__(self, delay=0.0):
        super().__init__(dict(ColourOracleScorer().colours, field=FIELD))
        self.delay = delay

    def score_windows(self, images):
        if self.delay:
            time.sleep(self.delay)
        logits = super().score_windows(images)
        signature = len(images) + float(images.mean()) / 255.0
        ramp = np.arange(logits.shape[1], dtype=np.float32)[None, :, None, None]
        return (logits + 0.01 * signature * ramp).astype(np.float32)


@dataclass(frozen=True)
class OracleFactory:
    """Picklable and hashable: each worker builds its scorer once and keeps it."""

    delay: float = 0.0

    def __call__(self):
        BUILDS.append(os.getpid())
        return BatchSensitiveOracle(self.delay)


def builds():
    return len(BUILDS)


def executing(dask_worker):
    return len(dask_worker.state.executing)


def worker_env():
    path = [os.path.dirname(ROOT), TESTS] + [p for p in os.environ.get("PYTHONPATH", "").split(
        os.pathsep) if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(path), PYTHONUNBUFFERED="1")


class Cluster:
    """`dask scheduler` and `dask worker` processes (no nanny: killing one kills the worker)."""

    def __init__(self, folder):
        self.folder = folder
        self.file = os.path.join(folder, "scheduler.json")
        self.processes = []
        self.scheduler = self._start("distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                     "--port", "0", "--no-dashboard", "--scheduler-file", self.file)
        deadline = time.monotonic() + 120
        while not os.path.exists(self.file) and time.monotonic() < deadline:
            time.sleep(0.2)
        with open(self.file) as handle:
            self.address = json.load(handle)["address"]
        self.workers = [self.start_worker(f"w{i}") for i in range(2)]
        self.wait_for(2)

    def _start(self, module, *args):
        name = f"{module.rsplit('.', 1)[-1]}-{len(self.processes)}.log"
        log = open(os.path.join(self.folder, name), "w")
        process = subprocess.Popen([sys.executable, "-m", module, *args], env=worker_env(),
                                   stdout=log, stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def start_worker(self, name):
        return self._start("distributed.cli.dask_worker", self.address, "--nthreads", "1",
                           "--no-nanny", "--no-dashboard", "--host", "127.0.0.1", "--name", name)

    def client(self):
        from distributed import Client
        return Client(self.address, timeout=60, set_as_default=False)

    def wait_for(self, count):
        with self.client() as client:
            deadline = time.monotonic() + 120
            while len(client.scheduler_info(n_workers=-1)["workers"]) != count:
                assert time.monotonic() < deadline, f"{count} Dask workers did not come up"
                time.sleep(0.2)

    def close(self):
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    started = Cluster(str(tmp_path_factory.mktemp("dask")))
    try:
        yield started
    finally:
        started.close()


@pytest.fixture(scope="module")
def raster(tmp_path_factory):
    return write_raster(tmp_path_factory.mktemp("scene") / "scene.tif", scene_image(scene_labels()))


@pytest.fixture(scope="module")
def reference(raster, tmp_path_factory):
    """The one-process run every cluster run must equal."""
    folder = tmp_path_factory.mktemp("reference")
    result = segment(raster, folder)
    return result, read_classes(result.raster_path), read_polygons(result.vector_path)


def segment(raster, folder, dask=None, factory=OracleFactory(), **kw):
    request = SegmentationRequest(raster=raster, classes=CLASSES, threshold=0.0, dask=dask,
                                  out_vector=str(folder / "out.gpkg"),
                                  out_raster=str(folder / "out.tif"), **GEOMETRY)
    if dask is None:
        return run_segmentation(request, scorer=factory(), **kw)
    return run_segmentation(request, scorer_factory=factory, **kw)


def read_classes(path):
    with rasterio.open(path) as src:
        return src.read(1)


def read_polygons(path):
    layer_source = ogr.Open(path)
    rows = []
    for feature in layer_source.GetLayer(0):
        rows.append((feature.GetField("class"), feature.GetField("area_m2"),
                     feature.GetField("score"),
                     shapely.from_wkb(bytes(feature.GetGeometryRef().ExportToWkb()))))
    return rows


def assert_same_polygons(rows, expected):
    assert len(rows) == len(expected)
    key = lambda row: (row[0], row[1], row[2], row[3].centroid.x, row[3].centroid.y)  # noqa: E731
    for got, want in zip(sorted(rows, key=key), sorted(expected, key=key)):
        assert got[:3] == want[:3]  # class, area, mean score
        assert got[3].symmetric_difference(want[3]).area == pytest.approx(0.0, abs=1e-9)


def assert_same_run(result, reference):
    expected, classes, polygons = reference
    assert np.array_equal(read_classes(result.raster_path), classes)
    assert_same_polygons(read_polygons(result.vector_path), polygons)
    assert result.polygon_count == expected.polygon_count
    assert result.class_pixels == expected.class_pixels


# -- the engine's part: any subset of blocks equals the whole run -----------------------------

def blocks_of(raster, indices, batch_size=GEOMETRY["batch_size"]):
    with RasterReader(raster) as reader:
        scorer = BatchSensitiveOracle()
        scorer.set_queries(["building", "road", "water", "tree", "field"])
        segmenter = SlidingWindowSegmenter(reader, scorer, [0, 1, 2, 3, 4], window=64, stride=32,
                                           block=128, batch_size=batch_size)
        indices = range(len(segmenter)) if indices is None else indices
        return {(int(b.window.row_off), int(b.window.col_off)): b
                for b in segmenter.segment_blocks(indices)}, scorer.windows


def test_blocks_computed_in_groups_equal_the_whole_run(raster):
    whole, scored = blocks_of(raster, None)
    assert scored == 288 and len(whole) == 25  # every window once
    for k in (2, 3):
        parts, extra = {}, 0
        for group in group_blocks(520, 600, 128, k):
            found, windows = blocks_of(raster, group)
            assert len(found) == len(group)
            parts.update(found)
            extra += windows
        assert extra > scored  # the halo windows are scored again
        assert parts.keys() == whole.keys()
        for key, block in whole.items():
            assert np.array_equal(parts[key].classes, block.classes), (k, key)
            assert np.array_equal(parts[key].score, block.score), (k, key)
    # The oracle does notice batching: batches of another size give other scores.
    other, _ = blocks_of(raster, None, batch_size=3)
    assert any(not np.array_equal(other[key].score, block.score) for key, block in whole.items())


def test_task_groups_partition_the_blocks():
    for width, height, block, k in ((520, 600, 128, 2), (1000, 300, 100, 3), (50, 50, 64, 4)):
        groups = group_blocks(width, height, block, k)
        columns, rows = -(-width // block), -(-height // block)
        flat = [i for group in groups for i in group]
        assert sorted(flat) == list(range(columns * rows))
        assert all(group == sorted(group) and len(group) <= k * k for group in groups)
    # Tasks at least 4 windows wide where the raster has a task for each worker ...
    assert choose_task_blocks(25, 2, block=128, window=64) == 2
    assert choose_task_blocks(64, 1, block=128, window=224) == 7   # not 4: halo
    assert choose_task_blocks(100, 2, block=512, window=224) == 4  # 3 tasks per worker
    assert choose_task_blocks(9, 4, block=512, window=224) == 1  # ... and at least one task each
    assert choose_task_blocks(4, 8) == 1
    assert choose_task_blocks(100_000, 2) == 8


def test_dask_spec_and_its_setting(monkeypatch, tmp_path):
    from drseg.core import settings as st

    assert parse_dask_spec("local:3") == DaskSpec(local_workers=3)
    assert parse_dask_spec(" tcp://10.1.2.3:8786 ") == DaskSpec(address="tcp://10.1.2.3:8786")
    assert parse_dask_spec("") is None and parse_dask_spec(None) is None
    for bad in ("local:0", "local:x", "10.1.2.3:8786", "http://host:8786", "tcp://host"):
        with pytest.raises(InputError, match="Dask cluster"):
            parse_dask_spec(bad)
    saved = st.Settings(dask="local:2")
    assert st.resolve("dask", None, saved, {}) == ("local:2", "saved settings")
    assert st.resolve("dask", None, saved, {"DRSEG_DASK": "tcp://h:1"}) == \
        ("tcp://h:1", "environment DRSEG_DASK")
    assert st.resolve("dask", "local:4", saved, {"DRSEG_DASK": "tcp://h:1"}) == \
        ("local:4", "parameter")
    assert st.resolve("dask", None, st.Settings(), {}) == ("", "default")
    assert any("Dask cluster" in p for p in st.Settings(dask="local:many").validate())
    path = str(tmp_path / "s.json")
    st.save_settings(saved, path)
    assert st.load_settings(path).dask == "local:2"


# -- a real scheduler and workers -----------------------------------------------------------

def test_scheduler_and_two_workers_give_the_one_process_result(cluster, raster, reference,
                                                               tmp_path):
    messages = []
    result = segment(raster, tmp_path, dask=cluster.address,
                     progress=lambda fraction, message: messages.append((fraction, message)))
    assert_same_run(result, reference)
    assert any("tasks on 2 Dask worker(s)" in m for _, m in messages)
    fractions = [f for f, m in messages if m.startswith("Segmented block")]
    assert fractions == sorted(fractions) and len(fractions) > 2  # one step per finished task
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".drseg-")]
    again = segment(raster, tmp_path, dask=cluster.address)  # models kept from the first run
    assert_same_run(again, reference)
    with cluster.client() as client:
        per_worker = client.run(builds)
    assert sorted(per_worker.values()) == [1, 1]  # each worker built its scorer once


def test_local_cluster_gives_the_one_process_result(raster, reference, tmp_path):
    result = segment(raster, tmp_path, dask="local:2")
    assert_same_run(result, reference)


def test_a_worker_killed_mid_run_changes_nothing(cluster, raster, reference, tmp_path):
    victim = cluster.workers[1]
    state = {}

    def progress(fraction, message):
        if message.startswith("Segmented block") and "killed_at" not in state:
            state["killed_at"] = fraction
            victim.send_signal(signal.SIGKILL)

    try:
        result = segment(raster, tmp_path, dask=cluster.address, factory=OracleFactory(0.05),
                         progress=progress)
    finally:
        victim.wait(timeout=30)
        cluster.workers[1] = cluster.start_worker("w1-again")
        cluster.wait_for(2)
    assert 0 < state["killed_at"] < 0.5  # killed with most tasks still to run
    assert_same_run(result, reference)


def test_cancel_stops_the_run_and_leaves_no_file(cluster, raster, tmp_path):
    seen = []

    def progress(fraction, message):
        seen.append(message)

    def cancelled():
        return any(m.startswith("Segmented block") for m in seen)

    with pytest.raises(RunCancelled):
        segment(raster, tmp_path, dask=cluster.address, factory=OracleFactory(0.05),
                progress=progress, cancelled=cancelled)
    assert os.listdir(tmp_path) == []
    with cluster.client() as client:  # the running tasks stop at their next block
        deadline = time.monotonic() + 60
        while any(client.run(executing).values()):
            assert time.monotonic() < deadline
            time.sleep(0.2)


def test_unreachable_scheduler_is_one_clear_error(raster, tmp_path, monkeypatch):
    from drseg.core.cluster import client

    monkeypatch.setattr(client, "CONNECT_TIMEOUT_S", 2)
    with pytest.raises(InputError, match="Cannot reach the Dask scheduler"):
        segment(raster, tmp_path, dask="tcp://127.0.0.1:9")


# -- the command line with a real (tiny) CLIP ------------------------------------------------

@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import open_clip
    import torch

    folder = tmp_path_factory.mktemp("clip")
    config = folder / "tiny_clip.json"
    config.write_text(json.dumps(TINY_CLIP_CONFIG))
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CLIP_CONFIG)
    torch.save(model.state_dict(), folder / "tiny_clip.pt")
    return str(config), str(folder / "tiny_clip.pt")


def drseg(*args):
    return subprocess.run([sys.executable, "-m", "drseg", *args], capture_output=True, text=True,
                          env=worker_env(), timeout=600)


def test_segment_command_on_the_cluster_equals_one_process(cluster, tiny_clip, tmp_path):
    config, weights = tiny_clip
    raster = write_raster(tmp_path / "small.tif", scene_image(scene_labels(192, 256)))
    # 3×2 blocks, 35 windows: real (tiny) CLIP, whose logits change with the batch size.
    common = [raster, "--classes", "building; water; road", "--clip-model", config,
              "--clip-weights", weights, "--device", "cpu", "--threshold", "0.2", "--window",
              "64", "--stride", "32", "--block", "96", "--quiet"]
    here = drseg("segment", *common, "--raster-out", str(tmp_path / "here.tif"),
                 "--out", str(tmp_path / "here.gpkg"))
    assert here.returncode == 0, here.stderr
    there = drseg("segment", *common, "--raster-out", str(tmp_path / "there.tif"),
                  "--out", str(tmp_path / "there.gpkg"), "--dask", cluster.address,
                  "--task-blocks", "1")
    assert there.returncode == 0, there.stderr
    assert f"Dask cluster: {cluster.address} (parameter)" in there.stdout
    assert np.array_equal(read_classes(tmp_path / "here.tif"), read_classes(tmp_path / "there.tif"))
    assert_same_polygons(read_polygons(str(tmp_path / "there.gpkg")),
                         read_polygons(str(tmp_path / "here.gpkg")))


@pytest.fixture(scope="module")
def tiny_sam3(tmp_path_factory):
    """The real SAM 3 architecture at tiny size: its config.json and seeded weights (safetensors),
    so every process builds the same model."""
    import torch
    from safetensors.torch import save_file
    from transformers import Sam3Model

    from support.tiny_models import tiny_sam3_config

    folder = tmp_path_factory.mktemp("sam3")
    config = tiny_sam3_config()
    config.to_json_file(str(folder / "tiny_sam3.json"))
    torch.manual_seed(0)
    model = Sam3Model(config)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "tiny_sam3.safetensors"))
    return str(folder / "tiny_sam3.json"), str(folder / "tiny_sam3.safetensors")


def test_sam3_recipes_are_picklable_values_and_name_their_engine(tiny_sam3):
    import pickle

    from drseg.core.hybrid import HybridRecipe
    from drseg.core.sam3_engine import Sam3Recipe
    from drseg.core.segment import ScorerRecipe, cluster_recipe

    config, weights = tiny_sam3
    base = SegmentationRequest(raster="x.tif", classes="water", sam3_model=config,
                               sam3_weights=weights, method="clip", device="cpu")
    for engine, kind in (("sam3", Sam3Recipe), ("hybrid", HybridRecipe), ("clip", ScorerRecipe)):
        recipe, method, note = cluster_recipe(SegmentationRequest(**{**base.__dict__, "engine": engine}))
        assert isinstance(recipe, kind) and method == engine
        again = pickle.loads(pickle.dumps(recipe))
        assert again == recipe and hash(again) == hash(recipe)
        assert getattr(recipe, "engine", None) == (engine if engine != "clip" else None)
        assert getattr(recipe, "window", None) == (112 if engine != "clip" else None)  # tasks
    assert note == "" and cluster_recipe(SegmentationRequest(**{**base.__dict__, "engine": "hybrid"}))[2] \
        == "SAM 3 fused with dense CLIP"


@pytest.mark.parametrize("engine", ["sam3", "hybrid"])
def test_sam3_engines_on_the_cluster_equal_one_process(cluster, tiny_sam3, tiny_clip, tmp_path,
                                                        engine):
    config, weights = tiny_sam3
    clip_config, clip_weights = tiny_clip
    raster = write_raster(tmp_path / "small.tif", scene_image(scene_labels(192, 256)))
    # 3×2 blocks of 96 px under 112-px SAM 3 tiles (overlap 28 px): every task scores a halo
    common = [raster, "--classes", "building; water; road", "--engine", engine, "--sam3-model",
              config, "--sam3-weights", weights, "--clip-model", clip_config, "--clip-weights",
              clip_weights, "--method", "clip", "--device", "cpu", "--threshold", "0.2",
              "--window", "64", "--stride", "32", "--block", "96", "--quiet"]
    here = drseg("segment", *common, "--raster-out", str(tmp_path / "here.tif"),
                 "--probabilities-out", str(tmp_path / "here_p.tif"),
                 "--out", str(tmp_path / "here.gpkg"))
    assert here.returncode == 0, here.stderr
    there = drseg("segment", *common, "--raster-out", str(tmp_path / "there.tif"),
                  "--probabilities-out", str(tmp_path / "there_p.tif"),
                  "--out", str(tmp_path / "there.gpkg"), "--dask", cluster.address,
                  "--task-blocks", "1")
    assert there.returncode == 0, there.stderr
    assert np.array_equal(read_classes(tmp_path / "here.tif"), read_classes(tmp_path / "there.tif"))
    with rasterio.open(tmp_path / "here_p.tif") as a, rasterio.open(tmp_path / "there_p.tif") as b:
        probabilities = a.read()
        assert np.array_equal(probabilities, b.read())   # the probabilities, bit for bit
    assert len(np.unique(probabilities)) > 1000   # they vary across tiles: equality means something
    assert_same_polygons(read_polygons(str(tmp_path / "there.gpkg")),
                         read_polygons(str(tmp_path / "here.gpkg")))


def test_a_wrong_cluster_is_one_line_and_exit_two(tmp_path, capsys, monkeypatch):
    from drseg.cli import main

    raster = write_raster(tmp_path / "in.tif", np.zeros((3, 20, 20), np.uint8))
    assert main(["segment", raster, "--classes", "water", "--out", str(tmp_path / "x.gpkg"),
                 "--dask", "local:lots"]) == 2
    printed = capsys.readouterr()
    assert printed.err.strip().splitlines()[-1].startswith("error: Dask cluster 'local:lots'")
    assert "Traceback" not in printed.err and "Dask cluster" not in printed.out
    monkeypatch.setenv("DRSEG_DASK", "tcp://nowhere")
    assert main(["segment-batch", raster, "--classes", "water", "--out-dir", str(tmp_path)]) == 2
    assert "error: Dask cluster 'tcp://nowhere'" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["in.tif"]


# -- batches ---------------------------------------------------------------------------------

def batch_inputs(folder):
    folder.mkdir()
    labels = scene_labels(200, 180)
    write_raster(folder / "a.tif", scene_image(labels))
    write_raster(folder / "b.tif", scene_image(labels[::-1].copy()))
    (folder / "broken.tif").write_bytes(b"this is not a GeoTIFF")
    return folder


def read_summary(folder):
    with open(folder / "summary.json") as handle:
        return {os.path.basename(row["input"]): row for row in json.load(handle)}


def test_segment_batch_on_the_cluster_resumes_and_records_failures(cluster, tmp_path):
    inputs = batch_inputs(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    template = SegmentationRequest(raster="", classes=CLASSES, threshold=0.0, dask=cluster.address,
                                   **GEOMETRY)
    rows = run_batch(template, [str(inputs)], str(out), scorer_factory=OracleFactory())
    assert [os.path.basename(r["input"]) for r in rows] == ["a.tif", "b.tif", "broken.tif"]
    summary = read_summary(out)
    assert summary["a.tif"]["status"] == summary["b.tif"]["status"] == DONE
    assert summary["broken.tif"]["status"] == FAILED
    assert "Cannot open raster" in summary["broken.tif"]["error"]
    assert summary["a.tif"]["polygons"] > 0
    for name in ("a", "b"):
        assert (out / f"{name}.gpkg").exists() and (out / f"{name}_classes.tif").exists()
    assert not (out / "broken.gpkg").exists()
    with open(out / "summary.csv") as handle:
        assert handle.readline().strip() == "input,status,seconds,polygons,error,vector,raster"
    # The same outputs as a one-process run of that input.
    single = tmp_path / "single"
    single.mkdir()
    alone = run_segmentation(SegmentationRequest(raster=str(inputs / "a.tif"), classes=CLASSES,
                                                 threshold=0.0, out_raster=str(single / "a.tif"),
                                                 **GEOMETRY), scorer=OracleFactory()())
    assert np.array_equal(read_classes(out / "a_classes.tif"), read_classes(alone.raster_path))

    # Again, here this time: done inputs are skipped, the broken one is tried again.
    stamp = os.path.getmtime(out / "a.gpkg")
    again = run_batch(SegmentationRequest(raster="", classes=CLASSES, threshold=0.0, **GEOMETRY),
                      [str(inputs / "*.tif")], str(out), scorer_factory=OracleFactory())
    assert [r["status"] for r in again] == [SKIPPED, SKIPPED, FAILED]
    assert again[0]["polygons"] == rows[0]["polygons"]
    assert os.path.getmtime(out / "a.gpkg") == stamp
    # A newer input, or other parameters, run again.
    later = time.time() + 5
    os.utime(inputs / "b.tif", (later, later))
    third = run_batch(SegmentationRequest(raster="", classes=CLASSES, threshold=0.0, **GEOMETRY),
                      [str(inputs)], str(out), scorer_factory=OracleFactory())
    assert [r["status"] for r in third] == [SKIPPED, DONE, FAILED]
    other = run_batch(SegmentationRequest(raster="", classes=CLASSES, threshold=0.1, **GEOMETRY),
                      [str(inputs / "a.tif")], str(out), scorer_factory=OracleFactory())
    assert [r["status"] for r in other] == [DONE]


def test_batch_inputs_lists_globs_folders_and_name_clashes(tmp_path):
    inputs = batch_inputs(tmp_path / "in")
    (inputs / "notes.txt").write_text("not a raster")
    listing = tmp_path / "list.txt"
    listing.write_text("# my tiles\nin/b.tif\n\nin/a.tif\n")
    found = expand_inputs([f"@{listing}", str(inputs), str(inputs / "a.*")])
    assert [os.path.basename(p) for p in found] == ["b.tif", "a.tif", "broken.tif"]
    with pytest.raises(InputError, match="matches no file"):
        expand_inputs([str(tmp_path / "*.jp2")])
    (tmp_path / "other").mkdir()
    write_raster(tmp_path / "other" / "a.tif", np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(InputError, match="'a' by"):
        plan([str(inputs / "a.tif"), str(tmp_path / "other" / "a.tif")], str(tmp_path))
    request = SegmentationRequest(raster="x.tif", classes="water", dask="local:2", out_vector="y")
    assert request_parameters(request) == request_parameters(
        SegmentationRequest(raster="z.tif", classes="water"))  # where it runs changes nothing


def test_segment_batch_command(tmp_path, tiny_clip):
    config, weights = tiny_clip
    inputs = batch_inputs(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    args = ["segment-batch", str(inputs), "--out-dir", str(out), "--classes", "building; water",
            "--clip-model", config, "--clip-weights", weights, "--device", "cpu", "--window", "96",
            "--stride", "96", "--quiet"]
    first = drseg(*args)
    assert first.returncode == 1, first.stderr  # one input failed
    assert "2 done, 1 failed" in first.stdout
    assert (out / "a.gpkg").exists() and (out / "b_classes.tif").exists()
    (inputs / "broken.tif").unlink()
    second = drseg(*args)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "2 skipped" in second.stdout
