"""Upload a folder written by ``converters.to_hub_folder`` to the Hugging Face Hub.

    python -m converters.upload hub/dyhead_r50_atss_fpn_1x --dry-run
    python -m converters.upload hub/dyhead_r50_atss_fpn_1x [--repo OWNER/NAME] [--private]

The repo defaults to the variant's ``hf_repo`` (read from the folder's config.json). The token
comes from the usual places: ``--token``, else ``HF_TOKEN``, else ``hf auth login``'s cache.
The folder is checked first (the three files, a config that rebuilds the model, weights that
match it strictly); ``--dry-run`` stops after printing what would be uploaded.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from huggingface_hub import HfApi, get_token

from dyhead_zoo import hub
from dyhead_zoo.checkpoint import SAFETENSORS_NAME, check_state_dict, file_sha256, read_state_dict
from dyhead_zoo.config import ModelConfig
from dyhead_zoo.models.detector import DyHeadDetector

FILES = (SAFETENSORS_NAME, hub.CONFIG_NAME, hub.README_NAME)


def check_folder(folder: str | os.PathLike) -> ModelConfig:
    """The config of a Hub folder after checking it is complete and loads strictly."""
    folder = Path(folder)
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {', '.join(missing)}; write it with "
                                "`python -m converters.to_hub_folder NAME --out DIR`")
    config = hub.config_from_json(json.loads((folder / hub.CONFIG_NAME).read_text()))
    check_state_dict(DyHeadDetector(config), read_state_dict(folder / SAFETENSORS_NAME))
    return config


def upload(folder: str | os.PathLike, repo_id: str | None = None, private: bool = False, dry_run: bool = False,
           token: str | None = None, commit_message: str | None = None) -> str | None:
    """Upload ``folder``'s three files to ``repo_id`` (default: the variant's ``hf_repo``) in one commit.

    With ``dry_run`` only prints the plan (repo, files with sizes and SHA-256, whether a token
    was found) and returns None; otherwise creates the repo if needed and returns the commit URL.
    """
    folder = Path(folder)
    config = check_folder(folder)
    repo_id = repo_id or config.weights.hf_repo
    if not repo_id:
        raise ValueError(f"{config.name} records no Hugging Face repo; pass --repo OWNER/NAME")
    token = token or get_token()
    commit_message = commit_message or f"Upload {config.name} converted from the official checkpoint"
    print(f"{'would upload' if dry_run else 'uploading'} {folder} to https://huggingface.co/{repo_id} "
          f"({'private' if private else 'public'} model repo, created if missing), one commit: {commit_message!r}")
    for name in FILES:
        path = folder / name
        print(f"  {path.stat().st_size:>13,}  {name}  sha256:{file_sha256(path)}")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converters.upload", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="folder written by converters.to_hub_folder")
    parser.add_argument("--repo", help="OWNER/NAME (default: the variant's hf_repo)")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--token", help="Hugging Face token (default: HF_TOKEN or the `hf auth login` cache)")
    parser.add_argument("--message", help="commit message")
    parser.add_argument("--dry-run", action="store_true", help="check the folder and show what would be uploaded")
    args = parser.parse_args(argv)
    try:
        upload(args.folder, args.repo, args.private, args.dry_run, args.token, args.message)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
