"""``dyhead-zoo download``: fetch and check published weights, print where they are."""
from __future__ import annotations

import argparse


def cmd_download(args: argparse.Namespace) -> int:
    """``dyhead-zoo download``: fetch, check and report the weights (see :mod:`dyhead_zoo.weights.cache`)."""
    from dyhead_zoo.configs import list_models
    from dyhead_zoo.weights.cache import download

    if args.all and args.names:
        raise ValueError("give variant names or --all, not both")
    return download(list_models() if args.all else args.names, args.to, progress=not args.no_progress)


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``download`` command."""
    from dyhead_zoo.configs import list_models

    dl = commands.add_parser("download", help="fetch and check published weights, e.g. for a machine without network",
                             description="Fetch the weights of the named variants from the first of their sources "
                                         "that has them (project Hub repo, official URL, Hub mirror), check them "
                                         "strictly, and print where each file is and its SHA-256. Exit status 0 "
                                         "when all are ready, 1 when any failed.")
    dl.add_argument("names", nargs="*", metavar="NAME", help="variants: " + ", ".join(list_models()))
    dl.add_argument("--all", action="store_true", help="every variant")
    dl.add_argument("--to", metavar="DIR", help="also copy each file into DIR as NAME.<suffix>, for --weights PATH "
                                                "elsewhere (default: leave them in the caches)")
    dl.add_argument("--no-progress", action="store_true", help="no download progress bars")
    dl.set_defaults(func=cmd_download)
