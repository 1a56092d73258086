"""Commands that publish the official DyHead weights on the Hugging Face Hub.

Installed as ``dyhead_zoo.converters`` and run as subcommands of ``dyhead-zoo`` (or with
``python -m dyhead_zoo.converters.<module>``; from a source checkout also ``python -m converters.<module>``):

    dyhead-zoo convert NAME [--checkpoint FILE] --out DIR   # official .pth -> Hub-ready folder
    dyhead-zoo upload DIR --repo OWNER/NAME --dry-run         # show, then upload, that folder
    dyhead-zoo pin-hashes [NAMES...|--all]                    # SHA-256 of each official and mirror file
"""
