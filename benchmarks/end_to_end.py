"""End-to-end latency, throughput and peak memory per variant, before/after the DCN backend.

    python -m benchmarks.end_to_end [--models NAME ...] [--batch 1 8] [--precision fp32 bf16]
                                    [--backends torchvision auto] [--repeats 3] [--threads 2]
                                    [--device cpu] [--out benchmarks/results] [--append]

One 800x1333 photograph (stretched, as in ``benchmarks.latency``), repeated to the batch size,
through ``model(batch, sizes)`` with the seeded random checkpoint in the official layout
(``tests/make_checkpoint.py``), so post-processing does its full amount of work. For every
(variant, batch, precision) the backends run in turn, round after round; each figure is the
median over ``--repeats`` rounds after one warm-up round, and the speedup is torchvision's
median over the other backend's from the same run. ``bf16``/``fp16`` mean the forward under
``torch.autocast`` with that dtype (fp16 only on CUDA). Peak memory is measured over the
warm-up forward (see ``benchmarks.dcn.PeakMemory``). The detections of each backend are
compared with torchvision's from the same precision. Writes
``end_to_end-<device>-batch<sizes>.json`` and ``.md`` under ``--out`` and prints the table.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import dyhead_zoo
from dyhead_zoo.data.preprocess import normalize_and_pad, to_model_tensor
from dyhead_zoo.evaluation.agreement import match_one_to_one
from dyhead_zoo.ops import deform_conv as dc

from .dcn import RESULTS, PeakMemory, environment, sync

ROOT = Path(__file__).resolve().parent.parent
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def seeded_checkpoint(name: str) -> dict[str, torch.Tensor]:
    """The seeded random state_dict in the official layout that the parity tests use."""
    spec = importlib.util.spec_from_file_location("make_checkpoint", ROOT / "tests" / "make_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make(str(ROOT / "tests" / "data" / f"{name}.keys.json"), 0)


def photo(height: int = 800, width: int = 1333) -> np.ndarray:
    with np.load(ROOT / "tests" / "data" / "parity" / "dyhead_r50_atss_fpn_1x" / "seed0_coffee.npz") as case:
        return np.asarray(Image.fromarray(case["image_rgb"]).resize((width, height), Image.BILINEAR))


def supported_precisions(device: torch.device) -> list[str]:
    """fp32, plus bf16 where autocast supports it on the device, plus fp16 on CUDA."""
    names = ["fp32"]
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            names.append("bf16")
        names.append("fp16")
    elif torch.amp.is_autocast_available(device.type):
        names.append("bf16")
    return names


@contextlib.contextmanager
def dcn_backend(name: str):
    """Force ``name`` (or the automatic choice for ``"auto"``) through ``$DYHEAD_DCN_BACKEND``."""
    saved = os.environ.get(dc.ENV_VAR)
    os.environ[dc.ENV_VAR] = name
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(dc.ENV_VAR, None)
        else:
            os.environ[dc.ENV_VAR] = saved


def compare(dets: list, ref: list, iou: float, score_tol: float) -> dict:
    """How far ``dets`` agree with ``ref`` (lists of Detections, image by image).

    ``matched``: reference detections with a same-label counterpart at IoU > ``iou`` and score
    within ``score_tol``, paired greedily one-to-one (the parity tests' rule with 0.999 / 1e-4);
    ``max_score_diff`` over the matched pairs.
    """
    matched = total = 0
    score_diff = 0.0
    for a, b in zip(dets, ref):
        total += len(b)
        pairs = match_one_to_one(a.boxes, a.scores, a.labels, b.boxes, b.scores, b.labels, iou=iou,
                                 score_tol=score_tol)
        matched += len(pairs)
        score_diff = max([score_diff] + [abs(a.scores[i].item() - b.scores[j].item()) for i, j in pairs])
    return {"matched": matched, "reference": total, "iou": iou, "score_tol": score_tol,
            "max_score_diff": score_diff}


def bench(model: dyhead_zoo.DyHeadDetector, batch: torch.Tensor, sizes: list, precision: str, backends: list[str],
          device: torch.device, repeats: int) -> dict[str, dict]:
    """Per backend: median seconds, all times, peak MiB and agreement with torchvision's detections."""
    dtype = PRECISIONS[precision]
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    def forward():
        with autocast:
            return model(batch, sizes)

    results: dict[str, dict] = {}
    outputs = {}
    with torch.inference_mode():
        for name in backends:  # warm-up round, with the memory reading and the detections
            with dcn_backend(name):
                with PeakMemory(device) as peak:
                    outputs[name] = forward()
                results[name] = {"backend": dc.resolve_backend(None, device), "peak_mib": peak.mib, "all_s": []}
        for _ in range(repeats):
            for name in backends:
                with dcn_backend(name):
                    sync(device)
                    start = time.perf_counter()
                    forward()
                    sync(device)
                    results[name]["all_s"].append(time.perf_counter() - start)
    for name, r in results.items():
        r["median_s"] = statistics.median(r["all_s"])
        r["images_per_s"] = batch.shape[0] / r["median_s"]
        if "torchvision" in outputs:
            r["speedup_vs_torchvision"] = results["torchvision"]["median_s"] / r["median_s"]
            # float32: the parity rule; autocast: same object (IoU > 0.9, same label, any score)
            rule = (0.999, 1e-4) if dtype is None else (0.9, 1.0)
            r["detections_vs_torchvision"] = compare(outputs[name], outputs["torchvision"], *rule)
    return results


def markdown(record: dict) -> str:
    """One line per (variant, batch, precision): latency and throughput per backend, speedup, memory."""
    env = record["environment"]
    backends = record["backends"]
    after = [b for b in backends if b != "torchvision"]
    lines = [f"End-to-end forward at 800x1333, {env['device']}"
             + (f" ({env['gpu']})" if "gpu" in env else "") + f", {env['threads']} threads, "
             f"median of {record['repeats']} after warm-up (torch {env['torch']})", ""]
    head = ["variant", "batch", "precision"] + [f"{b} s" for b in backends]
    head += [f"{b} speedup" for b in after] + [f"{b} img/s" for b in backends]
    head += [f"peak MiB {b}" for b in backends]
    head += [f"{b} detections matching torchvision's* (max score diff)" for b in after]
    lines += ["| " + " | ".join(head) + " |", "|---|---:|---|" + "---:|" * (len(head) - 3)]
    for row in record["rows"]:
        r = row["results"]
        if "error" in row:
            lines.append(f"| {row['variant']} | {row['batch']} | {row['precision']} | error: {row['error']} |")
            continue
        cells = [row["variant"], str(row["batch"]), row["precision"]]
        cells += [f"{r[b]['median_s']:.2f}" for b in backends]
        cells += [f"{r[b].get('speedup_vs_torchvision', float('nan')):.2f}x" for b in after]
        cells += [f"{r[b]['images_per_s']:.3f}" for b in backends]
        cells += [f"{r[b]['peak_mib']:.0f}" for b in backends]
        for b in after:
            d = r[b].get("detections_vs_torchvision")
            cells.append("n/a" if d is None else f"{d['matched']}/{d['reference']} ({d['max_score_diff']:.1e})")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "*fp32: same label, IoU > 0.999 and score within 1e-4 (the parity tests' rule); "
              "bf16/fp16: same label and IoU > 0.9."]
    if "auto" in backends:
        lines += [f"auto = {record['auto_backend']} on this device."]
    return "\n".join(lines) + "\n"


def run(models: list[str], batches: list[int], precisions: list[str], backends: list[str], repeats: int,
        threads: int, device: str, out: Path, append: bool = False) -> dict:
    """Run the benchmark, write ``end_to_end-<device>-batch<sizes>.json`` / ``.md`` under ``out``,
    return the record."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    precisions = [p for p in precisions if p in supported_precisions(dev)]
    with dcn_backend("auto"):
        auto = dc.resolve_backend(None, dev)
    record = {"environment": environment(dev, threads), "repeats": repeats, "backends": backends,
              "auto_backend": auto, "input": "800x1333", "rows": []}
    image = photo()
    for name in models:
        model = dyhead_zoo.create_model(name)
        model.load_state_dict(seeded_checkpoint(name))
        model.to(dev).eval()
        tensor = to_model_tensor(image, model.config.input).to(dev)
        for size in batches:
            batch, sizes = normalize_and_pad([tensor] * size, model.config.input)
            for precision in precisions:
                row = {"variant": name, "batch": size, "precision": precision, "results": {}}
                try:
                    row["results"] = bench(model, batch, sizes, precision, backends, dev, repeats)
                except Exception as err:  # a precision a variant cannot run in is reported, not fatal
                    row["error"] = repr(err)[:200]
                record["rows"].append(row)
                print(f"  {name} batch {size} {precision}: " + ", ".join(
                    f"{b} {r['median_s']:.2f} s" for b, r in row["results"].items()), flush=True)
        del model
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"end_to_end-{dev.type}-batch{'_'.join(map(str, batches))}"
    if append and stem.with_suffix(".json").exists():  # keep earlier rows this run did not redo
        done = {(r["variant"], r["batch"], r["precision"]) for r in record["rows"]}
        earlier = json.loads(stem.with_suffix(".json").read_text())["rows"]
        record["rows"] = [r for r in earlier if (r["variant"], r["batch"], r["precision"]) not in done] + record["rows"]
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1))
    stem.with_suffix(".md").write_text(markdown(record))
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=dyhead_zoo.list_models(), choices=dyhead_zoo.list_models())
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--precision", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS),
                        help="those the device cannot autocast to are dropped")
    parser.add_argument("--backends", nargs="+", default=["torchvision", "auto"],
                        choices=["auto", *dc.BACKENDS], help="torchvision first: it is the 'before'")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after one warm-up (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON record and table")
    parser.add_argument("--append", action="store_true",
                        help="merge into the existing record (e.g. to run variants one process at a time)")
    args = parser.parse_args(argv)
    record = run(args.models, args.batch, args.precision, args.backends, args.repeats, args.threads, args.device,
                 args.out, args.append)
    print(markdown(record), end="")


if __name__ == "__main__":
    main()
