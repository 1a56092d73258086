"""Turn a DyHead checkpoint into a folder ready for the Hugging Face Hub.

    dyhead-zoo convert dyhead_r50_atss_fpn_1x --out hub/dyhead_r50_atss_fpn_1x
    dyhead-zoo convert dyhead_r50_atss_fpn_1x --checkpoint FILE.pth --out DIR

Without ``--checkpoint`` the official ``.pth`` is downloaded once into the torch hub cache.
The folder gets ``model.safetensors`` (official keys; metadata: variant, the input's SHA-256,
its URL when known, and whether it is the official file), ``config.json`` (the variant's
settings and COCO category names) and a ``README.md`` model card. The input counts as the
official checkpoint only when its SHA-256 equals the one pinned in the variant's record; until
hashes are pinned (``dyhead-zoo pin-hashes``) the card says "unverified source". The checkpoint
is checked strictly against the variant, and the written file is read back and compared bit
for bit before the command reports success.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from dyhead_zoo.converters import script_main


@dataclass(frozen=True)
class Provenance:
    """Where a converted checkpoint came from: its SHA-256 (always), its URL (when known) and
    whether that hash is the one pinned for the official release."""

    sha256: str
    url: str = ""
    official: bool = False


def same_bits(a, b) -> bool:
    """True when tensors ``a`` and ``b`` have the same dtype, shape and bytes (NaN payloads and -0.0 included)."""
    import torch

    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def provenance(config, checkpoint: str | os.PathLike, url: str = "") -> Provenance:
    """The :class:`Provenance` of ``checkpoint`` for variant ``config``: official only when its
    SHA-256 equals the pinned hash of the official file (none is pinned: never official)."""
    from dyhead_zoo.weights.checkpoint import file_sha256

    sha256 = file_sha256(checkpoint)
    return Provenance(sha256, url, bool(config.weights.sha256) and sha256 == config.weights.sha256.lower())


def convert(name: str, out_dir: str | os.PathLike, checkpoint: str | os.PathLike | None = None,
            source_url: str | None = None, allow_unsafe_pickle: bool = False, progress: bool = True,
            config=None) -> Path:
    """Write the Hub folder of variant ``name`` from a checkpoint; returns ``out_dir``.

    ``checkpoint``: a local ``.pth``/``.pkl`` (default: the official release's file, fetched
    into the torch hub cache, whose URL is then recorded). ``source_url`` records where a
    local file came from. ``config`` overrides the variant's record (default
    ``get_config(name)``). The card and metadata call the input official only when its
    SHA-256 is the pinned one. Raises :class:`~dyhead_zoo.weights.checkpoint.CheckpointMismatchError`
    naming missing, unexpected or mis-shaped keys.
    """
    from dyhead_zoo.configs import get_config
    from dyhead_zoo.models.detector import DyHeadDetector
    from dyhead_zoo.weights import hub
    from dyhead_zoo.weights.checkpoint import SAFETENSORS_NAME, conform_state_dict, read_state_dict
    from dyhead_zoo.weights.fetch import WeightsDownloadError, fetch_source

    config = config or get_config(name)
    if checkpoint is None:
        official = config.weights.first("official")
        if official is None:
            raise ValueError(f"{name} records no official checkpoint URL; pass --checkpoint FILE")
        try:
            checkpoint, source_url = fetch_source(official, progress), source_url or official.url
        except WeightsDownloadError as err:
            raise WeightsDownloadError(f"could not fetch the official checkpoint of {name} ({official.url}): "
                                       f"{err.reason}; download it where there is network and pass --checkpoint FILE",
                                       reason=err.reason) from err
    checkpoint = Path(checkpoint)
    origin = provenance(config, checkpoint, source_url or "")
    state = conform_state_dict(DyHeadDetector(config), read_state_dict(checkpoint, allow_unsafe_pickle))
    out_dir = hub.save_folder(state, config, out_dir, origin.url, origin.sha256, source_official=origin.official)
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The converter's options, shared by ``dyhead-zoo convert`` and ``python -m``."""
    from dyhead_zoo.configs import list_models

    parser.add_argument("name", choices=list_models(), metavar="NAME", help="zoo variant: " + ", ".join(list_models()))
    parser.add_argument("--out", type=Path, help="output folder (default: hub/NAME)")
    parser.add_argument("--checkpoint", type=Path, help="local checkpoint (default: download the official .pth)")
    parser.add_argument("--source-url", help="where the local checkpoint came from, recorded as its origin")
    parser.add_argument("--allow-unsafe-pickle", action="store_true",
                        help="read checkpoints that need arbitrary unpickling (only files you trust)")
    parser.add_argument("--no-progress", action="store_true", help="no download progress bar")


def run(args: argparse.Namespace) -> int:
    """Convert as ``args`` say and print the folder, the input's SHA-256 and its provenance."""
    from dyhead_zoo.weights.checkpoint import SAFETENSORS_NAME
    from dyhead_zoo.weights.hub import weights_metadata

    out_dir = args.out or Path("hub") / args.name
    convert(args.name, out_dir, args.checkpoint, args.source_url, args.allow_unsafe_pickle, not args.no_progress)
    metadata = weights_metadata(out_dir / SAFETENSORS_NAME)
    print(f"{out_dir}:\n{folder_listing(out_dir)}")
    print(f"input SHA-256 {metadata['source_sha256']}: " + (
        "the pinned hash of the official checkpoint" if metadata.get("source") == "official" else
        "UNVERIFIED source (no pinned official hash matches; the card says so)"))
    print("model.safetensors is bit-identical to the checkpoint; upload with "
          f"`dyhead-zoo upload {out_dir} --repo OWNER/NAME --dry-run`")
    return 0


def main(argv: list[str] | None = None) -> int:
    return script_main("dyhead-zoo convert", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
