"""``dyhead_zoo.train(TrainSettings(...))``: a whole run from a variant name and COCO-format files.

Everything that can be wrong with the inputs is checked before the model is built: the
training and validation sets (files, boxes, categories), the weights, the device and the AMP
mode, the output folder. Then the model is built for the training set's classes, its
starting weights loaded (fine-tuning re-initialises the class-dependent layers), and the
:class:`~dyhead_zoo.engine.trainer.Trainer` runs, resuming when asked.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dyhead_zoo.config import ModelConfig
from dyhead_zoo.distributed import distributed, resolve_device
from dyhead_zoo.engine.recipe import TrainRecipe, run_recipe
from dyhead_zoo.engine.snapshots import CHECKPOINTS_DIR, last_checkpoint
from dyhead_zoo.engine.trainer import Trainer, TrainResult


def _weights_source(weights: str | os.PathLike | None, pretrained: bool, from_scratch: bool) -> str:
    chosen = [name for name, on in (("--weights", weights is not None), ("--pretrained", pretrained),
                                    ("--from-scratch", from_scratch)) if on]
    if len(chosen) > 1:
        raise ValueError(f"choose one starting point, not {' and '.join(chosen)}: --weights PATH (a checkpoint), "
                         "--pretrained (the published COCO weights) or --from-scratch (ImageNet backbone)")
    if weights is not None:
        path = Path(weights)
        if not path.exists():
            raise FileNotFoundError(f"--weights {path}: no such file or folder (a .pth / .safetensors checkpoint, "
                                    "or a folder with model.safetensors and config.json)")
        return "weights"
    return "from_scratch" if from_scratch else "pretrained"


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], tuple[str, ...] | None]:
    """A checkpoint's state_dict and, when it says so (a folder with config.json), its classes."""
    import json

    from dyhead_zoo.weights.checkpoint import SAFETENSORS_NAME, read_state_dict
    from dyhead_zoo.weights.hub import CONFIG_NAME, config_from_json

    if path.is_dir():
        if not (path / SAFETENSORS_NAME).is_file():
            raise FileNotFoundError(f"--weights {path}: the folder has no {SAFETENSORS_NAME}")
        names = None
        if (path / CONFIG_NAME).is_file():
            names = tuple(config_from_json(json.loads((path / CONFIG_NAME).read_text())).class_names)
        return read_state_dict(path / SAFETENSORS_NAME), names
    return read_state_dict(path), None


def _start_weights(model: Any, source: str, weights: str | os.PathLike | None) -> str:
    """Load the starting weights into ``model``; returns a line for the log."""
    from dyhead_zoo.categories import COCO_CLASS_NAMES
    from dyhead_zoo.engine.class_layers import load_for_classes

    if source == "from_scratch":
        from dyhead_zoo.engine.from_scratch import init_from_imagenet

        return init_from_imagenet(model)
    if source == "pretrained":
        from dyhead_zoo.configs import get_config
        from dyhead_zoo.weights.checkpoint import read_state_dict
        from dyhead_zoo.weights.fetch import download_weights

        state, names, what = read_state_dict(download_weights(get_config(model.config.name))), COCO_CLASS_NAMES, \
            "the published COCO weights"
    else:
        state, names = _read_weights(Path(weights))
        what = str(weights)
    reinitialised = load_for_classes(model, state, names)
    if reinitialised:
        return (f"weights: {what}; class-dependent layers re-initialised for {model.config.num_classes} classes: "
                + ", ".join(reinitialised))
    return f"weights: {what} (all layers loaded)"


def _download(name: str) -> None:
    from dyhead_zoo.configs import get_config
    from dyhead_zoo.weights.fetch import download_weights

    download_weights(get_config(name))


@dataclass(frozen=True)
class TrainSettings:
    """Everything one training run is started with; ``dyhead-zoo train`` builds the same object.

    ``model``: the variant; classes come from ``train_annotations``'s categories (sorted by id).
    Starting point: one of ``weights`` (a checkpoint file or a ``from_pretrained`` folder),
    ``pretrained`` (the published COCO weights; the default) or ``from_scratch`` (ImageNet
    backbone); layers that depend on the classes are re-initialised when the classes differ.
    ``recipe`` defaults to the variant's official one with ``max_iter``, ``batch_size`` (images
    per iteration, all processes; scales the LR) and ``lr`` applied. ``min_size``/``max_size``
    shrink the training and evaluation sizes for quick runs. ``resume`` continues the newest
    checkpoint in ``output_dir``; with ``deterministic`` (one CPU thread, or deterministic cuDNN)
    a run, and a resumed one, repeats bit for bit. ``config`` changes the variant's settings
    (e.g. ``dataclasses.replace(get_config(model), ...)``; its classes are replaced by the
    training set's). See :class:`~dyhead_zoo.engine.trainer.Trainer` for the rest.
    """

    model: str
    train_images: str | os.PathLike
    train_annotations: str | os.PathLike
    output_dir: str | os.PathLike
    val_images: str | os.PathLike | None = None
    val_annotations: str | os.PathLike | None = None
    weights: str | os.PathLike | None = None
    pretrained: bool = False
    from_scratch: bool = False
    max_iter: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    device: str | None = None
    amp: str | None = None
    eval_period: int = 0
    checkpoint_period: int | None = None
    resume: bool = False
    strict: bool = False
    workers: int = 0
    seed: int = 0
    min_size: int | None = None
    max_size: int | None = None
    recipe: TrainRecipe | None = None
    config: ModelConfig | None = None
    progress: bool = True
    log_period: int = 20
    deterministic: bool = False


def train(settings: TrainSettings) -> TrainResult | None:
    """Train or fine-tune ``settings.model`` on a COCO-format set; returns the result on rank 0.

    Everything is checked before the model is built (see :class:`TrainSettings` for the fields).
    """
    from dyhead_zoo.data.augmentation import TrainAugmentation
    from dyhead_zoo.data.train_dataset import load_train_dataset
    from dyhead_zoo.data.train_loader import build_train_loader
    from dyhead_zoo.engine.amp import check_amp
    from dyhead_zoo.engine.determinism import deterministic_run
    from dyhead_zoo.registry import create_model, get_config

    model, weights, recipe, config = settings.model, settings.weights, settings.recipe, settings.config
    min_size, max_size, resume = settings.min_size, settings.max_size, settings.resume
    val_images, val_annotations, seed = settings.val_images, settings.val_annotations, settings.seed
    # Checks first: nothing below may fail after minutes of model building or training.
    base = config or get_config(model)
    if base.name != model:
        raise ValueError(f"config is for {base.name!r} but model is {model!r}")
    source = _weights_source(weights, settings.pretrained, settings.from_scratch)
    run_device = torch.device(resolve_device(settings.device))
    check_amp(settings.amp, run_device)
    if recipe is None:
        recipe = run_recipe(model, batch_size=settings.batch_size, max_iter=settings.max_iter, lr=settings.lr)
    if min_size is not None or max_size is not None:
        sizes = (min_size,) if min_size is not None else recipe.min_size_train
        recipe = dataclasses.replace(recipe, min_size_train=sizes,
                                     max_size_train=max_size if max_size is not None else recipe.max_size_train)
    if not (recipe.aspect_ratio_grouping and recipe.filter_empty_annotations):
        raise ValueError("the training loader always groups batches by aspect ratio and skips images without "
                         "boxes (the official settings); aspect_ratio_grouping=False / filter_empty_annotations="
                         "False are not supported")
    output = Path(settings.output_dir)
    has_run = last_checkpoint(output) is not None
    if has_run and not resume:
        raise ValueError(f"{output} already holds a training run ({output / CHECKPOINTS_DIR}); pass --resume to "
                         "continue it, or choose another --output-dir")
    if (val_images is None) != (val_annotations is None):
        raise ValueError("give both --val-images and --val-annotations, or neither")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        dataset = load_train_dataset(settings.train_images, settings.train_annotations, strict=settings.strict)
    config = dataclasses.replace(base, num_classes=dataset.num_classes, class_names=dataset.class_names)
    test_sizes = {k: v for k, v in (("min_size", min(recipe.min_size_train) if min_size else None),
                                    ("max_size", max_size)) if v is not None}
    if test_sizes:
        config = dataclasses.replace(config, input=dataclasses.replace(config.input, **test_sizes))
    val_data = None
    if val_images is not None:
        from dyhead_zoo.data.coco_data import check_image_files, load_coco

        val_data = load_coco(val_images, val_annotations, class_names=config.class_names)
        check_image_files(val_data.images)

    with distributed(str(run_device)) as group, deterministic_run(run_device, settings.deterministic):
        if group.rank == 0:
            print(dataset.summary(), file=sys.stderr)
        torch.manual_seed(seed)
        net = create_model(model, config=config)
        if not (resume and has_run):
            if source == "pretrained" and group.world_size > 1:  # one download, not one per process
                if group.rank == 0:
                    _download(model)
                torch.distributed.barrier(group=group.group)
            line = _start_weights(net, source, weights)
            if group.rank == 0:
                print(line, file=sys.stderr)
        torch.manual_seed(seed + group.rank)  # distinct stochastic layers (drop path) per process
        augmentation = TrainAugmentation(min_sizes=recipe.min_size_train, max_size=recipe.max_size_train,
                                         flip_prob=0.5 if recipe.horizontal_flip else 0.0)
        loader = build_train_loader(dataset, config.input, augmentation, recipe.images_per_iteration, seed=seed,
                                    rank=group.rank, world_size=group.world_size, workers=settings.workers,
                                    pin_memory=run_device.type == "cuda")
        trainer = Trainer(net, recipe, loader, output, device=run_device, amp=settings.amp,
                          checkpoint_period=settings.checkpoint_period, eval_period=settings.eval_period,
                          val_data=val_data, progress=settings.progress, log_period=settings.log_period, group=group)
        if resume and not trainer.resume() and group.rank == 0:
            print(f"--resume: no checkpoint in {output} yet, starting a new run", file=sys.stderr)
        result = trainer.train()
    return result if group.rank == 0 else None
