"""``dyhead-zoo predict``: photos in, drawn copies and one COCO-style ``predictions.json`` out."""
from __future__ import annotations

import glob
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from dyhead_zoo.data.images import load_image
from dyhead_zoo.models.detections import Detections, category_ids_for, select

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
SAMPLE_IMAGE = "astronaut.jpg"
PREDICTIONS_FILE = "predictions.json"


def sample_image() -> Path:
    """The photograph shipped in the package (NASA's portrait of astronaut Eileen Collins, public
    domain, downscaled to 384x384), used when ``predict`` is given no image."""
    return Path(str(resources.files("dyhead_zoo") / "assets" / SAMPLE_IMAGE))


@dataclass(frozen=True)
class ImageList:
    """Images found from the command's arguments, and the arguments that matched nothing."""

    paths: list[Path]
    unmatched: list[str] = field(default_factory=list)


def find_images(arguments: Sequence[str]) -> ImageList:
    """Expand ``arguments`` (image files, folders searched recursively for image extensions, and
    glob patterns) into image paths in a stable order, without duplicates."""
    paths: list[Path] = []
    unmatched: list[str] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            found = [path]
        elif glob.has_magic(argument):
            found = sorted(Path(p) for p in glob.glob(argument, recursive=True)
                           if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_EXTENSIONS)
        else:
            found = []
        if not found:
            unmatched.append(argument)
        paths.extend(found)
    seen: set[Path] = set()
    unique = []
    for path in paths:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return ImageList(unique, unmatched)


def _output_name(path: Path, used: set[str]) -> str:
    suffix = path.suffix.lower() if path.suffix.lower() in (".jpg", ".jpeg", ".png") else ".png"
    name = path.stem + suffix
    counter = 1
    while name in used:  # same file name from different folders
        name = f"{path.stem}_{counter}{suffix}"
        counter += 1
    used.add(name)
    return name


@dataclass(frozen=True)
class ImageResult:
    """What ``predict`` did with one image: its detections (``None`` when it could not be read,
    then ``error`` says why) and the drawn copy it wrote."""

    path: Path
    detections: Detections | None
    drawn: Path | None = None
    size: tuple[int, int] | None = None
    error: str | None = None


def summary_line(result: ImageResult, score_threshold: float) -> str:
    """One line for the terminal: the file, its size and the detections above the drawing threshold."""
    if result.detections is None:
        return f"{result.path}: skipped: {result.error}"
    shown = select(result.detections, score_threshold)
    counts: dict[str, int] = {}
    for name in shown.label_names:
        counts[name] = counts.get(name, 0) + 1
    listed = ", ".join(f"{n} x{c}" if c > 1 else n for n, c in counts.items()) or "nothing"
    height, width = result.size
    return (f"{result.path}: {width}x{height}, {len(shown)} with score >= {score_threshold:.2f} ({listed}), "
            f"{len(result.detections)} in {PREDICTIONS_FILE} -> {result.drawn}")


def predict_files(model, paths: Sequence[Path], output_dir: Path, score_threshold: float = 0.3,
                  classes: Sequence[int] | None = None, batch_size: int = 1,
                  report: Callable[[ImageResult], None] | None = None) -> list[ImageResult]:
    """Run ``model`` on image files; write a drawn copy of each and ``predictions.json``.

    ``paths`` are read in groups of ``batch_size`` (a file that cannot be read is reported and
    skipped); ``classes`` are 0-based ids of ``model.class_names`` to keep. The drawn copies
    (original size and EXIF orientation, detections scoring at least ``score_threshold``) go to
    ``output_dir``; ``predictions.json`` there holds every kept detection in COCO results format
    (``image_id``, ``category_id``, ``bbox`` [x, y, w, h], ``score``) plus ``file_name``, with
    ``image_id`` the 1-based position of the file in ``paths``. ``report`` is called with each
    result as it is done. Returns one :class:`ImageResult` per path.
    """
    from dyhead_zoo.draw import draw

    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    output_dir.mkdir(parents=True, exist_ok=True)
    category_ids = category_ids_for(model.class_names)
    results: list[ImageResult] = []
    records: list[dict] = []
    used_names: set[str] = set()
    for start in range(0, len(paths), batch_size):
        loaded: list[tuple[int, np.ndarray]] = []
        batch_results: dict[int, ImageResult] = {}
        for index in range(start, min(start + batch_size, len(paths))):
            try:
                loaded.append((index, load_image(paths[index])))
            except (FileNotFoundError, ValueError) as err:
                batch_results[index] = ImageResult(paths[index], None, error=str(err))
        if loaded:
            detections = model.predict([image for _, image in loaded], batch_size=len(loaded))
            for (index, image), det in zip(loaded, detections):
                if classes is not None:
                    det = select(det, classes=classes)
                drawn = output_dir / _output_name(paths[index], used_names)
                draw(image, det, score_threshold=score_threshold).save(drawn)
                for record in det.to_coco(index + 1, category_ids):
                    records.append({"file_name": str(paths[index]), **record})
                batch_results[index] = ImageResult(paths[index], det, drawn, tuple(image.shape[:2]))
        for index in sorted(batch_results):
            results.append(batch_results[index])
            if report is not None:
                report(batch_results[index])
    (output_dir / PREDICTIONS_FILE).write_text(json.dumps(records))
    return results
