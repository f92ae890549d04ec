"""`python -m drseg cache info|clear`: the on-disk embedding cache (core/disk_cache.py)."""
from __future__ import annotations

import argparse
import sys

from ..core import disk_cache
from .arguments import add_actions
from .exit_codes import EXIT_OK


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `cache` command (info, clear) to an argparse subparsers."""
    parser = subparsers.add_parser(
        "cache", help="show or clear the stored image and text embeddings",
        description="Image embeddings (SAM, dense CLIP) and text embeddings are kept on disk so "
                    "an area encoded once is not encoded again.")
    for _, action in add_actions(parser, "cache_command", "ACTION",
                                 (("info", "where the cache is, how many entries and bytes"),
                                  ("clear", "remove every stored embedding"))):
        action.add_argument("--cache-dir", default=None,
                            help="model cache folder whose embeddings/ to use (default: "
                                 f"{disk_cache.EMBEDDINGS_ENV}, else the settings)")
    parser.set_defaults(run=run_cache_command)
    return parser


def run_cache_command(args: argparse.Namespace, out=None) -> int:
    out = out or sys.stdout
    cache = disk_cache.embedding_cache(models_folder=args.cache_dir)
    if cache is None:
        print(f"the embedding cache is off ({disk_cache.EMBEDDINGS_ENV} or the settings)",
              file=out)
        return EXIT_OK
    if args.cache_command == "clear":
        print(f"removed {cache.clear()} entries from {cache.folder}", file=out)
        return EXIT_OK
    info = cache.info()
    print(f"folder: {info.folder}\nentries: {info.entries}\n"
          f"size: {info.bytes / 2 ** 20:.1f} MB of {info.budget_bytes / 2 ** 20:.0f} MB", file=out)
    return EXIT_OK
