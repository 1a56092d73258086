"""DCN micro-benchmark: every deformable-conv backend against torchvision and a dense conv.

    python -m benchmarks.dcn [--device cpu] [--threads 2] [--repeats 7] [--dtype float32]
                             [--shapes default|quick] [--out benchmarks/results]

One row per DyHead shape (256 -> 256 channels, 3x3, padding 1; batch x height x width of the
conv *input*, stride 1 or 2). Each backend and the dense ``conv2d`` of the same shape run in
turn, round after round, so load on the machine hits them alike; each figure is the median
over ``--repeats`` rounds after one warm-up round, and the ratios are taken within the run.
Peak memory is the rise of the process's peak RSS (CPU) or of ``max_memory_allocated``
(CUDA) during one call. Writes ``dcn-<device>-<dtype>.json`` and ``.md`` and prints the table.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dyhead_zoo.ops import deform_conv as dc

RESULTS = Path(__file__).resolve().parent / "results"
# (batch, height, width, stride): the 100x152, the five levels of an 800x1333 input
# (P3..P7 at 100x168 .. 7x11), a stride-2 conv from P3 to P4, and batch 8 at P5.
SHAPES = {
    "default": [(1, 100, 152, 1), (1, 100, 168, 1), (1, 50, 84, 1), (1, 25, 42, 1), (1, 13, 21, 1),
                (1, 7, 11, 1), (1, 100, 168, 2), (8, 25, 42, 1)],
    "quick": [(1, 100, 152, 1), (1, 25, 42, 1), (1, 100, 168, 2)],
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Rise of peak memory during a block, in MiB: CUDA allocator peak, or Linux VmHWM on CPU.

    On CPU, freed heap memory is first handed back to the system (glibc ``malloc_trim``) so
    that memory the block reuses from earlier work still counts; NaN where unsupported.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.mib = float("nan")

    @staticmethod
    def _rss_kib(field: str) -> int | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        except OSError:
            pass
        return None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            try:
                ctypes.CDLL(None).malloc_trim(0)
            except (OSError, AttributeError):
                pass
            try:  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                self.start = None
                return self
            self.start = self._rss_kib("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self.start) / 2**20
        else:
            peak = self._rss_kib("VmHWM")
            if peak is not None and self.start is not None:
                self.mib = max(0, peak - self.start) / 1024


def make_inputs(batch: int, height: int, width: int, stride: int, device: torch.device, dtype: torch.dtype,
                seed: int = 0) -> dict[str, torch.Tensor]:
    """Random DyHead-like inputs: offsets about a pixel, masks in (0, 1), weights of std 0.01."""
    gen = torch.Generator().manual_seed(seed)
    h, w = dc.output_size(height, width, 3, stride, 1)
    tensors = {
        "x": torch.randn(batch, 256, height, width, generator=gen),
        "offset": torch.randn(batch, 18, h, w, generator=gen),
        "mask": torch.rand(batch, 9, h, w, generator=gen),
        "weight": 0.01 * torch.randn(256, 256, 3, 3, generator=gen),
        "bias": 0.1 * torch.randn(256, generator=gen),
    }
    return {k: v.to(device=device, dtype=dtype) for k, v in tensors.items()}


def bench_shape(shape: tuple[int, int, int, int], backends: list[str], device: torch.device, dtype: torch.dtype,
                repeats: int) -> dict:
    """Median seconds, ratios and peak memory of every backend and the dense conv at one shape."""
    batch, height, width, stride = shape
    t = make_inputs(batch, height, width, stride, device, dtype)
    calls = {name: (lambda name=name: dc.BACKENDS[name](t["x"], t["offset"], t["mask"], t["weight"], t["bias"],
                                                         stride, 1)) for name in backends}
    calls["dense conv2d"] = lambda: F.conv2d(t["x"], t["weight"], t["bias"], stride=stride, padding=1)
    times: dict[str, list[float]] = {name: [] for name in calls}
    memory: dict[str, float] = {}
    with torch.inference_mode():
        ref = calls["torchvision"]().float()
        errors = {name: ((calls[name]().float() - ref).abs().max() / ref.abs().max()).item() for name in backends}
        for name, call in calls.items():  # warm-up round, with the memory reading
            with PeakMemory(device) as peak:
                call()
            memory[name] = peak.mib
        for _ in range(repeats):
            for name, call in calls.items():
                sync(device)
                start = time.perf_counter()
                call()
                sync(device)
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(v) for name, v in times.items()}
    return {
        "batch": batch, "height": height, "width": width, "stride": stride,
        "median_s": median, "all_s": times, "peak_mib": memory, "max_rel_error_vs_torchvision": errors,
        "speedup_vs_torchvision": {n: median["torchvision"] / median[n] for n in backends},
        "ratio_to_dense": {n: median[n] / median["dense conv2d"] for n in backends},
    }


def environment(device: torch.device, threads: int) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
           "threads": threads, "machine": platform.processor() or platform.machine()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def markdown(record: dict) -> str:
    """The micro-benchmark as a Markdown table (milliseconds, ratios, MiB)."""
    rows = record["rows"]
    backends = [n for n in rows[0]["median_s"] if n != "dense conv2d"]
    others = [n for n in backends if n != "torchvision"]
    env = record["environment"]
    lines = [f"DCN 256->256 3x3, {env['device']}, {env['threads']} threads, {record['dtype']}, "
             f"median of {record['repeats']} after warm-up (torch {env['torch']})", ""]
    head = ["input (NxHxW, stride)", "dense conv2d ms", "torchvision ms"]
    for n in others:
        head += [f"{n} ms", f"{n} speedup vs torchvision", f"{n} / dense"]
    head += ["torchvision / dense"] + [f"peak MiB {n}" for n in backends]
    lines += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        ms = {n: 1e3 * s for n, s in r["median_s"].items()}
        cells = [f"{r['batch']}x{r['height']}x{r['width']}, s{r['stride']}", f"{ms['dense conv2d']:.1f}",
                 f"{ms['torchvision']:.1f}"]
        for n in others:
            cells += [f"{ms[n]:.1f}", f"{r['speedup_vs_torchvision'][n]:.2f}x", f"{r['ratio_to_dense'][n]:.2f}"]
        cells += [f"{r['ratio_to_dense']['torchvision']:.2f}"] + [f"{r['peak_mib'][n]:.0f}" for n in backends]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run(device: str = "cpu", threads: int = 2, repeats: int = 7, dtype: str = "float32", shapes: str = "default",
        out: Path = RESULTS) -> dict:
    """Run the micro-benchmark, write ``dcn-<device>-<dtype>.json`` / ``.md`` under ``out``, return the record."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    backends = [n for n in dc.available_backends(dev) if dc.self_check(n, dev)]
    if "torchvision" not in backends:
        raise ValueError(f"torchvision's deform_conv2d does not run on {dev}; it is the reference")
    backends.remove("torchvision")
    backends.insert(0, "torchvision")
    record = {"environment": environment(dev, threads), "dtype": dtype, "repeats": repeats,
              "auto_backend": dc.auto_backend(dev), "rows": []}
    for shape in SHAPES[shapes]:
        record["rows"].append(bench_shape(shape, backends, dev, getattr(torch, dtype), repeats))
        print(f"  {shape}: " + ", ".join(f"{n} {1e3 * s:.1f} ms" for n, s in record["rows"][-1]["median_s"].items()),
              flush=True)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"dcn-{dev.type}-{dtype}"
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1))
    stem.with_suffix(".md").write_text(markdown(record))
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds after one warm-up (median)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--shapes", default="default", choices=sorted(SHAPES))
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON record and table")
    args = parser.parse_args(argv)
    record = run(args.device, args.threads, args.repeats, args.dtype, args.shapes, args.out)
    print(markdown(record), end="")


if __name__ == "__main__":
    main()
