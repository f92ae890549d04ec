"""`python -m drseg models ...`: list, download, verify and import model checkpoints."""
from __future__ import annotations

import argparse
import json
import os
import sys

from ..core.adapt.catalog import import_adapter, list_adapters
from ..core.errors import InputError
from ..core.models import download as dl
from ..core.models.catalog import get_model, list_models
from ..core.models.registry import FAMILIES
from .exit_codes import EXIT_FAILED, EXIT_OK
from .progress import ProgressBar

ADAPTER_ENTRY = "adapter"          # `models import adapter FILE`


def add_parser(subparsers) -> argparse.ArgumentParser:
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
    imp.add_argument("name", metavar="NAME", help="catalog name the file belongs to, or 'adapter' "
                                                  "for an adapter file made by `drseg adapt`")
    imp.add_argument("path", metavar="FILE", help="the checkpoint (or, for archive models, the zip)")
    imp.add_argument("--as", dest="adapter_name", metavar="NAME",
                     help="the imported adapter's catalog name (default: the file's name)")

    parser.set_defaults(run=run_models_command, cancel_note="run the same command again to resume")
    return parser


def _add_common(parser: argparse.ArgumentParser) -> None:
    # accepted before or after the action; SUPPRESS keeps a value given at the other level
    parser.add_argument("--cache-dir", default=argparse.SUPPRESS,
                        help=f"model cache folder ({dl.CACHE_ENV} overrides it; default "
                             f"{dl.default_cache_dir()})")
    parser.add_argument("--mirror", default=argparse.SUPPRESS,
                        help=f"base URL serving the same file names ({dl.MIRROR_ENV} overrides it)")


def run_models_command(args: argparse.Namespace, out=None, err=None) -> int:
    """Run a parsed `models` command; returns the exit code. Problems the user can fix raise
    DrSegError (the main command line shows them, exit 2)."""
    out = out or sys.stdout
    err = err or sys.stderr
    cache = getattr(args, "cache_dir", None)
    mirror = getattr(args, "mirror", None)
    command = args.models_command
    if command == "list":
        return _list(args, cache, out)
    if command == "download":
        return _download(args, cache, mirror, out, err)
    if command == "verify":
        return _verify(args, cache, out)
    if command == "import" and args.name == ADAPTER_ENTRY:
        info = import_adapter(args.path, cache, getattr(args, "adapter_name", None),
                              status=lambda text: print(text, file=err))
        print(f"adapter '{info.name}': imported to {info.path} (base {info.base_model}, "
              f"{info.level}, classes: {', '.join(info.classes)})", file=out)
        return EXIT_OK
    if command == "import":
        path = dl.import_file(args.path, args.name, cache,
                              status=lambda text: print(text, file=err))
        print(f"{args.name}: imported to {path} ({_verified_text(args.name, cache, imported=True)})",
              file=out)
        return EXIT_OK
    raise InputError(f"unknown models action '{command}'")


def _list(args, cache, out) -> int:
    entries = list_models(getattr(args, "family", None))
    # local entries: adapters made by `drseg adapt` (not for a family filter of another kind)
    adapters = list_adapters(cache) if getattr(args, "family", None) in (None, "clip") else []
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
        json.dump({"cache_dir": dl.resolve_cache_dir(cache), "models": data,
                   "adapters": [a.to_dict() for a in adapters]}, out, indent=1)
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
    if adapters:
        print("\nADAPTERS (local, made by 'drseg adapt'; use with --adapter NAME)", file=out)
        for info in adapters:
            miou = info.miou_text()
            print(f"  {info.name}  {info.level}, base {info.base_model} "
                  f"({os.path.basename(info.base_weights)}), classes: {', '.join(info.classes)}"
                  + (f", held-out mIoU {miou}" if miou else "") + f", {info.created}", file=out)
    return EXIT_OK


def _download(args, cache, mirror, out, err) -> int:
    entries = [get_model(name) for name in args.names]  # every name checked before any transfer
    for entry in entries:
        # The licence is shown before any byte is fetched (SAM 3's is not an open-source one).
        print(f"{entry.name}: licence {entry.licence}", file=err)
        bar = None if args.quiet else ProgressBar(leave=False, stream=err, label=entry.name)
        try:
            path = dl.download(entry, cache, mirror=mirror, force=args.force,
                               progress=bar.transfer if bar else None,
                               status=bar.write if bar else lambda text: print(text, file=err))
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


def _verified_text(entry, cache, imported: bool = False) -> str:
    entry = get_model(entry)
    if entry.archive_member:
        return "archive " + ("checked against the catalog's " + entry.verifiable
                             if entry.verifiable != "nothing" else
                             "not checkable: the catalog publishes no size or SHA-256")
    if entry.verifiable == "nothing" and imported:
        return ("the catalog publishes no size or SHA-256 to compare with: the file was read as "
                f"plain weights and checked against the {entry.architecture} architecture; its "
                "SHA-256 was recorded for later 'verify'")
    if entry.verifiable == "nothing":
        return ("the catalog publishes no size or SHA-256 to compare with: only its format was "
                "checked; its SHA-256 was recorded for later 'verify'")
    return f"{entry.verifiable} verified"
