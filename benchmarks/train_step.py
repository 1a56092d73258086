"""One training step (forward + backward) per variant: seconds and peak memory, per DCN backend.

    python -m benchmarks.train_step [--models NAME ...] [--batch 2] [--repeats 3] [--threads N]
                                    [--backends torchvision auto] [--gradient-checkpointing] [--size 800 1333]
                                    [--device cpu] [--out benchmarks/results] [--append]

A batch of ``--batch`` copies of one 800x1333 photograph with five ground-truth boxes each,
through ``model(batch, sizes, targets)`` in train mode and ``sum(losses).backward()``, with
the seeded random checkpoint in the official layout (``tests/make_checkpoint.py``) and each
variant's official training settings (Swin-T drop path 0.2). No optimizer step. For every
variant the backends run in turn, round after round: one warm-up round that also measures
peak memory, then ``--repeats`` timed rounds; each figure is the median (with ``--repeats 0``,
the warm-up round's time: torchvision's CPU backward takes minutes a step), and the speedup is
torchvision's median over the other backend's from the same run. ``auto`` is the backend a
training forward picks (``dyhead_zoo.ops.deform_conv.training_backend``). Writes
``train_step-<device>.json`` and ``.md`` under ``--out`` (``--append`` keeps the other
variants' rows of an earlier run, so variants can be measured one at a time) and prints the table.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

import dyhead_zoo
from dyhead_zoo.data.preprocess import normalize_and_pad, to_model_tensor
from dyhead_zoo.ops import deform_conv as dc

from .dcn import RESULTS, PeakMemory, environment, sync
from .end_to_end import dcn_backend, photo, seeded_checkpoint

#: Five boxes (XYXY in 800x1333 pixels): small, medium, large, on the border, elongated.
BOXES = torch.tensor([[100.0, 120.0, 124.0, 140.0], [300.0, 200.0, 460.0, 380.0], [500.0, 50.0, 1200.0, 700.0],
                      [0.0, 600.0, 90.0, 800.0], [700.0, 420.0, 1333.0, 520.0]])
LABELS = torch.tensor([0, 2, 17, 56, 62])


def backend_name(name: str, device: torch.device) -> str:
    """The backend that trains for ``name`` ("auto" resolves to :func:`training_backend`)."""
    return dc.training_backend(device) if name == "auto" else name


def bench(model: dyhead_zoo.DyHeadDetector, batch: torch.Tensor, sizes: list, targets: list, backends: list[str],
          device: torch.device, repeats: int) -> dict[str, dict]:
    """Per backend: median seconds of forward + backward, all times, peak MiB and the loss."""

    def step() -> float:
        model.zero_grad(set_to_none=True)
        losses = model(batch, sizes, targets)
        total = sum(losses.values())
        total.backward()
        return float(total.detach())

    results: dict[str, dict] = {}
    for name in backends:  # warm-up round, with the memory reading; timed too (the figure when repeats=0)
        with dcn_backend(backend_name(name, device)):
            with PeakMemory(device) as peak:
                sync(device)
                start = time.perf_counter()
                loss = step()
                sync(device)
                warmup_s = time.perf_counter() - start
        results[name] = {"backend": backend_name(name, device), "peak_mib": peak.mib, "loss": loss,
                         "warmup_s": warmup_s, "all_s": [] if repeats else [warmup_s]}
    for _ in range(repeats):
        for name in backends:
            with dcn_backend(backend_name(name, device)):
                sync(device)
                start = time.perf_counter()
                step()
                sync(device)
                results[name]["all_s"].append(time.perf_counter() - start)
    for r in results.values():
        r["median_s"] = statistics.median(r["all_s"])
        if "torchvision" in results:
            r["speedup_vs_torchvision"] = results["torchvision"]["median_s"] / r["median_s"]
    model.zero_grad(set_to_none=True)
    return results


def markdown(record: dict) -> str:
    """One line per variant: step seconds and peak memory per backend, speedup."""
    env = record["environment"]
    backends = record["backends"]
    after = [b for b in backends if b != "torchvision"]
    height, width = record.get("size", (800, 1333))
    lines = [f"Training step (forward + backward, no optimizer step) at batch {record['batch']}, {height}x{width}, "
             f"{env['device']}" + (f" ({env['gpu']})" if "gpu" in env else "") + f", {env['threads']} threads, "
             + (f"median of {record['repeats']} after warm-up" if record["repeats"] else "one round (the warm-up)")
             + f" (torch {env['torch']})"
             + (", gradient checkpointing on" if record["gradient_checkpointing"] else ""), ""]
    head = ["variant"] + [f"{b} s" for b in backends] + [f"{b} speedup" for b in after]
    head += [f"peak MiB {b}" for b in backends]
    lines += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for row in record["rows"]:
        r = row["results"]
        if "error" in row:
            lines.append(f"| {row['variant']} | error: {row['error']} |")
            continue
        cells = [row["variant"]] + [f"{r[b]['median_s']:.2f}" for b in backends]
        cells += [f"{r[b].get('speedup_vs_torchvision', float('nan')):.2f}x" for b in after]
        cells += [f"{r[b]['peak_mib']:.0f}" for b in backends]
        lines.append("| " + " | ".join(cells) + " |")
    if "auto" in backends:
        chosen = sorted({row["results"]["auto"]["backend"] for row in record["rows"] if "error" not in row})
        lines += ["", f"auto = the training backend: {', '.join(chosen)}."]
    return "\n".join(lines) + "\n"


def run(models: list[str], batch_size: int, backends: list[str], repeats: int, threads: int, device: str,
        out: Path, append: bool = False, gradient_checkpointing: bool = False,
        size: tuple[int, int] = (800, 1333)) -> dict:
    torch.set_num_threads(threads)
    dev = torch.device(device)
    rows = []
    image = photo(*size)
    for name in models:
        config = dataclasses.replace(dyhead_zoo.get_config(name), gradient_checkpointing=gradient_checkpointing)
        model = dyhead_zoo.create_model(name, config=config)
        model.load_state_dict(seeded_checkpoint(name), strict=True)
        model.to(dev).train()
        tensor = to_model_tensor(image, model.config.input).to(dev)
        batch, sizes = normalize_and_pad([tensor] * batch_size, model.config.input)
        targets = [{"boxes": BOXES.to(dev), "labels": LABELS.to(dev)} for _ in range(batch_size)]
        try:
            results = bench(model, batch, sizes, targets, backends, dev, repeats)
            rows.append({"variant": name, "results": results})
        except RuntimeError as err:  # out of memory on a small machine: record it, go on
            rows.append({"variant": name, "results": {}, "error": str(err).splitlines()[0]})
        del model
        print(f"{name}: done", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"train_step-{dev.type}.json"
    if append and path.exists():
        earlier = json.loads(path.read_text())
        rows = [r for r in earlier["rows"] if r["variant"] not in models] + rows
    record = {"environment": environment(dev, threads), "batch": batch_size, "size": list(size), "backends": backends,
              "repeats": repeats, "gradient_checkpointing": gradient_checkpointing, "rows": rows}
    path.write_text(json.dumps(record, indent=1))
    path.with_suffix(".md").write_text(markdown(record))
    print(markdown(record))
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=dyhead_zoo.list_models(), choices=dyhead_zoo.list_models())
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=2, default=[800, 1333], metavar=("H", "W"),
                        help="image size (smaller only for a quick check)")
    parser.add_argument("--backends", nargs="+", default=["torchvision", "auto"],
                        help="DCN backends to compare; 'auto' = the one training picks")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--append", action="store_true", help="keep other variants' rows of an earlier run")
    args = parser.parse_args(argv)
    for name in args.backends:
        if name != "auto" and not dc.is_differentiable(name):
            trainable = [n for n in dc.BACKENDS if dc.is_differentiable(n)]
            parser.error(f"backend {name!r} cannot train; choose from {trainable} or auto")
    run(args.models, args.batch, args.backends, args.repeats, args.threads, args.device, args.out, args.append,
        args.gradient_checkpointing, tuple(args.size))


if __name__ == "__main__":
    main()
