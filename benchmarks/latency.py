"""Median latency of one 800x1333 forward per variant, and the share of each stage.

    python -m benchmarks.latency [--models NAME ...] [--repeats 5] [--threads 2] [--device cpu]

Weights are the seeded random checkpoints in the official layout (tests/make_checkpoint.py),
which yield a full set of detections, so post-processing does its real amount of work. The
input is a real photograph stretched to 800x1333. Stages are timed with forward hooks:
backbone (ResNet/Swin), FPN, DyHead tower, head (the prediction convs / RPN head and box head)
and post-processing (everything else: decoding, top-k, NMS, ROI pooling, rescaling).
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch

import dyhead_zoo
from dyhead_zoo.data.preprocess import normalize_and_pad, to_model_tensor
from dyhead_zoo.ops.deform_conv import resolve_backend

from .dcn import sync
from .end_to_end import photo, seeded_checkpoint


def _stage_modules(model: dyhead_zoo.DyHeadDetector) -> dict[str, list[torch.nn.Module]]:
    fpn = model.backbone.backbone
    heads = [m for n, m in model.named_modules()
             if n in ("head", "proposal_generator.rpn_head", "roi_heads.box_head", "roi_heads.box_predictor")]
    return {"backbone": [fpn.bottom_up], "fpn+backbone": [fpn], "dyhead": [model.backbone.dyhead_tower],
            "head": heads}


def measure(name: str, repeats: int, device: torch.device) -> dict[str, float]:
    """Median total seconds and median seconds per stage for one forward of variant ``name``."""
    model = dyhead_zoo.create_model(name)
    model.load_state_dict(seeded_checkpoint(name))
    model.to(device).eval()
    batch, sizes = normalize_and_pad([to_model_tensor(photo(), model.config.input).to(device)], model.config.input)
    spent: dict[str, float] = defaultdict(float)
    starts: dict[int, float] = {}

    def hooks(stage: str, module: torch.nn.Module) -> None:
        def before(mod, args):
            sync(device)
            starts[id(mod)] = time.perf_counter()

        def after(mod, args, out):
            sync(device)
            spent[stage] += time.perf_counter() - starts.pop(id(mod))

        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)

    for stage, modules in _stage_modules(model).items():
        for module in modules:
            hooks(stage, module)
    runs: list[dict[str, float]] = []
    for i in range(repeats + 1):  # the first run warms up
        spent.clear()
        sync(device)
        start = time.perf_counter()
        detections = model(batch, sizes)
        sync(device)
        total = time.perf_counter() - start
        if i == 0:
            continue
        stages = {
            "backbone": spent["backbone"],
            "fpn": spent["fpn+backbone"] - spent["backbone"],
            "dyhead": spent["dyhead"],
            "head": spent["head"],
        }
        stages["postprocess"] = total - sum(stages.values())
        stages["total"] = total
        runs.append(stages)
    result = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    result["detections"] = float(len(detections[0]))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=dyhead_zoo.list_models(), choices=dyhead_zoo.list_models())
    parser.add_argument("--repeats", type=int, default=5, help="timed runs after one warm-up (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    stages = ["backbone", "fpn", "dyhead", "head", "postprocess"]
    print(f"device={device} threads={args.threads} dcn_backend={resolve_backend()} repeats={args.repeats} "
          f"input=800x1333 torch={torch.__version__}")
    print("| variant | median latency (s) | " + " | ".join(stages) + " |")
    print("|---|---:|" + "---:|" * len(stages))
    with torch.inference_mode():
        for name in args.models:
            result = measure(name, args.repeats, device)
            shares = " | ".join(f"{100 * result[s] / result['total']:.1f}%" for s in stages)
            print(f"| {name} | {result['total']:.3f} | {shares} |", flush=True)


if __name__ == "__main__":
    main()
