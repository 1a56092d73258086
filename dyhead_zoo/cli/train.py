"""``dyhead-zoo train``: train or fine-tune a variant on COCO-format data."""
from __future__ import annotations

import argparse
import os
import sys

from dyhead_zoo.cli.checks import add_model_argument


def cmd_train(args: argparse.Namespace) -> int:
    """``dyhead-zoo train``: check the inputs, then train or fine-tune (see :func:`dyhead_zoo.train`)."""
    import dataclasses

    from dyhead_zoo.engine.training import TrainSettings, train

    fields = {f.name for f in dataclasses.fields(TrainSettings)} & vars(args).keys()
    settings = TrainSettings(**{name: getattr(args, name) for name in fields}, progress=not args.no_progress)
    try:
        result = train(settings)
    except KeyboardInterrupt as stop:
        print(f"dyhead-zoo train: interrupted ({stop or 'without a checkpoint'}); run the same command with "
              "--resume to continue", file=sys.stderr)
        return 130
    if result is not None:
        print(f"trained {result.iterations} iterations; model: {result.final_model} "
              f"(DyHeadDetector.from_pretrained or --weights), checkpoint: {result.last_checkpoint}")
        if result.best_metric is not None:
            print(f"best validation AP {result.best_metric:.2f} (model_best/)")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``train`` command."""

    tr = commands.add_parser("train", help="train or fine-tune a variant on COCO-format data",
                             description="Train or fine-tune one variant with its official recipe (SGD/AdamW, "
                                         "warmup, LR steps at 2/3 and 8/9 of the run, training sizes, flip). "
                                         "Classes come from the training annotations. Checkpoints are resumable "
                                         "(--resume); Ctrl-C writes one before stopping.",
                             epilog="Several processes: torchrun --nproc-per-node N $(which dyhead-zoo) train ...")
    add_model_argument(tr)
    data = tr.add_argument_group("data (COCO-format)")
    data.add_argument("--train-images", required=True, metavar="DIR", help="training image folder")
    data.add_argument("--train-annotations", required=True, metavar="FILE", help="training instances JSON")
    data.add_argument("--val-images", metavar="DIR", help="validation image folder (periodic COCO evaluation)")
    data.add_argument("--val-annotations", metavar="FILE", help="validation instances JSON")
    data.add_argument("--strict", action="store_true", help="stop on invalid boxes instead of dropping them")
    data.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), metavar="N",
                      help="DataLoader processes per training process (default %(default)s; 0: none)")
    start = tr.add_mutually_exclusive_group()
    start.add_argument("--weights", metavar="PATH", help="start from a checkpoint (.pth, .safetensors, or a folder "
                                                         "with model.safetensors + config.json)")
    start.add_argument("--pretrained", action="store_true", help="start from the published COCO weights (default)")
    start.add_argument("--from-scratch", action="store_true",
                       help="start from the ImageNet backbone the official runs started from")
    run = tr.add_argument_group("run")
    run.add_argument("--output-dir", required=True, metavar="DIR", help="checkpoints, metrics.jsonl, model_final/")
    run.add_argument("--max-iter", type=int, metavar="N", help="iterations (official 90000; LR steps scale with it)")
    run.add_argument("--batch-size", type=int, metavar="N",
                     help="images per iteration, all processes together (official 16, Swin-T 32; the LR scales "
                          "linearly)")
    run.add_argument("--lr", type=float, metavar="X", help="base learning rate, used as given (no scaling)")
    run.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    run.add_argument("--amp", choices=["bf16", "fp16"], help="mixed precision (fp16: CUDA only)")
    run.add_argument("--eval-period", type=int, default=0, metavar="N",
                     help="evaluate on the validation set every N iterations (default: at the end only)")
    run.add_argument("--checkpoint-period", type=int, metavar="N", help="checkpoint every N iterations "
                                                                        "(default: the recipe's 5000)")
    run.add_argument("--resume", action="store_true", help="continue the run in --output-dir")
    run.add_argument("--seed", type=int, default=0, metavar="N", help="data order and initialisation seed")
    run.add_argument("--deterministic", action="store_true",
                     help="repeat bit for bit (one CPU thread; deterministic cuDNN): slower, for exact "
                          "reproduction; without it, runs agree to float32 rounding")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    quick = tr.add_argument_group("quick runs (small images; not the official recipe)")
    quick.add_argument("--min-size", type=int, metavar="PX", help="training and evaluation shorter side")
    quick.add_argument("--max-size", type=int, metavar="PX", help="training and evaluation longer side at most")
    tr.set_defaults(func=cmd_train)
