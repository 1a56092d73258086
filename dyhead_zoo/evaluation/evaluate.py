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

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from dyhead_zoo.data.coco_data import CocoData, CocoImage, batch_shape, make_loader
from dyhead_zoo.data.preprocess import group_by_padded_shape, normalize_and_pad
from dyhead_zoo.distributed import Distributed
from dyhead_zoo.evaluation.coco_metrics import STAT_NAMES, coco_box_stats, detections_to_coco
from dyhead_zoo.evaluation.store import (
    FORMAT_VERSION,
    Record,
    cut_torn_tail,
    detections_lock,
    read_detections,
    run_key,
    run_settings,
    to_record,
)


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
        cut_torn_tail(path)
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
                    record = to_record(decoded[i][0], detections.to("cpu"))
                    out.write(json.dumps(record) + "\n")
                    produced[record["image_id"]] = record
            out.flush()
            bar.update(len(batch))
    return produced, time.perf_counter() - start


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

    from dyhead_zoo.configs import get_config

    config = get_config(name)
    changes = {k: v for k, v in (("min_size", min_size), ("max_size", max_size)) if v is not None}
    if any(v < 1 for v in changes.values()):
        raise ValueError(f"test sizes must be positive, got {changes}")
    if changes:
        config = dataclasses.replace(config, input=dataclasses.replace(config.input, **changes))
    return config
