"""``dyhead-zoo eval``: COCO box AP of one variant (resumable, scales out under torchrun)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dyhead_zoo.cli.checks import add_model_argument, check_output_dir, check_weights, load_data
from dyhead_zoo.distributed import distributed, resolve_device

DEFAULT_OUTPUT = "dyhead-eval"


COCO_VAL2017_IMAGES = 5000


def _comparable_with_published(args: argparse.Namespace, data, num_images: int) -> bool:
    """Whether a run reproduces the published setting: all of COCO val2017 at the official test size."""
    return (args.min_size is None and args.max_size is None and num_images == COCO_VAL2017_IMAGES
            and data.annotations.name == "instances_val2017.json")


def _print_metrics(result, published: float, comparable: bool) -> None:
    from dyhead_zoo.evaluation.coco_metrics import STAT_NAMES

    names = STAT_NAMES[:6]
    speed = "n/a" if result.images_per_second is None else f"{result.images_per_second:.2f}"
    processes = f"{result.world_size} process" + ("es" if result.world_size > 1 else "")
    print(f"{result.model}: {result.num_images} images, {result.device}, {processes}, {speed} images/s")
    if result.metrics["AP"] < 0:  # the COCO tools give -1 when there is nothing to score against
        print("no ground truth: the annotation file has no boxes for these images, so AP cannot be computed")
    else:
        print("| " + " | ".join(f"{n:^7}" for n in names) + " |")
        print("|" + "|".join([":-------:"] * len(names)) + "|")
        print("| " + " | ".join(f"{result.metrics[n]:^7.3f}" if result.metrics[n] >= 0 else f"{'n/a':^7}"
                                for n in names) + " |")
        if comparable:
            print(f"published mAP {published:.1f}, measured {result.metrics['AP']:.3f} "
                  f"({result.metrics['AP'] - published:+.3f})")
        else:
            print("not comparable with the published mAP (that is all of COCO val2017 at the official test size)")
    if result.skipped:
        shown = "\n  ".join(result.skipped[:10]) + (f"\n  ... and {len(result.skipped) - 10} more"
                                                    if len(result.skipped) > 10 else "")
        print(f"dyhead-zoo: warning: {len(result.skipped)} of {result.num_images} images could not be decoded and "
              f"were scored as having no detections:\n  {shown}", file=sys.stderr)
    print(f"metrics: {result.metrics_file}")


def cmd_eval(args: argparse.Namespace) -> int:
    """``dyhead-zoo eval``: check the dataset, build the model, evaluate, print on rank 0."""
    from dyhead_zoo.evaluation.evaluate import eval_config, evaluate
    from dyhead_zoo.registry import create_model

    weights = {args.model: args.weights} if args.weights else {}
    check_weights([args.model], weights)
    config = eval_config(args.model, args.min_size, args.max_size)
    if args.weights and Path(args.weights).is_dir():  # e.g. a fine-tuned run's OUTPUT/model_final
        from dyhead_zoo.weights.hub import folder_config

        config, _ = folder_config(args.weights, config)
    check_output_dir(args.output_dir)
    data = load_data(args, config.class_names)
    device = resolve_device(args.device)
    with distributed(device) as group:
        model = create_model(args.model, pretrained=args.weights is None, weights=args.weights, config=config,
                             device=device, allow_unsafe_pickle=args.allow_unsafe_pickle)
        result = evaluate(model, data, args.output_dir, limit=args.limit, batch_size=args.batch_size,
                          workers=args.workers, progress=not args.no_progress, group=group)
    if result is not None:
        _print_metrics(result, config.published_map, _comparable_with_published(args, data, result.num_images))
    return 0


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("dataset (COCO val2017, or any COCO-format set)")
    data.add_argument("--coco-root", metavar="DIR", help="folder with val2017/ and annotations/instances_val2017.json")
    data.add_argument("--images", metavar="DIR", help="image folder (overrides the one under --coco-root)")
    data.add_argument("--annotations", metavar="FILE", help="COCO instances JSON (overrides --coco-root's)")
    run = parser.add_argument_group("run")
    run.add_argument("--device", metavar="DEVICE", help="a torch device: cpu, cuda, cuda:1, mps... (default: cuda "
                                                        "when available)")
    run.add_argument("--allow-unsafe-pickle", action="store_true",
                     help="read a .pth that needs arbitrary unpickling (it can run code: only files you trust)")
    run.add_argument("--batch-size", type=int, default=1, metavar="N", help="images per forward pass (default 1)")
    run.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), metavar="N",
                     help="DataLoader processes that decode and resize (default %(default)s; 0: none)")
    run.add_argument("--limit", type=int, metavar="N", help="only the first N images by id")
    run.add_argument("--output-dir", default=DEFAULT_OUTPUT, metavar="DIR",
                     help="detections (resumable) and results (default ./%(default)s)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    quick = parser.add_argument_group("quick checks (results are not comparable with the published ones)")
    quick.add_argument("--min-size", type=int, metavar="PX", help="test size, shorter side (official 800)")
    quick.add_argument("--max-size", type=int, metavar="PX", help="test size, longer side at most (official 1333)")


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``eval`` command."""

    ev = commands.add_parser("eval", help="COCO box AP of one variant",
                             description="Run one variant over COCO val2017 (or any COCO-format set) and print "
                                         "AP, AP50, AP75, APs, APm, APl. Rerunning resumes an interrupted run.")
    add_model_argument(ev)
    ev.add_argument("--weights", metavar="PATH", help="local checkpoint (.pth or .safetensors); "
                                                      "default: the published weights")
    add_run_arguments(ev)
    ev.set_defaults(func=cmd_eval)
