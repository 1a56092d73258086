"""CPU speed per variant: the default path against the torchvision-DCN path, same run, per stage.

    python -m benchmarks.cpu_speed [--models NAME ...] [--threads 1 2] [--repeats 3]
                                   [--size 800 1333] [--bf16] [--dense-floor] [--clock wall|cpu]
                                   [--out benchmarks/results]

One photograph (the coffee photo of the parity tests, stretched to ``--size``) through
``model(batch, sizes)`` at batch 1 in float32, with the seeded random checkpoint in the official
layout (``tests/make_checkpoint.py``); random weights give a full set of candidates, so the
post-processing does its largest amount of work. For every thread count and variant, three
paths run in turn, round after round, in one process (the first round warms up; figures are
medians over ``--repeats`` rounds):

* ``default``: the automatic DCN backend with the fused inference path switched on
  (the library's default: FrozenBatchNorm folded into the convs, channels-last, fused
  bias/ReLU/add; ``dyhead_zoo.models.fused_conv``);
* ``torchvision``: the same with ``DYHEAD_DCN_BACKEND=torchvision`` (the issue's reference);
* ``torchvision-unfused``: ``DYHEAD_DCN_BACKEND=torchvision`` and ``DYHEAD_FUSED_INFERENCE=0``,
  the path as it was before the fusions (the official pipeline's speed);
* ``default-unfused``: the automatic DCN backend with ``DYHEAD_FUSED_INFERENCE=0`` (what the
  fusions gain; the post-processing is the new one in every path);
* ``dense-floor`` (``--dense-floor``): every deformable conv replaced by the dense 3x3 conv of
  the same weights and shapes. Not a detector: a DCN does that conv's matrix product plus the
  sampling, so this is the time the default path would take with a DCN as fast as a dense conv
  and every other stage as it is; ``dense-floor / torchvision`` is the lowest ratio that
  speeding up the DCN alone can reach.

The ratio is ``default`` over each reference, per variant and thread count, with the time
per stage (backbone, FPN, DyHead tower, head, post-processing: forward hooks as in
``benchmarks.latency``). With ``--bf16`` the default path also runs under CPU bfloat16
autocast, with its agreement with float32 (same label and IoU > 0.9; score and box
differences over the 10 best float32 detections). ``--clock cpu`` times with the process's CPU
time instead of the wall clock: on a machine shared with other jobs it is the steadier
measure of the work done (at one thread; with more it sums the threads). Writes
``cpu_speed.json`` and ``cpu_speed.md`` under ``--out`` and prints the table.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch
from torchvision.ops import box_iou

import dyhead_zoo
from dyhead_zoo.data.preprocess import normalize_and_pad, to_model_tensor
from dyhead_zoo.models import fused_conv
from dyhead_zoo.ops import deform_conv as dc

from .dcn import RESULTS, environment
from .end_to_end import compare, photo, seeded_checkpoint
from .latency import _stage_modules

STAGES = ("backbone", "fpn", "dyhead", "head", "postprocess")
#: path name -> (DCN backend, fused inference on, autocast dtype)
PATHS = {
    "default": ("auto", True, None),
    "torchvision": ("torchvision", True, None),
    "torchvision-unfused": ("torchvision", False, None),
    "default-unfused": ("auto", False, None),
    "default-bf16": ("auto", True, torch.bfloat16),
    "dense-floor": ("auto", True, None),
}


@contextlib.contextmanager
def dense_instead_of_deformable(enabled: bool):
    """While enabled, the DyHead blocks run a dense 3x3 conv (same weight, bias, stride,
    padding) wherever they would run a modulated deformable conv."""
    if not enabled:
        yield
        return
    import torch.nn.functional as F

    from dyhead_zoo.models import dyhead

    def dense(x, offset, mask, weight, bias, stride, padding):
        return F.conv2d(x, weight, bias, stride, padding)

    saved = dyhead.modulated_deform_conv2d
    dyhead.modulated_deform_conv2d = dense
    try:
        yield
    finally:
        dyhead.modulated_deform_conv2d = saved


@contextlib.contextmanager
def environ(**values: str):
    """Set environment variables for the duration of the block, then restore them."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


class StageTimer:
    """Seconds spent in each stage of one forward, from forward hooks on the stage modules."""

    def __init__(self, model: dyhead_zoo.DyHeadDetector, clock=time.perf_counter) -> None:
        self.clock = clock
        self.spent: dict[str, float] = defaultdict(float)
        self._starts: dict[int, float] = {}
        for stage, modules in _stage_modules(model).items():
            for module in modules:
                module.register_forward_pre_hook(self._before)
                module.register_forward_hook(self._after(stage))

    def _before(self, module, args) -> None:
        self._starts[id(module)] = self.clock()

    def _after(self, stage: str):
        def hook(module, args, output) -> None:
            self.spent[stage] += self.clock() - self._starts.pop(id(module))
        return hook

    def stages(self, total: float) -> dict[str, float]:
        """Per-stage seconds of the forward that just ran (the rest is post-processing)."""
        stages = {"backbone": self.spent["backbone"], "fpn": self.spent["fpn+backbone"] - self.spent["backbone"],
                  "dyhead": self.spent["dyhead"], "head": self.spent["head"]}
        stages["postprocess"] = total - sum(stages.values())
        stages["total"] = total
        return stages


def agreement(dets, ref, top: int = 10) -> dict:
    """bf16 against fp32 detections of one image: matches at IoU > 0.9 with the same label, and
    over the ``top`` best fp32 detections the largest score and box-coordinate differences to
    their best same-label bf16 match (NaN where a detection has no match)."""
    result = compare([dets], [ref], 0.9, 1.0)
    score_diff = box_diff = 0.0
    unmatched = 0
    for i in range(min(top, len(ref))):
        same = (dets.labels == ref.labels[i]).nonzero().flatten()
        if not len(same):
            unmatched += 1
            continue
        ious = box_iou(ref.boxes[i:i + 1].float(), dets.boxes[same].float())[0]
        j = same[int(ious.argmax())]
        if ious.max() <= 0.5:
            unmatched += 1
            continue
        score_diff = max(score_diff, abs(float(dets.scores[j]) - float(ref.scores[i])))
        box_diff = max(box_diff, float((dets.boxes[j].float() - ref.boxes[i].float()).abs().max()))
    result.update({f"top{top}_max_score_diff": score_diff, f"top{top}_max_box_diff_px": box_diff,
                   f"top{top}_unmatched": unmatched})
    return result


def bench_variant(name: str, paths: list[str], repeats: int, size: tuple[int, int], clock: str = "wall") -> dict:
    """Median total and per-stage seconds of each path for variant ``name``, alternating paths."""
    model = dyhead_zoo.create_model(name)
    model.load_state_dict(seeded_checkpoint(name))
    model.eval()
    timer = StageTimer(model, CLOCKS[clock])
    batch, sizes = normalize_and_pad([to_model_tensor(photo(*size), model.config.input)], model.config.input)
    runs: dict[str, list[dict[str, float]]] = {p: [] for p in paths}
    outputs = {}
    with torch.inference_mode():
        for round_index in range(repeats + 1):  # round 0 warms up (and builds the folded weights)
            for path in paths:
                backend, fused, dtype = PATHS[path]
                autocast = torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()
                with (environ(**{dc.ENV_VAR: backend, fused_conv.ENV_VAR: "1" if fused else "0"}), autocast,
                      dense_instead_of_deformable(path == "dense-floor")):
                    timer.spent.clear()
                    start = timer.clock()
                    detections = model(batch, sizes)
                    total = timer.clock() - start
                if round_index == 0:
                    outputs[path] = detections[0]
                else:
                    runs[path].append(timer.stages(total))
    result: dict = {"paths": {}}
    for path in paths:
        medians = {key: statistics.median(run[key] for run in runs[path]) for key in runs[path][0]}
        result["paths"][path] = {"median_s": medians, "all_total_s": [run["total"] for run in runs[path]],
                                 "detections": len(outputs[path])}
    default = result["paths"]["default"]["median_s"]["total"]
    for path in paths:
        if path != "default":
            result[f"default_vs_{path}"] = default / result["paths"][path]["median_s"]["total"]
    for path in paths:
        if path.startswith("torchvision") or path == "default-unfused":
            result["paths"][path]["detections_vs_default"] = compare(
                [outputs[path]], [outputs["default"]], 0.999, 1e-4)
    if "default-bf16" in paths:
        result["bf16_vs_fp32"] = agreement(outputs["default-bf16"], outputs["default"])
    return result


def markdown(record: dict) -> str:
    """Ratio table per (threads, variant), then the per-stage seconds of every path."""
    env = record["environment"]
    paths = record["paths"]
    refs = [p for p in paths if p.startswith("torchvision") or p == "default-unfused"]
    clock = "CPU seconds" if record.get("clock") == "cpu" else "seconds"
    lines = [f"CPU forward at {record['size'][0]}x{record['size'][1]}, batch 1, float32, {clock}, median of "
             f"{record['repeats']} alternating rounds after a warm-up (torch {env['torch']}, {env['machine']}); "
             f"default DCN backend: {record['auto_backend']}", ""]
    head = ["threads", "variant"] + [f"{p} s" for p in paths] + [f"default / {p}" for p in refs]
    floor = ["dense-floor / torchvision"] if "dense-floor" in paths else []
    head += floor + [f"{p} detections matching default's*" for p in refs]
    lines += ["| " + " | ".join(head) + " |", "|---:|---|" + "---:|" * (len(head) - 2)]
    for row in record["rows"]:
        r = row["result"]
        cells = [str(row["threads"]), row["variant"]]
        cells += [f"{r['paths'][p]['median_s']['total']:.2f}" for p in paths]
        cells += [f"**{r[f'default_vs_{p}']:.2f}x**" for p in refs]
        if floor:
            cells.append(f"{r['paths']['dense-floor']['median_s']['total'] / r['paths']['torchvision']['median_s']['total']:.2f}x")
        cells += [f"{r['paths'][p]['detections_vs_default']['matched']}/"
                  f"{r['paths'][p]['detections_vs_default']['reference']}" for p in refs]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "*same label, IoU > 0.999 and score within 1e-4 (the parity tests' rule)."]
    lines += ["", "Seconds per stage (median):", ""]
    head = ["threads", "variant", "path", *STAGES, "total"]
    lines += ["| " + " | ".join(head) + " |", "|---:|---|---|" + "---:|" * (len(head) - 3)]
    for row in record["rows"]:
        for p in paths:
            m = row["result"]["paths"][p]["median_s"]
            lines.append("| " + " | ".join([str(row["threads"]), row["variant"], p]
                                           + [f"{m[s]:.3f}" for s in (*STAGES, "total")]) + " |")
    bf16 = [row for row in record["rows"] if "bf16_vs_fp32" in row["result"]]
    if bf16:
        lines += ["", "bfloat16 autocast against float32 (default path):", "",
                  "| threads | variant | bf16 / fp32 time | matched (IoU > 0.9, same label) | "
                  "top-10 max score diff | top-10 max box diff (px) | top-10 unmatched |",
                  "|---:|---|---:|---:|---:|---:|---:|"]
        for row in bf16:
            r = row["result"]
            a = r["bf16_vs_fp32"]
            ratio = r["paths"]["default-bf16"]["median_s"]["total"] / r["paths"]["default"]["median_s"]["total"]
            lines.append(f"| {row['threads']} | {row['variant']} | {ratio:.2f}x | {a['matched']}/{a['reference']} | "
                         f"{a['top10_max_score_diff']:.2e} | {a['top10_max_box_diff_px']:.2f} | {a['top10_unmatched']} |")
    return "\n".join(lines) + "\n"


def run(models: list[str], threads: list[int], repeats: int, size: tuple[int, int], bf16: bool, unfused: bool,
        out: Path, clock: str = "wall", dense_floor: bool = False) -> dict:
    """Run the benchmark, write ``cpu_speed.json`` / ``.md`` under ``out``, return the record."""
    paths = ["default", "torchvision"] + (["torchvision-unfused", "default-unfused"] if unfused else [])
    paths += ["default-bf16"] if bf16 else []
    paths += ["dense-floor"] if dense_floor else []
    with environ(**{dc.ENV_VAR: "auto"}):
        auto = dc.resolve_backend(None, "cpu")
    record = {"environment": environment(torch.device("cpu"), threads), "repeats": repeats, "size": list(size),
              "paths": paths, "auto_backend": auto, "clock": clock, "rows": []}
    for count in threads:
        torch.set_num_threads(count)
        for name in models:
            result = bench_variant(name, paths, repeats, size, clock)
            record["rows"].append({"threads": count, "variant": name, "result": result})
            print(f"  threads {count} {name}: " + ", ".join(
                f"{p} {result['paths'][p]['median_s']['total']:.2f} s" for p in paths), flush=True)
            _write(record, out)  # after every variant, so a long run leaves its figures as it goes
    return record


def _write(record: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "cpu_speed.json").write_text(json.dumps(record, indent=1))
    (out / "cpu_speed.md").write_text(markdown(record))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=dyhead_zoo.list_models(), choices=dyhead_zoo.list_models())
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="torch CPU thread counts to run")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after one warm-up round (median)")
    parser.add_argument("--size", nargs=2, type=int, default=[800, 1333], metavar=("H", "W"),
                        help="input height and width (multiples of 32 after padding)")
    parser.add_argument("--bf16", action="store_true", help="also time bfloat16 autocast and its agreement")
    parser.add_argument("--no-unfused", dest="unfused", action="store_false",
                        help="skip the torchvision and default paths with the fusions off")
    parser.add_argument("--dense-floor", action="store_true",
                        help="also time the default path with every DCN replaced by a dense conv (a lower bound)")
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall",
                        help="wall clock (default) or the process's CPU time (steadier on a shared machine)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for cpu_speed.json / .md")
    args = parser.parse_args(argv)
    record = run(args.models, args.threads, args.repeats, tuple(args.size), args.bf16, args.unfused, args.out,
                 args.clock, args.dense_floor)
    print(markdown(record), end="")


if __name__ == "__main__":
    main()
