"""Reproducing the published COCO numbers: every variant evaluated, one table of the results."""
from __future__ import annotations

import gc
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

from dyhead_zoo.data.coco_data import CocoData
from dyhead_zoo.distributed import Distributed
from dyhead_zoo.evaluation.evaluate import eval_config, evaluate


@dataclass(frozen=True)
class ReproRow:
    """One variant's line: published and measured mAP (percent), their difference, speed."""

    variant: str
    published_map: float
    measured_map: float
    difference: float
    images_per_second: float | None
    device: str
    images: int


def reproduce(data: CocoData, models: Sequence[str], output_dir: str | os.PathLike,
              weights: Mapping[str, str | os.PathLike] | None = None, device: str = "cpu",
              limit: int | None = None, batch_size: int = 1, workers: int = 0,
              min_size: int | None = None, max_size: int | None = None, progress: bool = True,
              group: Distributed | None = None, allow_unsafe_pickle: bool = False) -> list[ReproRow] | None:
    """Evaluate each of ``models`` on ``data`` and return one :class:`ReproRow` per variant.

    ``weights`` maps variant names to local checkpoints; the others use the published
    weights, all fetched before any evaluation (see :func:`resolve_weights`). Detections are
    kept (and resumed) under ``output_dir`` as in :func:`dyhead_zoo.evaluation.evaluate.evaluate`;
    ``reproduce.json``/``.md`` are rewritten there after each variant, so finished rows survive
    a later failure. Returns the rows on rank 0, ``None`` on other ranks.
    """
    from dyhead_zoo.registry import create_model

    weights = dict(weights or {})
    unknown = set(weights) - set(models)
    if unknown:
        raise ValueError(f"weights given for {sorted(unknown)}, which are not among the models {list(models)}")
    paths = resolve_weights(models, weights, progress=progress)
    rows = []
    for name in models:
        config = eval_config(name, min_size, max_size)
        model = create_model(name, weights=paths[name], config=config, device=device,
                             allow_unsafe_pickle=allow_unsafe_pickle)
        result = evaluate(model, data, output_dir, limit=limit, batch_size=batch_size, workers=workers,
                          progress=progress, group=group)
        del model
        gc.collect()
        if result is not None:
            measured = result.metrics["AP"]
            rows.append(ReproRow(name, config.published_map, measured, measured - config.published_map,
                                 result.images_per_second, result.device, result.num_images))
            write_table(rows, output_dir)
    return rows if group is None or group.rank == 0 else None


def resolve_weights(models: Sequence[str], weights: Mapping[str, str | os.PathLike],
                    progress: bool = True) -> dict[str, Path]:
    """A local checkpoint for every one of ``models``: ``weights[name]`` where given, else the
    published weights, fetched now (see :func:`dyhead_zoo.weights.fetch.download_weights`).

    Raises :class:`~dyhead_zoo.weights.fetch.WeightsDownloadError` naming every variant whose weights
    could not be had, before any evaluation starts.
    """
    from dyhead_zoo.configs import get_config
    from dyhead_zoo.weights.fetch import WeightsDownloadError, download_weights

    paths: dict[str, Path] = {}
    failures: list[tuple[str, WeightsDownloadError]] = []
    for name in models:
        if name in weights:
            paths[name] = Path(weights[name])
            continue
        try:
            paths[name] = download_weights(get_config(name), progress)
        except WeightsDownloadError as err:
            failures.append((name, err))
    if failures:
        names = ", ".join(name for name, _ in failures)
        details = "\n".join(str(err) for _, err in failures)
        raise WeightsDownloadError(
            f"the weights of {len(failures)} of {len(models)} variants are not available ({names}); nothing was "
            f"evaluated. Give local checkpoints with --weights NAME=PATH, or leave these variants out of "
            f"--models.\n{details}", reason=f"no weights for {names}")
    return paths


def markdown_table(rows: Sequence[ReproRow]) -> str:
    """The rows as a Markdown table (mAP in percent, signed difference)."""
    lines = ["| variant | published mAP | measured mAP | difference | images/s | device | images |",
             "|---|---:|---:|---:|---:|---|---:|"]
    for row in rows:
        speed = "n/a" if row.images_per_second is None else f"{row.images_per_second:.2f}"
        lines.append(f"| {row.variant} | {row.published_map:.1f} | {row.measured_map:.2f} | "
                     f"{row.difference:+.2f} | {speed} | {row.device} | {row.images} |")
    return "\n".join(lines) + "\n"


def write_table(rows: Sequence[ReproRow], output_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``reproduce.json`` and ``reproduce.md`` into ``output_dir``; return their paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = output_dir / "reproduce.json", output_dir / "reproduce.md"
    json_path.write_text(json.dumps([asdict(row) for row in rows], indent=2) + "\n")
    md_path.write_text(markdown_table(rows))
    return json_path, md_path
