"""The ``dyhead-zoo`` command: eval, reproduce, info, and eval under torchrun (gloo, 2 processes)."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import official_state_dict, random_model
from test_eval_data import SIZES, TEST_INPUT, write_coco

import dyhead_zoo
from dyhead_zoo.categories import COCO_CATEGORY_IDS
from dyhead_zoo.cli import main as cli
from dyhead_zoo.evaluation.coco_metrics import STAT_NAMES
from dyhead_zoo.evaluation.store import read_detections

NAME = "dyhead_r50_atss_fpn_1x"
BIN = Path(sys.executable).parent
SMALL = ["--min-size", str(TEST_INPUT["min_size"]), "--max-size", str(TEST_INPUT["max_size"])]


def ground_truth_near_detections(annotations: Path, images_dir: Path) -> None:
    """Replace the boxes by the random model's best detections, some moved or shrunk, so that
    the metrics land between 0 and 100 and a difference between runs would show."""
    model = random_model(NAME, input=dataclasses.replace(dyhead_zoo.get_config(NAME).input, **TEST_INPUT))
    gt = json.loads(annotations.read_text())
    gt["annotations"] = []
    for image in gt["images"]:
        det = model.predict(images_dir / image["file_name"])
        for k, ((x1, y1, x2, y2), label) in enumerate(zip(det.boxes[:8].tolist(), det.labels[:8].tolist())):
            w, h = x2 - x1, y2 - y1
            x1, w = [(x1, w), (x1 + 0.2 * w, w), (x1, 0.7 * w), (x1, w)][k % 4]
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image["id"],
                                      "category_id": COCO_CATEGORY_IDS[label], "bbox": [x1, y1, w, h],
                                      "area": w * h, "iscrowd": 0})
    annotations.write_text(json.dumps(gt))


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    ground_truth_near_detections(*reversed(write_coco(root / "coco", SIZES)))
    weights = root / f"{NAME}.pth"
    torch.save({"model": official_state_dict(NAME)}, weights)
    return {"root": root, "coco": root / "coco", "weights": weights}


def eval_argv(setup, output: Path, *extra: str) -> list[str]:
    return ["eval", "--model", NAME, "--coco-root", str(setup["coco"]), "--weights", str(setup["weights"]),
            "--output-dir", str(output), "--no-progress", *SMALL, *extra]


def test_eval_prints_the_six_numbers(setup, tmp_path, capsys):
    assert cli.main(eval_argv(setup, tmp_path, "--batch-size", "2", "--workers", "1", "--limit", "3")) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "AP50" in line)
    assert header.split("|")[1:-1] == [f" {n:^7} " for n in STAT_NAMES[:6]]
    assert f"{NAME}: 3 images, cpu, 1 process," in out
    (metrics_file,) = tmp_path.glob("*.metrics.json")
    saved = json.loads(metrics_file.read_text())
    assert list(saved["metrics_percent"]) == list(STAT_NAMES) and saved["num_images"] == 3
    assert f"{saved['metrics_percent']['AP']:^7.3f}" in out
    assert 10 < saved["metrics_percent"]["AP"] < 90


def test_reproduce_writes_the_table(setup, tmp_path, capsys):
    argv = ["reproduce", "--coco-root", str(setup["coco"]), "--models", NAME, "--weights",
            f"{NAME}={setup['weights']}", "--limit", "2", "--workers", "0", "--output-dir", str(tmp_path),
            "--no-progress", *SMALL]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "| variant | published mAP | measured mAP | difference | images/s | device |" in out
    (row,) = json.loads((tmp_path / "reproduce.json").read_text())
    assert row["variant"] == NAME and row["published_map"] == 42.4 and row["device"] == "cpu"
    assert row["difference"] == pytest.approx(row["measured_map"] - 42.4)
    assert row["images_per_second"] > 0 and row["images"] == 2
    assert (tmp_path / "reproduce.md").read_text() in out
    assert cli.main(argv[:-4] + ["--models", "no_such_model"]) == 2
    assert "unknown model 'no_such_model'" in capsys.readouterr().err


def test_info_prints_versions_and_backend(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for word in ("python", "torch", "torchvision", "timm", f"dyhead_zoo   {dyhead_zoo.__version__}", "cuda",
                 "dcn backend"):
        assert word in out


def test_help_documents_the_quick_test_size(capsys):
    with pytest.raises(SystemExit):
        cli.main(["eval", "--help"])
    out = capsys.readouterr().out
    assert "--min-size" in out and "official 800" in out and "not comparable" in out


def run_cli(command: list[str], cwd: Path) -> str:
    # One thread per process in both runs (torchrun's default), so the arithmetic is the same.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def merged_detections(output: Path) -> dict[int, dict]:
    records: dict[int, dict] = {}
    for path in output.glob("*.jsonl"):
        records.update(read_detections(path))
    return records


def test_torchrun_two_processes_match_one(setup, tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    args = eval_argv(setup, single, "--workers", "1")
    out_single = run_cli([str(BIN / "dyhead-zoo"), *args], tmp_path)
    args = eval_argv(setup, multi, "--workers", "1")
    out_multi = run_cli([str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2",
                         str(BIN / "dyhead-zoo"), *args], tmp_path)
    assert f"{NAME}: 4 images, cpu, 1 process," in out_single
    assert f"{NAME}: 4 images, cpu, 2 processes," in out_multi
    assert out_multi.count("published mAP") == 1  # only rank 0 reports
    shards = sorted(multi.glob("*.jsonl"))
    assert [p.name.rsplit(".", 2)[1] for p in shards] == ["rank0", "rank1"]
    assert [len(read_detections(p)) for p in shards] == [2, 2]
    assert merged_detections(multi) == merged_detections(single)
    (single_metrics,) = single.glob("*.metrics.json")
    (multi_metrics,) = multi.glob("*.metrics.json")
    single_stats = json.loads(single_metrics.read_text())["metrics_percent"]
    multi_stats = json.loads(multi_metrics.read_text())["metrics_percent"]
    print("single process:", single_stats, "\ntwo processes: ", multi_stats)
    assert 10 < single_stats["AP"] < 90
    assert multi_stats == single_stats
