"""Many rasters at once: one output pair per input (NAME.gpkg, NAME_classes.tif) in one folder,
and a summary table (summary.csv, summary.json: input, status, seconds, polygons, error).

    rows = run_batch(SegmentationRequest(raster="", classes="building; water"),
                     ["tiles/", "@more.txt"], "out/", progress=..., cancelled=...)

Inputs are files, folders (their rasters), glob patterns or @list files (one input per line).
An input whose outputs are complete is skipped, so a batch can be run again after a stop: both
outputs exist, are newer than the input, and its done marker (NAME.done.json, written last)
records the same input and request parameters. A failed input is recorded in the table and the
others go on. With `template.dask` each input is one task on the cluster (workers need the input
and the output folder at the same paths); otherwise they run here, one after another.
"""
from __future__ import annotations

import csv
import glob
import io
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from typing import Dict, Iterable, List, Optional

from .errors import DrSegError, InputError, RunCancelled
from .progress import RunMonitor
from .segment import SegmentationRequest, run_segmentation

RASTER_EXTENSIONS = (".tif", ".tiff", ".jp2", ".img", ".vrt", ".png", ".jpg", ".jpeg", ".ecw",
                     ".sid", ".nc", ".hdf")
VECTOR_SUFFIX = ".gpkg"
RASTER_SUFFIX = "_classes.tif"
MARKER_SUFFIX = ".done.json"
SUMMARY_NAME = "summary"   # summary.csv and summary.json
SUMMARY_FIELDS = ("input", "status", "seconds", "polygons", "error", "vector", "raster")
DONE, SKIPPED, FAILED, CANCELLED = "done", "skipped", "failed", "cancelled"
# Request fields that name files or say where to run: they do not change a result.
_NOT_PARAMETERS = ("raster", "out_vector", "out_raster", "out_probabilities", "layer_name", "dask",
                   "task_blocks", "cache_dir")


@dataclass(frozen=True)
class BatchItem:
    input: str
    name: str
    vector: str
    raster: str
    marker: str


def expand_inputs(items: Iterable[str]) -> List[str]:
    """Files, folders (their rasters, sorted), glob patterns and @list files -> input paths, in
    order, each once. A file that does not exist is kept: it is recorded as failed."""
    found: List[str] = []
    for item in items:
        item = str(item).strip()
        if item.startswith("@"):
            found += _list_file(item[1:])
        else:
            found += _expand(item)
    unique, seen = [], set()
    for path in found:
        key = path if path.startswith("/vsi") else os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            unique.append(key)
    if not unique:
        raise InputError("No input rasters: give files, folders, glob patterns or @list.txt")
    return unique


def _list_file(path: str) -> List[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            lines = [line.strip() for line in handle]
    except OSError as exc:
        raise InputError(f"Cannot read the input list '{path}' ({exc.strerror or exc})") from None
    folder = os.path.dirname(os.path.abspath(path))
    found = []
    for line in lines:
        if line and not line.startswith("#"):
            relative = not (os.path.isabs(line) or line.startswith("/vsi"))
            found += _expand(os.path.join(folder, line) if relative else line)
    return found


def _expand(item: str) -> List[str]:
    if os.path.isdir(item):
        return sorted(os.path.join(item, name) for name in os.listdir(item)
                      if name.lower().endswith(RASTER_EXTENSIONS)
                      and os.path.isfile(os.path.join(item, name)))
    if glob.has_magic(item) and not item.startswith("/vsi"):
        matches = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
        if not matches:
            raise InputError(f"'{item}' matches no file")
        return matches
    return [item]


def plan(inputs: List[str], out_dir: str) -> List[BatchItem]:
    """Output names per input: its file name without extension. Two inputs of one name would
    write the same outputs: an error, before anything runs."""
    out_dir = os.path.abspath(out_dir)
    items, by_name = [], {}
    for path in inputs:
        name = os.path.splitext(os.path.basename(path.rstrip("/")))[0] or "raster"
        by_name.setdefault(name, []).append(path)
        base = os.path.join(out_dir, name)
        items.append(BatchItem(path, name, base + VECTOR_SUFFIX, base + RASTER_SUFFIX,
                               base + MARKER_SUFFIX))
    clashes = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    if clashes:
        name, paths = next(iter(clashes.items()))
        raise InputError(f"{len(clashes)} output name(s) would be shared by several inputs, e.g. "
                         f"'{name}' by {', '.join(paths[:3])}; rename them or run separate batches")
    return items


def request_parameters(request: SegmentationRequest) -> Dict:
    """What the done marker records: every request field that can change the outputs."""
    data = {k: v for k, v in asdict(request).items() if k not in _NOT_PARAMETERS}
    return json.loads(json.dumps(data, default=str))  # tuples as lists, as read back


def is_complete(item: BatchItem, parameters: Dict) -> bool:
    try:
        with open(item.marker, encoding="utf-8") as handle:
            marker = json.load(handle)
        newest_input = os.path.getmtime(item.input)
        outputs = [os.path.getmtime(item.vector), os.path.getmtime(item.raster)]
    except (OSError, ValueError):
        return False
    return (isinstance(marker, dict) and marker.get("input") == item.input
            and marker.get("parameters") == parameters and min(outputs) >= newest_input)


def segment_one(request: SegmentationRequest, item: BatchItem, parameters: Dict,
                scorer_factory=None) -> Dict:
    """Run one input (here or on a worker) -> its summary row; errors become the row's error."""
    from .cluster.tasks import worker_scorer

    started = time.perf_counter()
    row = {"input": item.input, "status": DONE, "seconds": 0.0, "polygons": None, "error": "",
           "vector": item.vector, "raster": item.raster}
    try:
        if os.path.exists(item.marker):  # outputs are being replaced: no longer complete
            os.remove(item.marker)
        if scorer_factory is None:
            result = run_segmentation(request)
        else:
            scorer, lock = worker_scorer(scorer_factory)
            with lock:
                result = run_segmentation(request, scorer=scorer)
        row["polygons"] = result.polygon_count
    except DrSegError as exc:
        row.update(status=FAILED, error=str(exc))
    except (RunCancelled, KeyboardInterrupt):
        raise
    except Exception as exc:  # an unexpected failure of one input must not stop the others
        row.update(status=FAILED, error=f"{type(exc).__name__}: {exc}")
    row["seconds"] = round(time.perf_counter() - started, 3)
    if row["status"] == DONE:
        write_text(item.marker, json.dumps({"input": item.input, "parameters": parameters,
                                            "polygons": row["polygons"],
                                            "seconds": row["seconds"]}, indent=2))
    return row


def run_batch(template: SegmentationRequest, inputs: Iterable[str], out_dir: str,
              scorer_factory=None, progress=None, cancelled=None) -> List[Dict]:
    """Segment every input with `template`'s classes and options; -> the summary rows, in input
    order (also written to out_dir/summary.csv and .json). Raises RunCancelled after writing the
    summary when cancelled."""
    from .cluster.spec import parse_dask_spec

    monitor = RunMonitor(progress, cancelled)
    if not os.path.isdir(out_dir):
        raise InputError(f"Output folder '{out_dir}' does not exist")
    cluster = parse_dask_spec(template.dask)
    if scorer_factory is None and cluster is not None:
        from .segment import choose_method
        method, _, _ = choose_method(template)  # once, so every worker runs the same method
        template = replace(template, method=method)
    items = plan(expand_inputs(inputs), out_dir)
    parameters = request_parameters(template)
    if scorer_factory is not None:
        parameters["scorer"] = repr(scorer_factory)
    rows: Dict[int, Dict] = {}
    todo = []
    for index, item in enumerate(items):
        if is_complete(item, parameters):
            rows[index] = {"input": item.input, "status": SKIPPED, "seconds": 0.0, "polygons":
                           _marker_polygons(item), "error": "", "vector": item.vector,
                           "raster": item.raster}
        else:
            todo.append(index)
    requests = {i: replace(template, raster=items[i].input, out_vector=items[i].vector,
                           out_raster=items[i].raster, layer_name=items[i].name, dask=None)
                for i in todo}
    monitor.report(0.0, f"{len(todo)} of {len(items)} inputs to segment")
    try:
        if cluster is None:
            for done, index in enumerate(todo, start=1):
                monitor.check()
                rows[index] = segment_one(requests[index], items[index], parameters,
                                          scorer_factory)
                monitor.report(done / len(todo), f"{items[index].name}: {rows[index]['status']}")
        else:
            _run_on_cluster(cluster, todo, requests, items, parameters, scorer_factory, rows,
                            monitor)
    except (RunCancelled, KeyboardInterrupt):
        _fill_cancelled(rows, items)
        write_summary(out_dir, [rows[i] for i in range(len(items))])
        raise
    ordered = [rows[i] for i in range(len(items))]
    write_summary(out_dir, ordered)
    return ordered


def _run_on_cluster(cluster, todo, requests, items, parameters, scorer_factory, rows, monitor):
    from distributed import as_completed

    from .cluster.client import dask_client

    with dask_client(cluster) as client:
        futures = {client.submit(segment_one, requests[i], items[i], parameters, scorer_factory,
                                 pure=False, key=f"drseg-batch-{i}-{os.urandom(4).hex()}"): i
                   for i in todo}
        completed = as_completed(list(futures), loop=client.loop)
        done = 0
        try:
            while not completed.is_empty():
                batch = completed.next_batch(block=False)
                if not batch:
                    time.sleep(0.25)
                for future in batch:
                    index = futures[future]
                    try:
                        rows[index] = future.result()
                    except Exception as exc:  # lost too many workers, cannot unpickle, ...
                        rows[index] = {"input": items[index].input, "status": FAILED,
                                       "seconds": 0.0, "polygons": None,
                                       "error": f"{type(exc).__name__}: {exc}",
                                       "vector": items[index].vector, "raster": items[index].raster}
                    done += 1
                    monitor.report(done / len(todo),
                                   f"{items[index].name}: {rows[index]['status']}")
                monitor.check()
        except BaseException:
            client.cancel(list(futures))
            raise


def _fill_cancelled(rows, items) -> None:
    for index, item in enumerate(items):
        rows.setdefault(index, {"input": item.input, "status": CANCELLED, "seconds": 0.0,
                                "polygons": None, "error": "", "vector": item.vector,
                                "raster": item.raster})


def _marker_polygons(item: BatchItem) -> Optional[int]:
    try:
        with open(item.marker, encoding="utf-8") as handle:
            return json.load(handle).get("polygons")
    except (OSError, ValueError, AttributeError):
        return None


def write_summary(out_dir: str, rows: List[Dict]) -> List[str]:
    """summary.csv and summary.json in `out_dir`, each replaced atomically."""
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=SUMMARY_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in SUMMARY_FIELDS})
    paths = [os.path.join(out_dir, SUMMARY_NAME + suffix) for suffix in (".csv", ".json")]
    write_text(paths[0], table.getvalue())
    write_text(paths[1], json.dumps([{k: row.get(k) for k in SUMMARY_FIELDS} for row in rows],
                                    indent=2) + "\n")
    return paths


def write_text(path: str, text: str) -> None:
    """Write `text` to `path` atomically (a temporary file in the same folder, then a rename)."""
    handle, temporary = tempfile.mkstemp(prefix=".drseg-", suffix=".tmp",
                                         dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
