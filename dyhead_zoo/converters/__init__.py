"""Commands that publish the official DyHead weights on the Hugging Face Hub.

Installed as ``dyhead_zoo.converters`` and run as subcommands of ``dyhead-zoo`` (or with
``python -m dyhead_zoo.converters.<module>``; from a source checkout also ``python -m dyhead_zoo.converters.<module>``):

    dyhead-zoo convert NAME [--checkpoint FILE] --out DIR   # official .pth -> Hub-ready folder
    dyhead-zoo upload DIR --repo OWNER/NAME --dry-run         # show, then upload, that folder
    dyhead-zoo pin-hashes [NAMES...|--all]                    # SHA-256 of each official and mirror file
"""

import argparse
import sys
from typing import Callable


def script_main(prog: str, doc: str, add_arguments: Callable[[argparse.ArgumentParser], None],
                run: Callable[[argparse.Namespace], int], argv: list[str] | None = None) -> int:
    """``python -m`` entry of one converter module: parse ``argv`` with the module's arguments,
    call its ``run``; an OSError or ValueError becomes one ``error:`` line and exit status 1."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
