"""Running a detector over a COCO-format dataset: resumable, shardable over processes.

Detections are appended per image to a JSON-lines file named after a key of everything that
determines them (variant settings, the weights' contents, device type, DCN backend, the
image list by file name and content), flushed after every batch. A rerun with the same key
skips the images already there; a torn last line from a killed run is cut off. A lock file
beside each detections file keeps a second evaluation from computing the same images at the
same time. Under ``torchrun`` each process takes a deterministic share of the remaining images
and writes its own file; the detections are gathered on rank 0, which alone scores them.
Images that cannot be decoded are recorded without detections and reported, not fatal.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

from dyhead_zoo.data.coco_data import CocoData, CocoImage, batch_shape, make_loader
from dyhead_zoo.evaluation.coco_metrics import STAT_NAMES, coco_box_stats, detections_to_coco
from dyhead_zoo.data.preprocess import group_by_padded_shape, normalize_and_pad
from dyhead_zoo.errors import EvaluationLockedError

FORMAT_VERSION = 1
Record = dict[str, Any]  # {"image_id": int, "boxes": [[x1, y1, x2, y2], ...], "scores": [...], "labels": [...]}


@dataclass(frozen=True)
class EvalResult:
    """The outcome of :func:`evaluate` on rank 0.

    ``metrics`` are the 12 COCO box statistics in percent (as detectron2 reports them and as
    ``config.published_map`` is given); ``images_per_second`` is the throughput over the
    images computed by this run (all processes together), or of the run that computed them
    when everything was already done. ``skipped`` holds the error message of each image that
    could not be decoded; those images are scored as having no detections.
    """

    model: str
    metrics: dict[str, float]
    num_images: int
    computed_images: int
    images_per_second: float | None
    device: str
    world_size: int
    detections_files: tuple[Path, ...]
    metrics_file: Path
    skipped: tuple[str, ...] = ()


@dataclass(frozen=True)
class Distributed:
    """This process's place among the evaluation processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    group: Any = None  # a gloo group for gathering Python objects, None when not distributed

    def gather(self, obj: Any) -> list[Any] | None:
        """``obj`` of every rank, in rank order, on rank 0 (``None`` elsewhere)."""
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0, group=self.group)
        return out

    def all_gather(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order, on every rank."""
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out


@contextlib.contextmanager
def distributed(device: str) -> Iterator[Distributed]:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1), else run alone.

    Uses NCCL for CUDA devices and gloo otherwise, plus a gloo group for gathering detections
    (they are Python objects on the CPU). Leaves the group on exit.
    """
    if dist.is_initialized():  # by the caller: use its group, leave it to the caller
        group = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        yield Distributed(dist.get_rank(), dist.get_world_size(), group)
        return
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield Distributed()
        return
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    dist.init_process_group(backend)
    try:
        group = dist.new_group(backend="gloo") if backend != "gloo" else dist.group.WORLD
        yield Distributed(dist.get_rank(), dist.get_world_size(), group)
    finally:
        dist.destroy_process_group()


def default_device() -> str:
    """``cuda:<LOCAL_RANK>`` when CUDA is available (``torchrun`` sets LOCAL_RANK), else ``cpu``."""
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


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
    from dyhead_zoo import __version__
    from dyhead_zoo.ops.deform_conv import resolve_backend

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


def _cut_torn_tail(path: Path) -> None:
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


def _record(image_id: int, detections: Any) -> Record:
    return {"image_id": int(image_id), "boxes": detections.boxes.tolist(),
            "scores": detections.scores.tolist(), "labels": detections.labels.tolist()}


def _share(images: Sequence[CocoImage], data_config: Any, rank: int, world_size: int) -> list[CocoImage]:
    # Deal images in shape order so each process gets a similar mix of shapes (and batches).
    ordered = sorted(images, key=lambda im: (batch_shape(im, data_config), im.id))
    return ordered[rank::world_size]


def _run(model: nn.Module, images: Sequence[CocoImage], path: Path, header: dict[str, Any], batch_size: int,
         workers: int, progress: bool, desc: str) -> tuple[dict[int, Record], float]:
    from tqdm import tqdm

    config = model.config.input
    parameter = next(model.parameters())
    device, dtype = parameter.device, parameter.dtype
    produced: dict[int, Record] = {}
    if not images:
        return produced, 0.0
    if path.exists():
        _cut_torn_tail(path)
    fresh = not path.exists() or path.stat().st_size == 0
    loader = make_loader(images, config, batch_size, workers, pin_memory=device.type == "cuda")
    start = time.perf_counter()
    with path.open("a", encoding="utf-8") as out, \
            tqdm(total=len(images), unit="img", desc=desc, disable=not progress, file=sys.stderr,
                 dynamic_ncols=True) as bar:
        if fresh:
            out.write(json.dumps(header) + "\n")
            out.flush()
        for batch in loader:
            for image_id, error, _ in batch:
                if isinstance(error, str):  # could not be decoded: recorded as such, reported at the end
                    record = {"image_id": int(image_id), "boxes": [], "scores": [], "labels": [], "error": error}
                    out.write(json.dumps(record) + "\n")
                    produced[record["image_id"]] = record
            decoded = [item for item in batch if not isinstance(item[1], str)]
            # Group by the decoded shape as well: the annotated size may mislead (EXIF).
            for indices in group_by_padded_shape([tensor for _, tensor, _ in decoded], config.size_divisibility):
                tensors = [decoded[i][1].to(device, non_blocking=True).float() for i in indices]
                padded, sizes = normalize_and_pad(tensors, config)
                outputs = model(padded.to(dtype), sizes, output_sizes=[decoded[i][2] for i in indices])
                for i, detections in zip(indices, outputs):
                    record = _record(decoded[i][0], detections.to("cpu"))
                    out.write(json.dumps(record) + "\n")
                    produced[record["image_id"]] = record
            out.flush()
            bar.update(len(batch))
    return produced, time.perf_counter() - start


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


def subset_name(num_images: int, total: int) -> str:
    """``all`` or ``first<N>``: which images of the data set a metrics file scores."""
    return "all" if num_images >= total else f"first{num_images}"


def evaluate(model: nn.Module, data: CocoData, output_dir: str | os.PathLike, limit: int | None = None,
             batch_size: int = 1, workers: int = 0, progress: bool = True,
             group: Distributed | None = None) -> EvalResult | None:
    """Run ``model`` over the first ``limit`` images of ``data`` and score its boxes.

    Detections are appended to ``output_dir/<variant>-<key>.rank<r>.jsonl`` as they are made,
    and images already in any file with the same key are not run again. With ``group``
    (see :func:`distributed`) the remaining images are shared among the processes and the
    detections gathered on rank 0. Returns the :class:`EvalResult` on rank 0, ``None`` on
    other ranks. Call :func:`dyhead_zoo.data.coco_data.check_image_files` first to fail early.
    """
    group = group or Distributed()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    name = model.config.name
    images = data.first(limit)
    wanted = {im.id for im in images}
    settings = run_settings(model, data)
    key = run_key(settings)
    stem = f"{name}-{key}"

    done: dict[int, Record] = {}
    for path in sorted(output_dir.glob(f"{stem}.rank*.jsonl")):
        for image_id, record in read_detections(path, key).items():
            if image_id in wanted:
                done.setdefault(image_id, record)
    # Files may sit on disks other ranks cannot see: agree on what is done, and let the
    # lowest rank holding an image send it.
    held = group.all_gather(sorted(done))
    owner: dict[int, int] = {}
    for rank, ids in enumerate(held):
        for image_id in ids:
            owner.setdefault(image_id, rank)
    remaining = [im for im in images if im.id not in owner]
    if group.rank == 0 and owner and progress:
        print(f"{name}: resuming, {len(owner)} of {len(images)} images already done ({output_dir})",
              file=sys.stderr)

    mine = _share(remaining, model.config.input, group.rank, group.world_size)
    path = output_dir / f"{stem}.rank{group.rank}.jsonl"
    header = {"key": key, "format": FORMAT_VERSION, "settings": settings}
    with detections_lock(path.with_suffix(".lock")):
        produced, seconds = _run(model, mine, path, header, batch_size, workers, progress and group.rank == 0,
                                 f"{name} [rank 0 of {group.world_size}]" if group.world_size > 1 else name)
    sent = {image_id: record for image_id, record in done.items() if owner[image_id] == group.rank}
    sent.update(produced)
    gathered = group.gather((sent, len(produced), seconds if produced else 0.0))
    if gathered is None:
        return None

    records: dict[int, Record] = {}
    for part, _, _ in gathered:
        records.update(part)
    missing = wanted - records.keys()
    if missing:
        raise RuntimeError(f"no detections for {len(missing)} images, e.g. {sorted(missing)[:5]}")
    computed = sum(count for _, count, _ in gathered)
    longest = max(elapsed for _, _, elapsed in gathered)
    subset = subset_name(len(images), len(data.images))
    metrics_file = output_dir / f"{stem}.{subset}.metrics.json"  # a --limit run must not overwrite the full one
    speed = computed / longest if computed and longest > 0 else _previous_speed(metrics_file)
    results = [d for image_id in sorted(records) if image_id in wanted for d in detections_to_coco(
        image_id, records[image_id]["boxes"], records[image_id]["scores"], records[image_id]["labels"],
        data.category_ids)]
    stats = coco_box_stats(data.ground_truth, results, sorted(wanted))
    metrics = {k: 100.0 * v if v >= 0 else v for k, v in stats.items()}
    device = str(next(model.parameters()).device)
    skipped = tuple(records[image_id]["error"] for image_id in sorted(wanted) if "error" in records[image_id])
    result = EvalResult(name, metrics, len(images), computed, speed, device, group.world_size,
                        tuple(sorted(output_dir.glob(f"{stem}.rank*.jsonl"))), metrics_file, skipped)
    metrics_file.write_text(json.dumps({
        "model": name, "metrics_percent": metrics, "stat_names": list(STAT_NAMES),
        "published_map": model.config.published_map, "num_images": len(images), "subset": subset,
        "images_per_second": speed, "device": device, "world_size": group.world_size,
        "annotations": str(data.annotations), "key": key, "skipped_images": list(skipped)}, indent=2) + "\n")
    return result


def _previous_speed(metrics_file: Path) -> float | None:
    try:
        return json.loads(metrics_file.read_text()).get("images_per_second")
    except (OSError, ValueError):
        return None


def eval_config(name: str, min_size: int | None = None, max_size: int | None = None):
    """Variant ``name``'s config, with the test size changed where given.

    The published numbers use the defaults (shorter side 800, longer at most 1333); smaller
    sizes are for quick checks and give other, lower numbers.
    """
    import dataclasses

    from dyhead_zoo.registry import get_config

    config = get_config(name)
    changes = {k: v for k, v in (("min_size", min_size), ("max_size", max_size)) if v is not None}
    if any(v < 1 for v in changes.values()):
        raise ValueError(f"test sizes must be positive, got {changes}")
    if changes:
        config = dataclasses.replace(config, input=dataclasses.replace(config.input, **changes))
    return config
