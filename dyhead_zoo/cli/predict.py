"""``dyhead-zoo predict``: detect objects in photos, write drawn copies and predictions.json."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dyhead_zoo.cli.checks import check_weights
from dyhead_zoo.distributed import resolve_device


def _torch_dtype(name: str, device: str):
    import torch

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    if dtype == torch.bfloat16 and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        raise ValueError("--dtype bfloat16: this GPU has no bfloat16 support; use --dtype float16 or float32")
    return dtype


def cmd_predict(args: argparse.Namespace) -> int:
    """``dyhead-zoo predict``: detect objects in photos, write drawn copies and predictions.json."""
    from dyhead_zoo.cli.predict_files import find_images, predict_files, sample_image, summary_line
    from dyhead_zoo.models.detections import class_indices
    from dyhead_zoo.registry import create_model

    found = find_images(args.images) if args.images else None
    if found is not None and not found.paths:
        raise FileNotFoundError(f"no image files found for: {', '.join(found.unmatched)} (give image files, "
                                "folders or glob patterns such as 'photos/*.jpg')")
    for argument in (found.unmatched if found is not None else []):
        print(f"dyhead-zoo: warning: no image files found for {argument!r}; skipped", file=sys.stderr)
    paths = found.paths if found is not None else [sample_image()]
    check_weights([args.model], {args.model: args.weights} if args.weights else {})
    if not 0.0 <= args.score_threshold <= 1.0:
        raise ValueError(f"--score-threshold must lie in [0, 1], got {args.score_threshold}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    device = resolve_device(args.device)
    dtype = _torch_dtype(args.dtype, device)
    model = create_model(args.model, pretrained=args.weights is None, weights=args.weights, device=device).to(dtype)
    classes = None
    if args.classes:
        classes = class_indices([c for item in args.classes for c in item.split(",") if c.strip()],
                                model.class_names)
    output = Path(args.output)
    results = predict_files(model, paths, output, score_threshold=args.score_threshold, classes=classes,
                            batch_size=args.batch_size,
                            report=lambda result: print(summary_line(result, args.score_threshold), flush=True))
    done = sum(result.detections is not None for result in results)
    print(f"{done} of {len(results)} images done; drawn copies and predictions.json in {output}")
    return 0 if done == len(results) else 1


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``predict`` command."""
    from dyhead_zoo.configs import list_models

    pr = commands.add_parser("predict", help="detect objects in photos: drawn copies + predictions.json",
                             description="Detect objects in image files, folders (searched recursively) and glob "
                                         "patterns; with no image, in a sample photo shipped with the package. "
                                         "Writes a drawn copy of each image and predictions.json (COCO results "
                                         "format plus file_name) into --output and prints a line per image. "
                                         "Files that cannot be read are reported and skipped (exit status 1).")
    pr.add_argument("images", nargs="*", metavar="IMAGE", help="image files, folders or glob patterns")
    pr.add_argument("--model", default="dyhead_r50_atss_fpn_1x", choices=list_models(), metavar="NAME",
                    help="default %(default)s; one of: " + ", ".join(list_models()))
    pr.add_argument("--weights", metavar="PATH", help="local checkpoint (.pth, .safetensors or a saved model "
                                                      "folder); default: the published weights")
    pr.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when available)")
    pr.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                    help="compute precision (default %(default)s; float16 is for GPUs)")
    pr.add_argument("--batch-size", type=int, default=1, metavar="N", help="images per forward pass (default 1)")
    pr.add_argument("--score-threshold", type=float, default=0.3, metavar="S",
                    help="draw and count detections scoring at least S (default %(default)s); "
                         "predictions.json keeps all of the model's detections")
    pr.add_argument("--classes", nargs="+", metavar="CLASS",
                    help="keep only these classes, in the drawings and the JSON: names ('person' 'traffic light') "
                         "or 0-based ids, space- or comma-separated")
    pr.add_argument("--output", default="dyhead-predictions", metavar="DIR",
                    help="where the drawn copies and predictions.json go (default ./%(default)s)")
    pr.set_defaults(func=cmd_predict)
