"""Input checks shared by the commands: device, output folder, weight files, the dataset."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence


def data_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    from dyhead_zoo.data.coco_data import coco_paths

    images, annotations = (coco_paths(args.coco_root) if args.coco_root else (None, None))
    images = Path(args.images) if args.images else images
    annotations = Path(args.annotations) if args.annotations else annotations
    if images is None or annotations is None:
        raise ValueError("say where the dataset is: --coco-root DIR (with val2017/ and "
                         "annotations/instances_val2017.json), or --images DIR and --annotations FILE")
    return images, annotations


def check_output_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` and check that files can be written there, before any model work."""
    import tempfile

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"--output-dir {path} is a file, not a folder; name a folder (it is created if "
                              "needed)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise OSError(f"--output-dir {path} cannot be written ({err.strerror or err}); choose a writable folder "
                      "with free space") from err
    return path


def check_weights(names: Sequence[str], weights: dict[str, str]) -> None:
    for name, path in weights.items():
        if not Path(path).exists():
            raise FileNotFoundError(f"checkpoint for {name} not found: {path}")


def load_data(args: argparse.Namespace, class_names: Sequence[str] | None = None):
    from dyhead_zoo.data.coco_data import check_image_files, load_coco

    if args.batch_size < 1 or args.workers < 0:
        raise ValueError(f"--batch-size must be at least 1 and --workers at least 0, got {args.batch_size} and "
                         f"{args.workers}")
    # A fine-tuned model scores its own classes, matched to the file's categories by name.
    data = load_coco(*data_paths(args), **({"class_names": class_names} if class_names else {}))
    check_image_files(data.first(args.limit))
    return data


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    """The required ``--model NAME`` of the commands that work on one variant."""
    from dyhead_zoo.configs import list_models

    parser.add_argument("--model", required=True, choices=list_models(), metavar="NAME",
                        help="one of: " + ", ".join(list_models()))
