"""The ``dyhead-zoo`` command: ``eval``, ``reproduce`` and ``info``.

    dyhead-zoo eval --model NAME --coco-root DIR [--weights PATH] [--device cpu|cuda|cuda:N|mps]
                    [--batch-size N] [--workers N] [--limit N] [--output-dir DIR] [--allow-unsafe-pickle]
    dyhead-zoo eval --model NAME --images DIR --annotations FILE ...   (any COCO-format set)
    dyhead-zoo reproduce --coco-root DIR [--models NAME ...] [--weights NAME=PATH ...]
    dyhead-zoo info                                   (also: which variants' weights are cached, where)
    dyhead-zoo download [NAME ...|--all] [--to DIR]   (fetch, check, print path + SHA-256)
    dyhead-zoo convert | upload | pin-hashes ...      (maintainers: publishing the weights)

Both evaluating commands resume an interrupted run from ``--output-dir`` and scale out under
``torchrun --nproc-per-node N`` (one or several nodes). ``--min-size``/``--max-size`` change
the test size for quick checks; the published numbers need the defaults (800/1333).
Errors print one ``dyhead-zoo: error: ...`` line (``--debug`` for the traceback); ``--version``.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import platform
import sys
from pathlib import Path
from typing import Sequence

DEFAULT_OUTPUT = "dyhead-eval"


def _data_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    from dyhead_zoo.data.coco_data import coco_paths

    images, annotations = (coco_paths(args.coco_root) if args.coco_root else (None, None))
    images = Path(args.images) if args.images else images
    annotations = Path(args.annotations) if args.annotations else annotations
    if images is None or annotations is None:
        raise ValueError("say where the dataset is: --coco-root DIR (with val2017/ and "
                         "annotations/instances_val2017.json), or --images DIR and --annotations FILE")
    return images, annotations


def _device(requested: str | None) -> str:
    import torch

    from dyhead_zoo.evaluation.evaluate import default_device

    if requested is None:
        return default_device()
    try:
        device = torch.device(requested)
    except RuntimeError as err:
        raise ValueError(f"--device {requested}: not a torch device ({err}); use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {requested}: no CUDA device is available here; use --device cpu")
        if device.index is None:  # one process per GPU under torchrun
            return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA devices "
                             f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {requested}: Apple's MPS backend is not available here; use --device cpu")
    return str(device)


def _check_output_dir(path: str | os.PathLike) -> Path:
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


def _check_weights(names: Sequence[str], weights: dict[str, str]) -> None:
    for name, path in weights.items():
        if not Path(path).exists():
            raise FileNotFoundError(f"checkpoint for {name} not found: {path}")
    if any(name not in weights for name in names) and importlib.util.find_spec("dyhead_zoo.weights.fetch") is None:
        raise ValueError("this install cannot download the published weights; pass a local checkpoint "
                         "with --weights")


def _load_data(args: argparse.Namespace, class_names: Sequence[str] | None = None):
    from dyhead_zoo.data.coco_data import check_image_files, load_coco

    if args.batch_size < 1 or args.workers < 0:
        raise ValueError(f"--batch-size must be at least 1 and --workers at least 0, got {args.batch_size} and "
                         f"{args.workers}")
    # A fine-tuned model scores its own classes, matched to the file's categories by name.
    data = load_coco(*_data_paths(args), **({"class_names": class_names} if class_names else {}))
    check_image_files(data.first(args.limit))
    return data


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
    from dyhead_zoo.evaluation.evaluate import distributed, eval_config, evaluate
    from dyhead_zoo.registry import create_model

    weights = {args.model: args.weights} if args.weights else {}
    _check_weights([args.model], weights)
    config = eval_config(args.model, args.min_size, args.max_size)
    if args.weights and Path(args.weights).is_dir():  # e.g. a fine-tuned run's OUTPUT/model_final
        from dyhead_zoo.weights.hub import folder_config

        config, _ = folder_config(args.weights, config)
    _check_output_dir(args.output_dir)
    data = _load_data(args, config.class_names)
    device = _device(args.device)
    with distributed(device) as group:
        model = create_model(args.model, pretrained=args.weights is None, weights=args.weights, config=config,
                             device=device, allow_unsafe_pickle=args.allow_unsafe_pickle)
        result = evaluate(model, data, args.output_dir, limit=args.limit, batch_size=args.batch_size,
                          workers=args.workers, progress=not args.no_progress, group=group)
    if result is not None:
        _print_metrics(result, config.published_map, _comparable_with_published(args, data, result.num_images))
    return 0


def _parse_weights(items: Sequence[str]) -> dict[str, str]:
    weights = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--weights {item!r}: write it as NAME=PATH, e.g. "
                             "dyhead_r50_atss_fpn_1x=checkpoints/dyhead_r50_atss_fpn_1x.pth")
        weights[name] = path
    return weights


def cmd_reproduce(args: argparse.Namespace) -> int:
    """``dyhead-zoo reproduce``: evaluate each variant, print and write the table on rank 0."""
    from dyhead_zoo.registry import get_config, list_models
    from dyhead_zoo.evaluation.evaluate import distributed
    from dyhead_zoo.evaluation.reproduce import markdown_table, reproduce, write_table

    models = args.models or list_models()
    for name in models:
        get_config(name)  # unknown names fail here, with the list of known ones
    weights = _parse_weights(args.weights)
    _check_weights(models, weights)
    _check_output_dir(args.output_dir)
    data = _load_data(args)
    device = _device(args.device)
    with distributed(device) as group:
        rows = reproduce(data, models, args.output_dir, weights, device=device, limit=args.limit,
                         batch_size=args.batch_size, workers=args.workers, min_size=args.min_size,
                         max_size=args.max_size, progress=not args.no_progress, group=group,
                         allow_unsafe_pickle=args.allow_unsafe_pickle)
    if rows is not None:
        json_path, md_path = write_table(rows, args.output_dir)
        print(markdown_table(rows), end="")
        print(f"table: {json_path} and {md_path}")
    return 0


def describe() -> str:
    """Versions, device and deformable-conv backend, as ``dyhead-zoo info`` prints them."""
    try:
        info = importlib.import_module("dyhead_zoo.cli.info")
    except ModuleNotFoundError as err:
        if err.name != "dyhead_zoo.cli.info":
            raise
    else:
        if callable(getattr(info, "describe", None)):
            return info.describe()
    from importlib import metadata

    import torch

    from dyhead_zoo import __version__
    from dyhead_zoo.ops.deform_conv import resolve_backend

    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        cuda = f"available (CUDA {torch.version.cuda}): {names}"
    else:
        cuda = "not available"
    lines = [f"python      {platform.python_version()}", f"torch       {torch.__version__}",
             f"torchvision {version('torchvision')}", f"timm        {version('timm')}",
             f"dyhead_zoo  {__version__}", f"cuda        {cuda}", f"dcn backend {resolve_backend()}"]
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    """``dyhead-zoo info``: print :func:`describe`."""
    print(describe())
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    """``dyhead-zoo download``: fetch, check and report the weights (see :mod:`dyhead_zoo.weights.cache`)."""
    from dyhead_zoo.weights.cache import download
    from dyhead_zoo.registry import list_models

    if args.all and args.names:
        raise ValueError("give variant names or --all, not both")
    return download(list_models() if args.all else args.names, args.to, progress=not args.no_progress)


def _converter(module: str):
    """A module of the installed ``dyhead_zoo.converters`` (``dyhead_zoo/converters/`` in the repository)."""
    try:
        return importlib.import_module(f"dyhead_zoo.converters.{module}")
    except ModuleNotFoundError as err:
        if err.name not in ("dyhead_zoo.converters", f"dyhead_zoo.converters.{module}"):
            raise
        raise ValueError("the converters are not installed with this copy of dyhead_zoo; install the project "
                         "(`pip install -e .` in the repository) or run `python -m dyhead_zoo.converters."
                         f"{module}` from the repository root") from err


def cmd_convert(args: argparse.Namespace) -> int:
    """``dyhead-zoo convert``: checkpoint -> Hub folder (``dyhead_zoo/converters/to_hub_folder.py``)."""
    return _converter("to_hub_folder").run(args)


def cmd_upload(args: argparse.Namespace) -> int:
    """``dyhead-zoo upload``: Hub folder -> the repo named by ``--repo`` (``dyhead_zoo/converters/upload.py``)."""
    return _converter("upload").run(args)


def cmd_pin_hashes(args: argparse.Namespace) -> int:
    """``dyhead-zoo pin-hashes``: SHA-256 of each official and mirror file (``dyhead_zoo/converters/pin_hashes.py``)."""
    return _converter("pin_hashes").run(args)


def cmd_train(args: argparse.Namespace) -> int:
    """``dyhead-zoo train``: check the inputs, then train or fine-tune (see :func:`dyhead_zoo.train`)."""
    from dyhead_zoo.engine.training import train

    try:
        result = train(args.model, args.train_images, args.train_annotations, args.output_dir,
                       val_images=args.val_images, val_annotations=args.val_annotations, weights=args.weights,
                       pretrained=args.pretrained, from_scratch=args.from_scratch, max_iter=args.max_iter,
                       batch_size=args.batch_size, lr=args.lr, device=args.device, amp=args.amp,
                       eval_period=args.eval_period, checkpoint_period=args.checkpoint_period, resume=args.resume,
                       strict=args.strict, workers=args.workers, seed=args.seed, min_size=args.min_size,
                       max_size=args.max_size, progress=not args.no_progress, deterministic=args.deterministic)
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


def _torch_dtype(name: str, device: str):
    import torch

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    if dtype == torch.bfloat16 and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        raise ValueError("--dtype bfloat16: this GPU has no bfloat16 support; use --dtype float16 or float32")
    return dtype


def cmd_predict(args: argparse.Namespace) -> int:
    """``dyhead-zoo predict``: detect objects in photos, write drawn copies and predictions.json."""
    from dyhead_zoo.models.detections import class_indices
    from dyhead_zoo.cli.predict_files import find_images, predict_files, sample_image, summary_line
    from dyhead_zoo.registry import create_model

    found = find_images(args.images) if args.images else None
    if found is not None and not found.paths:
        raise FileNotFoundError(f"no image files found for: {', '.join(found.unmatched)} (give image files, "
                                "folders or glob patterns such as 'photos/*.jpg')")
    for argument in (found.unmatched if found is not None else []):
        print(f"dyhead-zoo: warning: no image files found for {argument!r}; skipped", file=sys.stderr)
    paths = found.paths if found is not None else [sample_image()]
    _check_weights([args.model], {args.model: args.weights} if args.weights else {})
    if not 0.0 <= args.score_threshold <= 1.0:
        raise ValueError(f"--score-threshold must lie in [0, 1], got {args.score_threshold}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    device = _device(args.device)
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


def cmd_export(args: argparse.Namespace) -> int:
    """``dyhead-zoo export``: write the network as ONNX or a torch.export ExportedProgram."""
    from dyhead_zoo.export import export_model
    from dyhead_zoo.registry import create_model

    _check_weights([args.model], {args.model: args.weights} if args.weights else {})
    model = create_model(args.model, pretrained=args.weights is None, weights=args.weights)
    path = export_model(model, args.output, args.format, height=args.height, width=args.width,
                        batch_size=args.batch_size, dynamic=args.dynamic)
    print(f"{args.model} ({args.format}, raw head outputs; see dyhead_zoo.export.decode) written to {path}")
    return 0


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    """The ``dyhead-zoo`` argument parser with its ``eval``, ``reproduce`` and ``info`` commands."""
    from dyhead_zoo.registry import list_models

    parser = argparse.ArgumentParser(prog="dyhead-zoo", description="Dynamic Head detectors in pure PyTorch.",
                                     epilog="Scale out with: torchrun --nproc-per-node N $(which dyhead-zoo) eval ...")
    from dyhead_zoo import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="print the full traceback of an error (accepted anywhere on the line)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ev = commands.add_parser("eval", help="COCO box AP of one variant",
                             description="Run one variant over COCO val2017 (or any COCO-format set) and print "
                                         "AP, AP50, AP75, APs, APm, APl. Rerunning resumes an interrupted run.")
    ev.add_argument("--model", required=True, choices=list_models(), metavar="NAME",
                    help="one of: " + ", ".join(list_models()))
    ev.add_argument("--weights", metavar="PATH", help="local checkpoint (.pth or .safetensors); "
                                                      "default: the published weights")
    _add_run_arguments(ev)
    ev.set_defaults(func=cmd_eval)

    rp = commands.add_parser("reproduce", help="published vs measured mAP of every variant",
                             description="Evaluate the variants and print (and write as JSON and Markdown under "
                                         "--output-dir) published mAP, measured mAP, difference, images/s, device.")
    rp.add_argument("--models", nargs="+", metavar="NAME", help="a subset (default: all of them)")
    rp.add_argument("--weights", action="append", default=[], metavar="NAME=PATH",
                    help="local checkpoint of one variant (repeatable); the others use the published weights")
    _add_run_arguments(rp)
    rp.set_defaults(func=cmd_reproduce)

    info = commands.add_parser("info", help="versions, device, deformable-conv backend, cached weights")
    info.set_defaults(func=cmd_info)

    dl = commands.add_parser("download", help="fetch and check published weights, e.g. for a machine without network",
                             description="Fetch the weights of the named variants from the first of their sources "
                                         "that has them (project Hub repo, official URL, Hub mirror), check them "
                                         "strictly, and print where each file is and its SHA-256. Exit status 0 "
                                         "when all are ready, 1 when any failed.")
    dl.add_argument("names", nargs="*", metavar="NAME", help="variants: " + ", ".join(list_models()))
    dl.add_argument("--all", action="store_true", help="every variant")
    dl.add_argument("--to", metavar="DIR", help="also copy each file into DIR as NAME.<suffix>, for --weights PATH "
                                                "elsewhere (default: leave them in the caches)")
    dl.add_argument("--no-progress", action="store_true", help="no download progress bars")
    dl.set_defaults(func=cmd_download)

    for name, module, func, help_text in (
            ("convert", "to_hub_folder", cmd_convert, "checkpoint -> Hugging Face Hub folder (maintainers)"),
            ("upload", "upload", cmd_upload, "upload a converted folder to a Hub repo you own (maintainers)"),
            ("pin-hashes", "pin_hashes", cmd_pin_hashes, "SHA-256 of the official and mirror files to pin "
                                                         "(maintainers; needs network)")):
        sub = commands.add_parser(name, help=help_text)
        try:
            _converter(module).add_arguments(sub)
        except ValueError as err:  # not installed: the command explains itself when run
            sub.description = str(err)
        sub.set_defaults(func=func)
    tr = commands.add_parser("train", help="train or fine-tune a variant on COCO-format data",
                             description="Train or fine-tune one variant with its official recipe (SGD/AdamW, "
                                         "warmup, LR steps at 2/3 and 8/9 of the run, training sizes, flip). "
                                         "Classes come from the training annotations. Checkpoints are resumable "
                                         "(--resume); Ctrl-C writes one before stopping.",
                             epilog="Several processes: torchrun --nproc-per-node N $(which dyhead-zoo) train ...")
    tr.add_argument("--model", required=True, choices=list_models(), metavar="NAME",
                    help="one of: " + ", ".join(list_models()))
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

    ex = commands.add_parser("export", help="the network as ONNX or a torch.export ExportedProgram",
                             description="Export the network from the normalised, zero-padded batch (N, 3, H, W) "
                                         "to its raw head outputs; dyhead_zoo.export.decode turns them into "
                                         "the detections model.predict gives. ONNX uses the dynamo exporter at "
                                         "opset 19 with the deformable convs as the standard DeformConv op; "
                                         "the ExportedProgram keeps torchvision::deform_conv2d.")
    ex.add_argument("--model", required=True, choices=list_models(), metavar="NAME",
                    help="one of: " + ", ".join(list_models()))
    ex.add_argument("--weights", metavar="PATH", help="local checkpoint (.pth, .safetensors or a saved model "
                                                      "folder); default: the published weights")
    ex.add_argument("--format", choices=["onnx", "exported-program"], default="onnx",
                    help="onnx (a .onnx file) or exported-program (torch.export.save, a .pt2 file)")
    ex.add_argument("--height", type=int, metavar="H", help="padded input height, a multiple of the size "
                    "divisibility (default: an 800x1333 image's padded batch, e.g. 896x1408 at 128)")
    ex.add_argument("--width", type=int, metavar="W", help="padded input width (see --height)")
    ex.add_argument("--batch-size", type=int, default=1, metavar="N", help="images per batch (default 1)")
    ex.add_argument("--dynamic", action="store_true",
                    help="batch size, height and width as dynamic dimensions (one-stage variants; height and "
                         "width multiples of the size divisibility, at least twice it)")
    ex.add_argument("--output", required=True, metavar="FILE", help="the file to write")
    ex.set_defaults(func=cmd_export)
    return parser


def _error_text(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    if "Original Traceback" in text:  # re-raised from a DataLoader worker: its last line is the error
        text = text.splitlines()[-1].strip()
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dyhead-zoo`` console script; returns the exit status.

    The one error edge of every subcommand: the project's own errors
    (:class:`~dyhead_zoo.errors.DyHeadZooError`), user errors (``ValueError``, ``TypeError``)
    and OS errors (missing, unreadable or unwritable files, a full disk, a failed download)
    print ``dyhead-zoo: error: <message>`` and exit with status 2; ``--debug`` adds the traceback.
    """
    import traceback

    from dyhead_zoo.errors import DyHeadZooError

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    try:
        return args.func(args)
    except (DyHeadZooError, OSError, ValueError, TypeError) as err:
        if debug:
            traceback.print_exc()
        print(f"dyhead-zoo: error: {_error_text(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dyhead-zoo: interrupted; the detections made so far are kept, run the same command again "
              "to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
