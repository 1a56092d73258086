"""Commands that publish the official DyHead weights on the Hugging Face Hub.

    python -m converters.to_hub_folder NAME --out DIR   # official .pth -> Hub-ready folder
    python -m converters.upload DIR [--repo ID] --dry-run  # show, then upload, that folder
"""
