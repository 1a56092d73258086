"""``dyhead-zoo download``: fetch and check the published weights once, for this machine or another.

Each variant's weights come from the first of its sources that has them (see
:mod:`dyhead_zoo.weights.fetch`), land in the usual caches and are checked strictly; the command
prints where each file is and its SHA-256. ``to`` copies the files into one folder as
``<variant>.<suffix>``, ready for ``--weights PATH`` on a machine without network; without it,
the caches themselves are what to copy. :func:`cache_listing` is the part of ``dyhead-zoo
info`` that says which variants are already cached, and where.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from dyhead_zoo.weights.fetch import WeightsDownloadError, cached_weights, fetch_weights


def _copy_atomically(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    os.close(fd)
    try:
        shutil.copyfile(source, partial)
        os.replace(partial, target)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return target


def _cache_roots() -> dict[str, Path]:
    import torch
    from huggingface_hub import constants

    return {"torch hub cache": Path(torch.hub.get_dir()) / "checkpoints",
            "Hugging Face cache": Path(constants.HF_HUB_CACHE)}


def download(names: Sequence[str], to: str | os.PathLike | None = None, progress: bool = True,
             out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Fetch, check and report the weights of each variant in ``names``; returns the exit status.

    For each variant prints the source used, the file's path (in the caches, or the copy in
    ``to``) and its SHA-256 to ``out`` (default stdout); a variant whose sources all fail is
    reported on ``err`` (default stderr) with each source's reason, and the others still run.
    Returns 0 when every variant is ready, 1 when any failed. Unknown names raise ValueError
    before anything is fetched.
    """
    from dyhead_zoo.configs import get_config

    out, err = out or sys.stdout, err or sys.stderr
    configs = [get_config(name) for name in names]  # unknown names fail here, before any download
    if not configs:
        raise ValueError("name the variants to download (see `dyhead-zoo download --help`), or pass --all")
    target_dir = Path(to) if to is not None else None
    if target_dir is not None and target_dir.exists() and not target_dir.is_dir():
        raise ValueError(f"--to {target_dir}: this is a file; name a folder (it is created if missing)")
    ready, used_roots = 0, set()
    for config in configs:
        try:
            fetched = fetch_weights(config, progress, with_sha256=True)
        except WeightsDownloadError as error:
            print(f"{config.name}: FAILED\n  " + str(error).replace("\n", "\n  "), file=err)
            continue
        path = fetched.path
        if target_dir is not None:
            path = _copy_atomically(fetched.path, target_dir / f"{config.name}{fetched.path.suffix}")
        else:
            used_roots.update(label for label, root in _cache_roots().items() if root in fetched.path.parents)
        ready += 1
        print(f"{config.name}: ok, from {fetched.source.label}\n  path    {path}\n  sha256  {fetched.sha256}",
              file=out)
    print(f"{ready} of {len(configs)} variants ready.", file=out)
    if ready and target_dir is not None:
        print(f"Copy {target_dir} to the machine without network and pass one file to --weights PATH "
              "(or weights=PATH to dyhead_zoo.create_model).", file=out)
    elif ready:
        roots = _cache_roots()
        print("For a machine without network, copy these folders to the same paths there (or set TORCH_HOME / "
              "HF_HUB_CACHE to where the copies are) and set HF_HUB_OFFLINE=1:", file=out)
        for label in sorted(used_roots, reverse=True):
            print(f"  {roots[label]}  ({label})", file=out)
    return 0 if ready == len(configs) else 1


def cache_listing(names: Sequence[str] | None = None) -> list[str]:
    """Lines saying, per variant, which of its sources' files are cached here and where
    (with sizes), or that none is and which command fetches it. Nothing is downloaded."""
    from dyhead_zoo.configs import get_config, list_models

    names = list(names) if names is not None else list_models()
    roots = _cache_roots()
    lines = [f"{'weights' if i == 0 else '':<13}{label:<19}{root}" for i, (label, root) in enumerate(roots.items())]
    width = max((len(n) for n in names), default=0)
    for name in names:
        found = cached_weights(get_config(name))
        if not found:
            lines.append(f"  {name:<{width}}  not cached (fetch with: dyhead-zoo download {name})")
        for i, (source, path) in enumerate(found):
            size = path.stat().st_size / 1e6
            lines.append(f"  {name if i == 0 else '':<{width}}  cached, {source.role}: {path} ({size:,.1f} MB)")
    return lines
