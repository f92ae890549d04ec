"""`python -m drseg models ...`: list, download, verify and import model checkpoints.

The main command line adds these with `add_models_parser(subparsers)` and runs them with
`run_models_command(args)`; `main(argv)` runs them on their own.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from .models import download as dl
from .models.catalog import ModelEntry, get_model, list_models
from .models.registry import FAMILIES
from .errors import DrSegError, RunCancelled

EXIT_OK = 0
EXIT_FAILED = 1      # a verification found a damaged or missing file
EXIT_USER_ERROR = 2  # a DrSegError: message printed, nothing else
EXIT_CANCELLED = 130


def add_models_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `models` command (with list/download/verify/import) to an argparse subparsers."""
    parser = subparsers.add_parser("models", help="list, download, verify and import model checkpoints",
                                   description="Manage the checkpoints DR-Seg can use.")
    _add_common(parser)
    actions = parser.add_subparsers(dest="models_command", metavar="ACTION")
    actions.required = True

    listing = actions.add_parser("list", help="show the supported checkpoints and which are downloaded")
    _add_common(listing)
    listing.add_argument("--family", choices=FAMILIES, help="only this family")
    listing.add_argument("--json", action="store_true", help="machine-readable output")

    fetch = actions.add_parser("download", help="download checkpoints into the cache and verify them")
    _add_common(fetch)
    fetch.add_argument("names", nargs="+", metavar="NAME", help="catalog name(s), see 'models list'")
    fetch.add_argument("--force", action="store_true", help="download again even when cached")
    fetch.add_argument("--quiet", action="store_true", help="no progress bar")

    check = actions.add_parser("verify", help="recompute the SHA-256 of cached checkpoints")
    _add_common(check)
    check.add_argument("names", nargs="*", metavar="NAME",
                       help="catalog name(s); default: every downloaded checkpoint")

    imp = actions.add_parser("import", help="verify a file you downloaded yourself and add it to the cache")
    _add_common(imp)
    imp.add_argument("name", metavar="NAME", help="catalog name the file belongs to")
    imp.add_argument("path", metavar="FILE", help="the checkpoint (or, for archive models, the zip)")

    parser.set_defaults(handler=run_models_command)
    return parser


def _add_common(parser: argparse.ArgumentParser) -> None:
    # accepted before or after the action; SUPPRESS keeps a value given at the other level
    parser.add_argument("--cache-dir", default=argparse.SUPPRESS,
                        help=f"model cache folder ({dl.CACHE_ENV} overrides it; default "
                             f"{dl.default_cache_dir()})")
    parser.add_argument("--mirror", default=argparse.SUPPRESS,
                        help=f"base URL serving the same file names ({dl.MIRROR_ENV} overrides it)")


def run_models_command(args: argparse.Namespace, out=None, err=None) -> int:
    """Run a parsed `models` command; returns the exit code. User errors are printed, not raised."""
    out = out or sys.stdout
    err = err or sys.stderr
    cache = getattr(args, "cache_dir", None)
    mirror = getattr(args, "mirror", None)
    try:
        command = args.models_command
        if command == "list":
            return _list(args, cache, out)
        if command == "download":
            return _download(args, cache, mirror, out, err)
        if command == "verify":
            return _verify(args, cache, out)
        if command == "import":
            path = dl.import_file(args.path, args.name, cache,
                                  status=lambda text: print(text, file=err))
            print(f"{args.name}: imported to {path} ({_verified_text(args.name, cache)})", file=out)
            return EXIT_OK
        print(f"error: unknown models action '{command}'", file=err)
        return EXIT_USER_ERROR
    except DrSegError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_USER_ERROR
    except (RunCancelled, KeyboardInterrupt):
        print("cancelled; run the same command again to resume", file=err)
        return EXIT_CANCELLED


def _list(args, cache, out) -> int:
    entries = list_models(getattr(args, "family", None))
    rows = []
    for entry in entries:
        path = dl.cached_path(entry, cache)
        rows.append((entry, path))
    if getattr(args, "json", False):
        data = []
        for entry, path in rows:
            item = entry.to_dict()
            item["cached_path"] = path
            item["download_name"] = entry.download_name
            data.append(item)
        json.dump({"cache_dir": dl.resolve_cache_dir(cache), "models": data}, out, indent=1)
        out.write("\n")
        return EXIT_OK
    width = max(len(e.name) for e in entries)
    print(f"Model cache: {dl.resolve_cache_dir(cache)}", file=out)
    for family in FAMILIES:
        group = [(e, p) for e, p in rows if e.family == family]
        if not group:
            continue
        print(f"\n{family.upper()}", file=out)
        for entry, path in group:
            state = "downloaded" if path else ("import only" if not entry.url else "-")
            print(f"  {entry.name:<{width}}  {entry.architecture:<34} {entry.size_text():>9}  "
                  f"{state:<11} {entry.good_for}", file=out)
    return EXIT_OK


def _download(args, cache, mirror, out, err) -> int:
    entries = [get_model(name) for name in args.names]  # every name checked before any transfer
    for entry in entries:
        # The licence is shown before any byte is fetched (SAM 3's is not an open-source one).
        print(f"{entry.name}: licence {entry.licence}", file=err)
        bar = None if args.quiet else _ProgressBar(entry, err)
        try:
            path = dl.download(entry, cache, mirror=mirror, force=args.force,
                               progress=bar.update if bar else None,
                               status=bar.write if bar else None)
        finally:
            if bar:
                bar.close()
        print(f"{entry.name}: {path} ({_verified_text(entry, cache)})", file=out)
    return EXIT_OK


def _verify(args, cache, out) -> int:
    if args.names:
        entries = [get_model(name) for name in args.names]
    else:
        entries = [e for e in list_models() if dl.cached_path(e, cache)]
        if not entries:
            print(f"No checkpoints downloaded in {dl.resolve_cache_dir(cache)}", file=out)
            return EXIT_OK
    failed = 0
    for entry in entries:
        result = dl.verify_cached(entry, cache)
        mark = "ok" if result.ok else "FAILED"
        print(f"{entry.name}: {mark} - {result.message}", file=out)
        failed += not result.ok
    return EXIT_FAILED if failed else EXIT_OK


def _verified_text(entry, cache) -> str:
    entry = get_model(entry)
    if entry.archive_member:
        return "archive " + ("checked against the catalog's " + entry.verifiable
                             if entry.verifiable != "nothing" else
                             "not checkable: the catalog publishes no size or SHA-256")
    if entry.verifiable == "nothing":
        return "no published size or SHA-256: only its format was checked; hash recorded for later 'verify'"
    return f"{entry.verifiable} verified"


class _ProgressBar:
    """tqdm progress bar fed by the downloader's (bytes_done, bytes_total) callback."""

    def __init__(self, entry: ModelEntry, stream):
        from tqdm import tqdm
        self._tqdm = tqdm
        self._stream = stream
        self._bar = None
        self._entry = entry

    def update(self, done: int, total: Optional[int]) -> None:
        if self._bar is None or (total is not None and self._bar.total != total):
            if self._bar is not None:
                self._bar.close()
            self._bar = self._tqdm(total=total, initial=done, unit="B", unit_scale=True,
                                   unit_divisor=1024, desc=self._entry.name, file=self._stream,
                                   leave=False, dynamic_ncols=True)
            return
        if done < self._bar.n:  # the server sent the whole file again
            self._bar.reset(total=total)
        self._bar.update(done - self._bar.n)

    def write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self._stream)
        else:
            print(text, file=self._stream)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m drseg",
                                     description="DR-Seg model management")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    add_models_parser(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Standalone entry point: `python -m drseg.core.models_cli models list`."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    return run_models_command(args)


if __name__ == "__main__":
    sys.exit(main())
