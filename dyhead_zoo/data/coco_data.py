"""COCO-format detection datasets: checked before any model work, decoded in DataLoader workers.

:func:`load_coco` reads and checks an annotation file and its image folder; :func:`check_image_files`
opens every image header of the images to evaluate; :func:`make_loader` yields batches of
resized images whose padded shapes agree, so a batch gives the same detections as its
images one at a time.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from dyhead_zoo.categories import COCO_CLASS_NAMES
from dyhead_zoo.config import InputConfig
from dyhead_zoo.data.images import load_image, too_large_message
from dyhead_zoo.data.preprocess import padded_shape, resize, resized_shape, to_channel_order


@dataclass(frozen=True)
class CocoImage:
    """One image of the dataset: its annotation ``id``, file ``path`` and annotated size."""

    id: int
    path: Path
    height: int
    width: int


@dataclass(frozen=True)
class CocoData:
    """A checked COCO-format dataset.

    ``images`` are sorted by id; ``ground_truth`` is the parsed annotation file (the dict the
    metric library reads); ``category_ids[label]`` is the annotation file's category id of the
    model's contiguous ``label``, or ``None`` when the file has no such category.
    """

    images_dir: Path
    annotations: Path
    images: tuple[CocoImage, ...]
    ground_truth: dict[str, Any]
    category_ids: tuple[int | None, ...]

    def first(self, limit: int | None) -> tuple[CocoImage, ...]:
        """The first ``limit`` images by id (all of them for ``None``)."""
        if limit is not None and limit < 1:
            raise ValueError(f"--limit must be a positive number of images, got {limit}")
        return self.images if limit is None else self.images[:limit]


def coco_paths(coco_root: str | os.PathLike) -> tuple[Path, Path]:
    """The val2017 images folder and instances annotation file under a COCO root folder."""
    root = Path(coco_root)
    return root / "val2017", root / "annotations" / "instances_val2017.json"


def _normalise(name: str) -> str:
    return re.sub(r"[\s_-]+", " ", name.strip().lower())


def category_mapping(categories: Sequence[dict[str, Any]],
                     class_names: Sequence[str] = COCO_CLASS_NAMES) -> tuple[int | None, ...]:
    """Map each contiguous label (an index into ``class_names``) to a category id, by name.

    ``categories`` is an annotation file's ``categories`` list (dicts with ``id`` and ``name``).
    Names are compared ignoring case, spaces, ``_`` and ``-``. Labels with no category get
    ``None``; file categories the model cannot predict raise a warning, and a file sharing no
    category name with the model raises ``ValueError``.
    """
    by_name: dict[str, int] = {}
    for category in categories:
        by_name[_normalise(str(category["name"]))] = int(category["id"])
    ids = tuple(by_name.get(_normalise(name)) for name in class_names)
    if all(i is None for i in ids):
        shown = ", ".join(repr(c["name"]) for c in list(categories)[:5])
        raise ValueError(f"the annotation file's categories ({shown}, ...) share no name with the model's "
                         f"{len(class_names)} COCO classes ({class_names[0]!r}, {class_names[1]!r}, ...); "
                         "give the categories their COCO names")
    known = {_normalise(name) for name in class_names}
    unknown = [c["name"] for c in categories if _normalise(str(c["name"])) not in known]
    if unknown:
        warnings.warn(f"{len(unknown)} annotation categories are not among the model's classes and will score "
                      f"AP 0: {unknown[:10]}", stacklevel=2)
    return ids


def coco_format_error(path: Path, problem: str) -> ValueError:
    """A ``ValueError`` naming ``path``, its ``problem`` and the layout a COCO instances file has."""
    return ValueError(f"{path}: {problem}; expected a COCO-format instances file "
                      "(images, annotations and categories lists, as in instances_val2017.json)")


def _check_fields(path: Path, section: str, items: Any, fields: dict[str, type | tuple[type, ...]]) -> None:
    if not isinstance(items, list):
        raise coco_format_error(path, f"'{section}' is a {type(items).__name__}, not a list")
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise coco_format_error(path, f"{section}[{index}] is a {type(item).__name__}, not an object")
        for field, kind in fields.items():
            if field not in item:
                raise coco_format_error(path, f"{section}[{index}] has no '{field}'")
            if not isinstance(item[field], kind) or isinstance(item[field], bool):
                raise coco_format_error(path, f"{section}[{index}]['{field}'] is {item[field]!r}")


def read_instances(annotations: Path, annotation_fields: dict[str, type | tuple[type, ...]]) -> dict[str, Any]:
    """Parse a COCO instances JSON file and check its layout: ``images`` (id, file_name, height,
    width), ``categories`` (id, name) and ``annotations`` with ``annotation_fields``. Raises
    :func:`coco_format_error`'s ``ValueError`` naming the first problem."""
    try:
        with annotations.open("rb") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise coco_format_error(annotations, f"not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise coco_format_error(annotations, f"the top level is a {type(data).__name__}, not an object")
    for section in ("images", "annotations", "categories"):
        if section not in data:
            raise coco_format_error(annotations, f"no '{section}' list")
    _check_fields(annotations, "images", data["images"], {"id": int, "file_name": str, "height": int, "width": int})
    _check_fields(annotations, "categories", data["categories"], {"id": int, "name": str})
    _check_fields(annotations, "annotations", data["annotations"], annotation_fields)
    return data


def load_coco(images_dir: str | os.PathLike, annotations: str | os.PathLike,
              class_names: Sequence[str] = COCO_CLASS_NAMES) -> CocoData:
    """Read and check a COCO-format detection dataset.

    Raises ``FileNotFoundError`` for a missing folder, annotation file or image file, and
    ``ValueError`` for a file that is not valid JSON or not in the COCO instances layout.
    Image contents are not read here (see :func:`check_image_files`).
    """
    images_dir, annotations = Path(images_dir).resolve(), Path(annotations).resolve()
    if not annotations.is_file():
        raise FileNotFoundError(f"annotation file not found: {annotations} (for COCO: "
                                "DIR/annotations/instances_val2017.json, from annotations_trainval2017.zip)")
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {images_dir} (for COCO: DIR/val2017, from val2017.zip)")
    number = (int, float)
    gt = read_instances(annotations, {"id": int, "image_id": int, "category_id": int, "bbox": list, "area": number})
    image_ids = {im["id"] for im in gt["images"]}
    if len(image_ids) != len(gt["images"]):
        raise coco_format_error(annotations, "image ids are not unique")
    category_ids = {c["id"] for c in gt["categories"]}
    for index, ann in enumerate(gt["annotations"]):
        if ann["image_id"] not in image_ids or ann["category_id"] not in category_ids:
            raise coco_format_error(annotations, f"annotations[{index}] refers to an unknown image or category")
        if len(ann["bbox"]) != 4 or not all(isinstance(v, number) for v in ann["bbox"]):
            raise coco_format_error(annotations, f"annotations[{index}]['bbox'] is not [x, y, width, height]")
    negative = sum(1 for ann in gt["annotations"] if ann["bbox"][2] < 0 or ann["bbox"][3] < 0)
    if negative:
        warnings.warn(f"{annotations}: {negative} of {len(gt['annotations'])} ground-truth boxes have a negative "
                      "width or height (bbox is [x, y, width, height]); they can never be matched", stacklevel=2)
    images = tuple(sorted((CocoImage(im["id"], images_dir / im["file_name"], im["height"], im["width"])
                           for im in gt["images"]), key=lambda im: im.id))
    for image in images:
        if image.height < 1 or image.width < 1:
            raise coco_format_error(annotations, f"image {image.id} has size {image.width}x{image.height}")
    return CocoData(images_dir, annotations, images, gt, category_mapping(gt["categories"], class_names))


def check_image_files(images: Sequence[CocoImage]) -> None:
    """Check that every image file exists and has a readable header of the annotated size.

    Reads only the headers (milliseconds per image). Raises ``FileNotFoundError`` listing
    missing files and ``ValueError`` for an unreadable file or a size that disagrees with
    the annotation (EXIF rotation taken into account, as the decoder applies it).
    """
    missing = [str(im.path) for im in images if not im.path.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(images)} image files are missing, e.g. {missing[:3]}; "
                                "check --images / --coco-root")
    for image in images:
        try:
            with Image.open(image.path) as pil:
                width, height = pil.size
                if pil.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF orientations that swap the axes
                    width, height = height, width
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise ValueError(f"{image.path}: not a readable image file ({err})") from err
        except Image.DecompressionBombError as err:
            raise ValueError(too_large_message(image.path, err)) from err
        if (height, width) != (image.height, image.width):
            raise ValueError(f"{image.path}: the image is {width}x{height} but the annotation file says "
                             f"{image.width}x{image.height}; fix the 'width'/'height' of image {image.id}")


class CocoImages(Dataset):
    """Decoded, resized images: item ``i`` is ``(image_id, (3, h, w) uint8 tensor, (H, W))``,
    the tensor in the model's channel order and (H, W) the size boxes are reported in.

    An image that cannot be decoded (a truncated file with a valid header, a size that
    disagrees with the annotation) gives its error message (a ``str``) in place of the tensor:
    one bad file must not abort a long run; the caller skips and reports it.
    """

    def __init__(self, images: Sequence[CocoImage], config: InputConfig) -> None:
        self.images = list(images)
        self.config = config

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[int, Tensor | str, tuple[int, int]]:
        image = self.images[index]
        try:
            rgb = load_image(image.path)
        except (ValueError, OSError) as err:
            return image.id, str(err), (image.height, image.width)
        if rgb.shape[:2] != (image.height, image.width):
            return image.id, (f"{image.path}: decoded as {rgb.shape[1]}x{rgb.shape[0]} but the annotation says "
                              f"{image.width}x{image.height}; fix the 'width'/'height' of image {image.id}"), \
                (image.height, image.width)
        return image.id, to_channel_order(resize(rgb, self.config), self.config), (image.height, image.width)


def batch_shape(image: CocoImage, config: InputConfig) -> tuple[int, int]:
    """The padded (H, W) of ``image``'s batch tensor, from its annotated size."""
    h, w = resized_shape(image.height, image.width, config.min_size, config.max_size)
    return padded_shape(h, w, config.size_divisibility)


def shape_batches(images: Sequence[CocoImage], config: InputConfig, batch_size: int) -> list[list[int]]:
    """Indices of ``images`` in batches of at most ``batch_size`` sharing one padded shape.

    Images are grouped by shape, then by id, so the order is deterministic.
    """
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    groups: dict[tuple[int, int], list[int]] = {}
    for index in sorted(range(len(images)), key=lambda i: images[i].id):
        groups.setdefault(batch_shape(images[index], config), []).append(index)
    return [indices[i:i + batch_size] for _, indices in sorted(groups.items())
            for i in range(0, len(indices), batch_size)]


def _as_list(items: list) -> list:
    return items


def make_loader(images: Sequence[CocoImage], config: InputConfig, batch_size: int = 1, workers: int = 0,
                pin_memory: bool = False) -> DataLoader:
    """A DataLoader over ``images`` that decodes and resizes in ``workers`` processes.

    Each batch is a list of :class:`CocoImages` items of one padded shape (see
    :func:`shape_batches`); normalise and pad them with
    :func:`dyhead_zoo.data.preprocess.normalize_and_pad` after ``.float()``.
    """
    if workers < 0:
        raise ValueError(f"--workers must be 0 (decode in the main process) or more, got {workers}")
    return DataLoader(CocoImages(images, config), batch_sampler=shape_batches(images, config, batch_size),
                      num_workers=workers, collate_fn=_as_list, pin_memory=pin_memory)
