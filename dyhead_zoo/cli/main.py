"""The ``dyhead-zoo`` command: ``eval``, ``reproduce`` and ``info``.

    dyhead-zoo eval --model NAME --coco-root DIR [--weights PATH] [--device cpu|cuda|cuda:N|mps]
                    [--batch-size N] [--workers N] [--limit N] [--output-dir DIR] [--allow-unsafe-pickle]
    dyhead-zoo eval --model NAME --images DIR --annotations FILE ...   (any COCO-format set)
    dyhead-zoo reproduce --coco-root DIR [--models NAME ...] [--weights NAME=PATH ...]
    dyhead-zoo info                                   (also: which variants' weights are cached, where)
    dyhead-zoo download [NAME ...|--all] [--to DIR]   (fetch, check, print path + SHA-256)
    dyhead-zoo convert | upload | pin-hashes ...      (maintainers: publishing the weights)

Both evaluating commands resume an interrupted run from ``--output-dir`` and scale out under
``torchrun --nproc-per-node N`` (one or several nodes). ``--min-size``/``--max-size`` change
the test size for quick checks; the published numbers need the defaults (800/1333).
Errors print one ``dyhead-zoo: error: ...`` line (``--debug`` for the traceback); ``--version``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from dyhead_zoo.cli import download, evaluate, export, info, maintainers, predict, reproduce, train

COMMANDS = (evaluate, reproduce, info, download, maintainers, train, predict, export)  # in --help order


def build_parser() -> argparse.ArgumentParser:
    """The ``dyhead-zoo`` argument parser: each command module in :data:`COMMANDS` adds its own."""
    parser = argparse.ArgumentParser(prog="dyhead-zoo", description="Dynamic Head detectors in pure PyTorch.",
                                     epilog="Scale out with: torchrun --nproc-per-node N $(which dyhead-zoo) eval ...")
    from dyhead_zoo.version import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="print the full traceback of an error (accepted anywhere on the line)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for command in COMMANDS:
        command.register(commands)
    return parser


def _error_text(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    if "Original Traceback" in text:  # re-raised from a DataLoader worker: its last line is the error
        text = text.splitlines()[-1].strip()
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dyhead-zoo`` console script; returns the exit status.

    The one error edge of every subcommand: the project's own errors
    (:class:`~dyhead_zoo.errors.DyHeadZooError`), user errors (``ValueError``, ``TypeError``)
    and OS errors (missing, unreadable or unwritable files, a full disk, a failed download)
    print ``dyhead-zoo: error: <message>`` and exit with status 2; ``--debug`` adds the traceback.
    """
    import traceback

    from dyhead_zoo.errors import DyHeadZooError

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    try:
        return args.func(args)
    except (DyHeadZooError, OSError, ValueError, TypeError) as err:
        if debug:
            traceback.print_exc()
        print(f"dyhead-zoo: error: {_error_text(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dyhead-zoo: interrupted; the detections made so far are kept, run the same command again "
              "to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
