"""Turn an official DyHead checkpoint into a folder ready for the Hugging Face Hub.

    python -m converters.to_hub_folder dyhead_r50_atss_fpn_1x --out hub/dyhead_r50_atss_fpn_1x
    python -m converters.to_hub_folder dyhead_r50_atss_fpn_1x --checkpoint FILE.pth --out DIR

Without ``--checkpoint`` the official ``.pth`` is downloaded once into the torch hub cache.
The folder gets ``model.safetensors`` (official keys; metadata: variant, source URL, source
SHA-256), ``config.json`` (the variant's settings and COCO category names) and a ``README.md``
model card. The checkpoint is checked strictly against the variant, and the written file is
read back and compared bit for bit before the command reports success.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from torch import Tensor

from dyhead_zoo import hub
from dyhead_zoo.checkpoint import SAFETENSORS_NAME, conform_state_dict, file_sha256, read_state_dict
from dyhead_zoo.models.detector import DyHeadDetector
from dyhead_zoo.registry import get_config, list_models
from dyhead_zoo.weights import fetch_official_checkpoint


def same_bits(a: Tensor, b: Tensor) -> bool:
    """True when ``a`` and ``b`` have the same dtype, shape and bytes (NaN payloads and -0.0 included)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def convert(name: str, out_dir: str | os.PathLike, checkpoint: str | os.PathLike | None = None,
            source_url: str | None = None, allow_unsafe_pickle: bool = False, progress: bool = True) -> Path:
    """Write the Hub folder of variant ``name`` from an official checkpoint; returns ``out_dir``.

    ``checkpoint``: a local official ``.pth``/``.pkl`` (default: the release's file, fetched into
    the torch hub cache). ``source_url`` is recorded as its origin (default: the release URL).
    Raises :class:`~dyhead_zoo.checkpoint.CheckpointMismatchError` naming missing, unexpected
    or mis-shaped keys, and ``ValueError`` when the checkpoint's SHA-256 is not the pinned one.
    """
    config = get_config(name)
    checkpoint = Path(checkpoint) if checkpoint is not None else fetch_official_checkpoint(config, progress)
    sha256 = file_sha256(checkpoint)
    if config.weights.sha256 and sha256 != config.weights.sha256:
        raise ValueError(f"{checkpoint} has SHA-256 {sha256}, but {name}'s official checkpoint has "
                         f"{config.weights.sha256}; pass the file downloaded from {config.weights.url}")
    state = conform_state_dict(DyHeadDetector(config), read_state_dict(checkpoint, allow_unsafe_pickle))
    out_dir = hub.save_folder(state, config, out_dir, source_url or config.weights.url, sha256)
    written = read_state_dict(out_dir / SAFETENSORS_NAME)
    differing = [k for k in state if not same_bits(state[k], written[k])]
    if written.keys() != state.keys() or differing:
        raise RuntimeError(f"{out_dir / SAFETENSORS_NAME} does not read back as written: {differing[:5]}")
    return out_dir


def folder_listing(directory: str | os.PathLike) -> str:
    """``ls -l``-style lines (size in bytes, name) of the files in ``directory``."""
    files = sorted(p for p in Path(directory).iterdir() if p.is_file())
    width = max((len(f"{p.stat().st_size:,}") for p in files), default=0)
    return "\n".join(f"  {p.stat().st_size:>{width},}  {p.name}" for p in files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converters.to_hub_folder", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=list_models(), help="zoo variant")
    parser.add_argument("--out", type=Path, help="output folder (default: hub/NAME)")
    parser.add_argument("--checkpoint", type=Path, help="local official .pth (default: download the release's)")
    parser.add_argument("--source-url", help="origin recorded in the metadata (default: the release URL)")
    parser.add_argument("--allow-unsafe-pickle", action="store_true",
                        help="read checkpoints that need arbitrary unpickling (only files you trust)")
    parser.add_argument("--no-progress", action="store_true", help="no download progress bar")
    args = parser.parse_args(argv)
    out_dir = args.out or Path("hub") / args.name
    try:
        convert(args.name, out_dir, args.checkpoint, args.source_url, args.allow_unsafe_pickle, not args.no_progress)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{out_dir}:\n{folder_listing(out_dir)}")
    print("model.safetensors is bit-identical to the checkpoint; upload with "
          f"`python -m converters.upload {out_dir} --dry-run`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
