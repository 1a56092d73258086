"""onnxruntime (CPU) against eager PyTorch: latency of one 800x1333 image per variant, same run.

    python -m benchmarks.onnx_latency [--models NAME ...] [--repeats 3] [--threads 2] [--out benchmarks/results]

Each variant (seeded random checkpoint in the official layout, a real photo stretched to
800x1333) is exported to ONNX (opset 19, standard DeformConv) and timed end to end, from the
normalised padded batch to the final detections: eager PyTorch with its best CPU deformable
conv backend (the automatic choice) and onnxruntime's CPUExecutionProvider followed by
``dyhead_zoo.export.decode``. Both use ``--threads`` threads. Also reported: the largest
relative difference of the raw outputs (ONNX vs the eager network with the reference DCN) and
whether the detections agree (parity criterion). Results: ``onnx_latency.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

import dyhead_zoo
from dyhead_zoo.evaluation.agreement import match_one_to_one
from dyhead_zoo.export import ExportableNetwork, export_onnx, output_names, torchvision_deform_conv
from dyhead_zoo.export import decode as postprocess
from dyhead_zoo.export.decode import prepare_batch
from dyhead_zoo.ops.deform_conv import resolve_backend

from .end_to_end import photo, seeded_checkpoint


def _median_seconds(run, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name: str, repeats: int, threads: int, folder: Path) -> dict:
    """Export variant ``name`` and time eager PyTorch and onnxruntime on one 800x1333 photo."""
    import onnxruntime as ort

    model = dyhead_zoo.create_model(name)
    model.load_state_dict(seeded_checkpoint(name))
    model.eval()
    config = model.config
    batch, sizes, originals = prepare_batch([photo()], config)
    padded_hw = tuple(batch.shape[-2:])
    images = torch.from_numpy(batch)
    inputs = [images] + ([torch.tensor(sizes)] if config.meta_architecture == "GeneralizedRCNN" else [])

    start = time.perf_counter()
    path = export_onnx(model, folder / f"{name}.onnx", *padded_hw)
    export_s = time.perf_counter() - start
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)}

    def eager():
        with torch.inference_mode():
            return model(images, sizes, output_sizes=originals)[0]

    def onnxruntime():
        return postprocess(config, session.run(None, feeds), sizes, padded_hw, originals)[0]

    eager_s = _median_seconds(eager, repeats)
    onnx_s = _median_seconds(onnxruntime, repeats)
    with torchvision_deform_conv(), torch.inference_mode():
        reference = [t.float() for t in ExportableNetwork(model)(*inputs)]
        reference_det = model(images, sizes, output_sizes=originals)[0]
    outputs = [torch.from_numpy(o).float() for o in session.run(None, feeds)]
    differences = {}
    if config.meta_architecture != "GeneralizedRCNN":  # proposal rows may be ordered differently on ties
        differences = {n: float((o - r).abs().max() / r.abs().max().clamp(min=1e-12))
                       for n, o, r in zip(output_names(model), outputs, reference)}
    det = onnxruntime()
    return {"variant": name, "input_hw": list(padded_hw), "eager_backend": resolve_backend(None, "cpu"),
            "eager_s": eager_s, "onnxruntime_s": onnx_s, "speedup": eager_s / onnx_s, "export_s": export_s,
            "onnx_mib": path.stat().st_size / 2**20,
            "max_rel_diff": max(differences.values()) if differences else None,
            "detections": len(reference_det),
            "matched": len(match_one_to_one(det.boxes, det.scores, det.labels, reference_det.boxes,
                                            reference_det.scores, reference_det.labels))}


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| variant | eager PyTorch (s) | onnxruntime + postprocess (s) | onnxruntime speed-up | "
             "raw max rel diff | detections matched |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        diff = "n/a" if r["max_rel_diff"] is None else f"{r['max_rel_diff']:.1e}"
        lines.append(f"| {r['variant']} | {r['eager_s']:.3f} | {r['onnxruntime_s']:.3f} | {r['speedup']:.2f}x | "
                     f"{diff} | {r['matched']}/{r['detections']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=dyhead_zoo.list_models(), choices=dyhead_zoo.list_models())
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for both runtimes")
    parser.add_argument("--out", default="benchmarks/results", help="folder for onnx_latency.json and .md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import onnxruntime

    header = (f"CPU ({platform.processor() or platform.machine()}), {args.threads} threads, 800x1333 photo, batch 1, "
              f"float32, median of {args.repeats}; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            rows.append(measure(name, args.repeats, args.threads, Path(folder)))
            print(markdown(rows[-1:], header).splitlines()[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "onnx_latency.json").write_text(json.dumps({"setup": header, "rows": rows}, indent=2))
    (out / "onnx_latency.md").write_text(markdown(rows, header))
    print(markdown(rows, header), end="")


if __name__ == "__main__":
    main()
