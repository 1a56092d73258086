"""The detections store of an evaluation: one JSON-lines file per run key, resumable and locked.

The key covers everything that determines the detections (variant settings, the weights'
contents, device type, DCN backend, the image list by file name and content); a torn last line
from a killed run is cut off before appending; a lock file beside each store keeps a second
evaluation from writing the same file at the same time.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from dyhead_zoo.data.coco_data import CocoData
from dyhead_zoo.errors import EvaluationLockedError

FORMAT_VERSION = 1
Record = dict[str, Any]  # {"image_id": int, "boxes": [[x1, y1, x2, y2], ...], "scores": [...], "labels": [...]}


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's state (names, dtypes, shapes and bytes of every tensor)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def images_fingerprint(data: CocoData) -> str:
    """SHA-256 over every image's id, file name (relative to the image folder), annotated size
    and file content: moving the data set keeps it, changing any image changes it."""
    entries = []
    for im in data.images:
        try:
            name = im.path.relative_to(data.images_dir).as_posix()
        except ValueError:
            name = im.path.name
        try:
            with im.path.open("rb") as f:
                content = hashlib.file_digest(f, "sha256").hexdigest()
        except OSError:
            content = "unreadable"  # reported when the image is decoded
        entries.append([im.id, name, im.height, im.width, content])
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def run_settings(model: nn.Module, data: CocoData) -> dict[str, Any]:
    """Everything that determines the detections of ``model`` on ``data``'s images.

    Batch size, worker count, image limit and the number of processes are left out: they do
    not change any image's detections. The ground-truth boxes are left out too, so fixing an
    annotation reuses the detections, and so is where the data set lies (see
    :func:`images_fingerprint`).
    """
    from dyhead_zoo.ops.deform_conv import resolve_backend
    from dyhead_zoo.version import __version__

    parameter = next(model.parameters())
    images = images_fingerprint(data)
    return {"config": model.config.to_dict(), "weights_sha256": weights_fingerprint(model),
            "device_type": parameter.device.type, "dtype": str(parameter.dtype),
            "dcn_backend": resolve_backend(device=parameter.device),
            "images_sha256": images, "dyhead_zoo": __version__, "format": FORMAT_VERSION}


def run_key(settings: dict[str, Any]) -> str:
    """A short hex key of :func:`run_settings`: files of runs with other settings never mix."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def read_detections(path: Path, key: str | None = None) -> dict[int, Record]:
    """The per-image records of a detections file, skipping a torn or malformed line.

    Lines that are not complete JSON records (a killed writer's last line) are ignored;
    a file whose header names another ``key`` yields nothing.
    """
    records: dict[int, Record] = {}
    with path.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                item = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if not isinstance(item, dict):
                continue
            if "key" in item and key is not None and item["key"] != key:
                return {}
            if {"image_id", "boxes", "scores", "labels"} <= item.keys():
                records[int(item["image_id"])] = item
    return records


def cut_torn_tail(path: Path) -> None:
    """Truncate ``path`` after its last newline, so appending starts on a fresh line."""
    with path.open("rb+") as f:
        size = f.seek(0, os.SEEK_END)
        keep = size
        while keep > 0:
            step = min(keep, 1 << 16)
            f.seek(keep - step)
            block = f.read(step)
            newline = block.rfind(b"\n")
            if newline >= 0:
                keep = keep - step + newline + 1
                break
            keep -= step
        if keep != size:
            f.truncate(keep)


def to_record(image_id: int, detections: Any) -> Record:
    return {"image_id": int(image_id), "boxes": detections.boxes.tolist(),
            "scores": detections.scores.tolist(), "labels": detections.labels.tolist()}


@contextlib.contextmanager
def detections_lock(path: Path) -> Iterator[None]:
    """Hold ``path`` (a ``.lock`` file beside a detections file) for this process, or raise
    :class:`~dyhead_zoo.errors.EvaluationLockedError` when another process holds it.

    The lock is an ``flock`` on the open file, so the system drops it when its holder exits,
    however it ends; the file itself stays. Where ``fcntl`` is missing (Windows) nothing is locked.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    with path.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise EvaluationLockedError(
                f"another evaluation ({holder}) is computing the same detections into {path.parent} right now "
                f"(its lock {path.name} is held): wait for it to finish and run this command again to reuse its "
                "detections, or choose another --output-dir") from None
        try:
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on {platform.node() or 'this machine'}\n")
            f.flush()
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
