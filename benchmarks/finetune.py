"""Proof that training learns: fine-tune a variant on the synthetic shapes set, AP50 before/after.

    python -m benchmarks.finetune [--model dyhead_r50_atss_fpn_1x] [--iters 300] [--batch-size 2]
                                  [--size 128] [--max-size 224] [--lr 3e-4] [--warmup 10]
                                  [--optimizer adamw|sgd|recipe] [--start random|pretrained|PATH]
                                  [--train-images 100] [--val-images 20] [--workers 0] [--threads 1]
                                  [--seed 0] [--work DIR] [--out benchmarks/results]

Writes the three-class shapes set (:mod:`benchmarks.shapes_dataset`), builds the starting model
for its classes and scores it on the held-out split (box AP50 "before"), trains it with
:func:`dyhead_zoo.train` (the ``dyhead-zoo train`` code path: the variant's official recipe
with ``--batch-size``, ``--iters``, ``--lr``, ``--warmup``, ``--optimizer`` and the small
``--size`` applied),
which scores the final weights on the same split ("after") through the COCO evaluation code.
``--start random`` (the default, for machines without the published weights) starts from the
official initialisation without any pretrained weights; ``pretrained`` from the published COCO
weights (class layers re-initialised for the three classes); a path from that checkpoint.
Results go to ``finetune-<model>.json`` and ``.md`` under ``--out``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

import torch

import dyhead_zoo

from .dcn import RESULTS, environment
from .shapes_dataset import write_shapes_dataset


@dataclasses.dataclass(frozen=True)
class FinetuneSettings:
    """One fine-tuning run on the shapes set (see the module docstring for each field)."""

    model: str = "dyhead_r50_atss_fpn_1x"
    iters: int = 300
    batch_size: int = 2
    size: int = 128
    max_size: int = 224
    lr: float = 3e-4
    warmup: int = 10
    optimizer: str = "adamw"
    start: str = "random"
    train_images: int = 100
    val_images: int = 20
    workers: int = 0
    seed: int = 0


def build_start_model(settings: FinetuneSettings, class_names: tuple[str, ...]) -> tuple[dyhead_zoo.DyHeadDetector, str]:
    """The model training starts from, built for ``class_names`` at the run's test size,
    and a line saying where its weights came from."""
    from dyhead_zoo.engine.class_layers import load_for_classes
    from dyhead_zoo.engine.from_scratch import official_init

    base = dyhead_zoo.get_config(settings.model)
    config = dataclasses.replace(base, num_classes=len(class_names), class_names=class_names,
                                 input=dataclasses.replace(base.input, min_size=settings.size,
                                                           max_size=settings.max_size))
    torch.manual_seed(settings.seed)
    model = dyhead_zoo.create_model(settings.model, config=config)
    official_init(model)
    if settings.start == "random":
        return model, "official initialisation, no pretrained weights"
    from dyhead_zoo.categories import COCO_CLASS_NAMES
    from dyhead_zoo.weights.checkpoint import read_state_dict

    if settings.start == "pretrained":
        from dyhead_zoo.weights.fetch import download_weights

        path, names = download_weights(base), COCO_CLASS_NAMES
    else:
        path, names = Path(settings.start), None
    reinitialised = load_for_classes(model, read_state_dict(path), names)
    return model, f"{path} (re-initialised: {', '.join(reinitialised) or 'nothing'})"


def _ap50(model: dyhead_zoo.DyHeadDetector, images: Path, annotations: Path, folder: Path) -> float:
    from dyhead_zoo.data.coco_data import load_coco
    from dyhead_zoo.evaluation.evaluate import evaluate

    data = load_coco(images, annotations, class_names=model.config.class_names)
    model.eval()
    return float(evaluate(model, data, folder, progress=False).metrics["AP50"])


def _losses(metrics_file: Path) -> list[dict]:
    return [row for row in map(json.loads, metrics_file.read_text().splitlines()) if "total_loss" in row]


def run_finetune(settings: FinetuneSettings, work: Path, progress: bool = True, log_period: int = 10) -> dict:
    """Write the data, score the start, train, and return the record of the run."""
    import shutil

    from dyhead_zoo.engine.recipe import run_recipe

    data = write_shapes_dataset(work / "data", settings.train_images, settings.val_images, settings.seed)
    for stale in ("start", "run", "eval_before", "eval_train"):
        shutil.rmtree(work / stale, ignore_errors=True)
    class_names = tuple(c["name"] for c in sorted(json.loads(data.train_annotations.read_text())["categories"],
                                                  key=lambda c: c["id"]))
    model, start_line = build_start_model(settings, class_names)
    model.save_pretrained(work / "start")
    ap50_before = _ap50(model, data.val_images, data.val_annotations, work / "eval_before")
    recipe = run_recipe(settings.model, batch_size=settings.batch_size, max_iter=settings.iters, lr=settings.lr)
    recipe = dataclasses.replace(recipe, warmup_iters=settings.warmup, min_size_train=(settings.size,),
                                 max_size_train=settings.max_size)
    if settings.optimizer == "adamw":   # the Swin-T recipe's optimizer: robust for a randomly initialised body
        recipe = dataclasses.replace(recipe, optimizer="AdamW", weight_decay=0.05)
    elif settings.optimizer == "sgd":
        recipe = dataclasses.replace(recipe, optimizer="SGD", weight_decay=1e-4)
    elif settings.optimizer != "recipe":
        raise ValueError(f"--optimizer must be recipe, sgd or adamw, got {settings.optimizer!r}")
    started = time.perf_counter()
    result = dyhead_zoo.train(dyhead_zoo.TrainSettings(
        settings.model, data.train_images, data.train_annotations, work / "run", val_images=data.val_images,
        val_annotations=data.val_annotations, weights=work / "start", recipe=recipe, min_size=settings.size,
        max_size=settings.max_size, workers=settings.workers, seed=settings.seed, progress=progress,
        log_period=log_period, device="cpu"))
    wall = time.perf_counter() - started
    losses = _losses(work / "run" / "metrics.jsonl")
    # The same final weights on the images they were trained on: whether the loop learns at all,
    # apart from how far it generalises (little, from a random start in a few hundred steps).
    final = dyhead_zoo.DyHeadDetector.from_pretrained(str(result.final_model))
    ap50_train = _ap50(final, data.train_images, data.train_annotations, work / "eval_train")
    return {"settings": dataclasses.asdict(settings), "start": start_line, "recipe": recipe.describe(),
            "iterations": result.iterations, "train_wall_s": round(wall, 1),
            "seconds_per_iteration": round(wall / max(result.iterations, 1), 2),
            "ap50_before": round(ap50_before, 2), "ap50_after": round(result.metrics["AP50"], 2),
            "ap_after": round(result.metrics["AP"], 2), "ap50_train_after": round(ap50_train, 2),
            "loss_first": round(losses[0]["total_loss"], 4), "loss_last": round(losses[-1]["total_loss"], 4),
            "final_model": str(result.final_model)}


def markdown(record: dict) -> str:
    s = record["settings"]
    return "\n".join([
        f"# Fine-tuning {s['model']} on the shapes set", "",
        f"`{record['command']}`", "",
        f"- data: {s['train_images']} training / {s['val_images']} held-out images, 3 classes, seed {s['seed']}",
        f"- start: {record['start']}",
        f"- recipe: {record['recipe']}",
        f"- {record['iterations']} iterations in {record['train_wall_s']} s "
        f"({record['seconds_per_iteration']} s/iteration, including the final evaluation) on {record['environment']}",
        "", "| | box AP50 on held-out images | total loss |", "|---|---|---|",
        f"| before | {record['ap50_before']:.2f} | {record['loss_first']:.3f} (first iteration) |",
        f"| after | {record['ap50_after']:.2f} (AP {record['ap_after']:.2f}) | {record['loss_last']:.3f} (last logged) |",
        "", f"Box AP50 of the final weights on the {s['train_images']} training images: "
        f"{record.get('ap50_train_after', float('nan')):.2f}.",
        ""])


def main(argv: list[str] | None = None) -> int:
    defaults = FinetuneSettings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for field in dataclasses.fields(FinetuneSettings):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(getattr(defaults, field.name)),
                            default=getattr(defaults, field.name))
    # One thread by default: on a shared CPU, spinning OpenMP threads slowed training ~5x.
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--work", default="finetune_work", help="folder for the data, checkpoints and evaluations")
    parser.add_argument("--out", default=str(RESULTS), help="where the JSON and Markdown results go")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = FinetuneSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(FinetuneSettings)})
    record = run_finetune(settings, Path(args.work), progress=not args.no_progress)
    record["command"] = "python -m benchmarks.finetune " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    env = environment(torch.device("cpu"), args.threads)
    record["environment"] = f"{env['machine']}, {args.threads} threads, torch {env['torch']}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"finetune-{settings.model}"
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(record))
    print(markdown(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
