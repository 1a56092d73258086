"""Upload a folder written by ``dyhead-zoo convert`` to the Hugging Face Hub.

    dyhead-zoo upload hub/dyhead_r50_atss_fpn_1x --repo OWNER/NAME --dry-run
    dyhead-zoo upload hub/dyhead_r50_atss_fpn_1x --repo OWNER/NAME [--private]

``--repo`` is required: the variants' own repos belong to the project, so nothing defaults to
them. The token comes from the usual places: ``--token``, else ``HF_TOKEN``, else ``hf auth
login``'s cache. The folder is checked first (the three files, a config that rebuilds the
model, weights that match it strictly); ``--dry-run`` stops after printing what would be uploaded.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from huggingface_hub import HfApi, get_token

from dyhead_zoo.converters import script_main

FILES = ("model.safetensors", "config.json", "README.md")


def check_folder(folder: str | os.PathLike):
    """The :class:`~dyhead_zoo.config.ModelConfig` of a Hub folder after checking it is complete
    and loads strictly."""
    from dyhead_zoo.models.detector import DyHeadDetector
    from dyhead_zoo.weights import hub
    from dyhead_zoo.weights.checkpoint import SAFETENSORS_NAME, check_state_dict, read_state_dict

    folder = Path(folder)
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {', '.join(missing)}; write it with "
                                "`dyhead-zoo convert NAME --out DIR`")
    config = hub.config_from_json(json.loads((folder / hub.CONFIG_NAME).read_text()))
    check_state_dict(DyHeadDetector(config), read_state_dict(folder / SAFETENSORS_NAME))
    return config


def upload(folder: str | os.PathLike, repo_id: str, private: bool = False, dry_run: bool = False,
           token: str | None = None, commit_message: str | None = None) -> str | None:
    """Upload ``folder``'s three files to ``repo_id`` (``OWNER/NAME``, required) in one commit.

    With ``dry_run`` only prints the plan (repo, files with sizes and SHA-256, the weights'
    provenance, whether a token was found) and returns None; otherwise creates the repo if
    needed and returns the commit URL.
    """
    from dyhead_zoo.weights.checkpoint import file_sha256
    from dyhead_zoo.weights.hub import weights_metadata

    if not repo_id or not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        raise ValueError(f"--repo {repo_id!r}: name the Hub repo to upload to as OWNER/NAME, one you can write to")
    folder = Path(folder)
    config = check_folder(folder)
    token = token or get_token()
    source = weights_metadata(folder / FILES[0]).get("source", "")
    origin = {"official": " converted from the official checkpoint",
              "unverified": " converted from an unverified checkpoint"}.get(source, "")
    commit_message = commit_message or f"Upload {config.name}{origin}"
    print(f"{'would upload' if dry_run else 'uploading'} {folder} to https://huggingface.co/{repo_id} "
          f"({'private' if private else 'public'} model repo, created if missing), one commit: {commit_message!r}")
    for name in FILES:
        path = folder / name
        print(f"  {path.stat().st_size:>13,}  {name}  sha256:{file_sha256(path)}")
    print(f"weights: {source or 'not converted (no source recorded)'}")
    print(f"token: {'found' if token else 'none (set HF_TOKEN or run `hf auth login`)'}")
    if dry_run:
        return None
    if not token:
        raise ValueError("no Hugging Face token: pass --token, set HF_TOKEN or run `hf auth login`")
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=folder,
                               allow_patterns=list(FILES), commit_message=commit_message)
    url = getattr(commit, "commit_url", None) or str(commit)
    print(f"uploaded: {url}")
    return url


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The upload options, shared by ``dyhead-zoo upload`` and ``python -m``."""
    parser.add_argument("folder", type=Path, help="folder written by dyhead-zoo convert")
    parser.add_argument("--repo", required=True, metavar="OWNER/NAME", help="Hub repo to upload to (required)")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--token", help="Hugging Face token (default: HF_TOKEN or the `hf auth login` cache)")
    parser.add_argument("--message", help="commit message")
    parser.add_argument("--dry-run", action="store_true", help="check the folder and show what would be uploaded")


def run(args: argparse.Namespace) -> int:
    """Upload (or with ``--dry-run`` show) as ``args`` say."""
    upload(args.folder, args.repo, args.private, args.dry_run, args.token, args.message)
    return 0


def main(argv: list[str] | None = None) -> int:
    return script_main("dyhead-zoo upload", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
