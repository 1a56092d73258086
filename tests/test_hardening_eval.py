"""Issue 9 hardening, evaluation and command-line side: metrics per subset, reproduce's weights
and table, one-line errors, bad images mid-run, published-value comparisons, resume keys, locks,
ground-truth checks, devices and --version (items 5, 6, 7, 9, 10, 14)."""
from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import official_state_dict, random_model
from PIL import Image
from test_eval_data import SIZES, TEST_INPUT, write_coco

import dyhead_zoo
from dyhead_zoo import distributed
from dyhead_zoo.cli import evaluate as evaluate_command
from dyhead_zoo.cli import main as cli
from dyhead_zoo.data.coco_data import load_coco
from dyhead_zoo.errors import EvaluationLockedError
from dyhead_zoo.evaluation import reproduce as reproduce_module
from dyhead_zoo.evaluation.evaluate import EvalResult, evaluate
from dyhead_zoo.evaluation.store import run_key, run_settings
from dyhead_zoo.weights.fetch import WeightsDownloadError

NAME = "dyhead_r50_atss_fpn_1x"
SMALL = ["--min-size", str(TEST_INPUT["min_size"]), "--max-size", str(TEST_INPUT["max_size"])]


@pytest.fixture(scope="module")
def model():
    return random_model(NAME, input=dataclasses.replace(dyhead_zoo.get_config(NAME).input, **TEST_INPUT))


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / f"{NAME}.pth"
    torch.save({"model": official_state_dict(NAME)}, path)
    return path


def eval_argv(coco: Path, weights: Path, output: Path, *extra: str) -> list[str]:
    return ["eval", "--model", NAME, "--coco-root", str(coco), "--weights", str(weights), "--output-dir",
            str(output), "--no-progress", "--workers", "0", *SMALL, *extra]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("dyhead-zoo: error: ") and "Traceback" not in err, err
    return err


# Item 5: metrics per image subset ---------------------------------------------------------------

def test_metrics_are_kept_per_image_subset(model, tmp_path):
    data = load_coco(*write_coco(tmp_path / "coco", SIZES[:3]))
    full = evaluate(model, data, tmp_path / "out", progress=False)
    saved = full.metrics_file.read_text()
    part = evaluate(model, data, tmp_path / "out", limit=1, progress=False)
    assert part.metrics_file != full.metrics_file and full.metrics_file.read_text() == saved
    assert ".all.metrics.json" in full.metrics_file.name and ".first1.metrics.json" in part.metrics_file.name
    assert json.loads(part.metrics_file.read_text())["num_images"] == 1


# Item 6: reproduce resolves every variant's weights first and writes rows as they finish ------

def test_reproduce_names_every_missing_weights_before_evaluating(tmp_path, monkeypatch):
    import dyhead_zoo.weights.fetch

    def offline(config, progress=True):
        raise WeightsDownloadError(f"could not get the weights of {config.name}", reason="offline")

    def no_evaluation(*args, **kwargs):
        raise AssertionError("evaluated before every variant's weights were there")

    monkeypatch.setattr(dyhead_zoo.weights.fetch, "download_weights", offline)
    monkeypatch.setattr(reproduce_module, "evaluate", no_evaluation)
    models = dyhead_zoo.list_models()
    local = {models[0]: str(tmp_path / "local.pth")}
    with pytest.raises(WeightsDownloadError) as info:
        reproduce_module.reproduce(None, models, tmp_path, local)
    message = str(info.value)
    assert f"{len(models) - 1} of {len(models)} variants" in message and "--weights NAME=PATH" in message
    assert all(name in message for name in models[1:]) and f"weights of {models[0]}" not in message


def test_reproduce_writes_the_table_after_each_variant(tmp_path, monkeypatch):
    import dyhead_zoo.registry

    first, second = dyhead_zoo.list_models()[:2]
    monkeypatch.setattr(dyhead_zoo.registry, "create_model", lambda name, **kwargs: name)

    def evaluate_once(model, *args, **kwargs):
        if model == second:
            raise RuntimeError("the machine went down")
        return EvalResult(model, {"AP": 12.5}, 3, 3, 1.5, "cpu", 1, (), tmp_path / "m.json")

    monkeypatch.setattr(reproduce_module, "evaluate", evaluate_once)
    with pytest.raises(RuntimeError, match="went down"):
        reproduce_module.reproduce(None, [first, second], tmp_path, {first: "a.pth", second: "b.pth"})
    (row,) = json.loads((tmp_path / "reproduce.json").read_text())
    assert row["variant"] == first and row["measured_map"] == 12.5
    assert first in (tmp_path / "reproduce.md").read_text()


# Item 7: one line per error at the command-line edge ---------------------------------------------

@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hardening")
    write_coco(root / "coco", SIZES[:2])
    return root / "coco"


def _no_model(*args, **kwargs):
    raise AssertionError("the model was built before the output folder was checked")


@pytest.mark.parametrize("case", ["output_is_a_file", "output_cannot_be_made", "truncated_safetensors",
                                  "offline_without_weights", "decompression_bomb"])
def test_cli_errors_are_one_line(case, coco, weights, tmp_path, monkeypatch, capsys):
    import PIL.Image

    import dyhead_zoo.registry
    import dyhead_zoo.weights.fetch

    output, expected = tmp_path / "out", ""
    argv = eval_argv(coco, weights, output)
    if case == "output_is_a_file":
        output.write_text("results")
        monkeypatch.setattr(dyhead_zoo.registry, "create_model", _no_model)
        expected = "is a file, not a folder"
    elif case == "output_cannot_be_made":
        (tmp_path / "file").write_text("")
        argv = eval_argv(coco, weights, tmp_path / "file" / "out")
        monkeypatch.setattr(dyhead_zoo.registry, "create_model", _no_model)
        expected = "cannot be written"
    elif case == "truncated_safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "model.safetensors"
        save_file({"x": torch.zeros(1000)}, str(path))
        path.write_bytes(path.read_bytes()[:-100])
        argv = eval_argv(coco, path, output)
        expected = "not a readable .safetensors file"
    elif case == "offline_without_weights":
        def offline(config, progress=True):
            raise WeightsDownloadError(f"could not get the weights of {config.name}:\n  - no network",
                                       reason="no network")

        monkeypatch.setattr(dyhead_zoo.weights.fetch, "download_weights", offline)
        argv = [a for a in argv if a not in ("--weights", str(weights))]
        expected = f"could not get the weights of {NAME}"
    elif case == "decompression_bomb":
        monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
        expected = "000000000100.jpg: the image is too large to decode safely"
    assert cli.main(argv) == 2
    assert expected in one_line_error(capsys)


def test_debug_shows_the_traceback(coco, weights, tmp_path, capsys):
    (tmp_path / "out").write_text("")
    assert cli.main(["--debug", *eval_argv(coco, weights, tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("dyhead-zoo: error: ")
    assert cli.main([*eval_argv(coco, weights, tmp_path / "out"), "--debug"]) == 2  # after the command too
    assert "Traceback" in capsys.readouterr().err


# Items 9 and 10: a truncated image mid-run; published values only where they apply --------------

def test_bad_image_is_skipped_and_reported_and_no_published_comparison(tmp_path, weights, capsys):
    images_dir, annotations = write_coco(tmp_path / "coco", SIZES[:2])
    bad = images_dir / "000000000107.jpg"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # the header is intact: the pre-check passes
    argv = eval_argv(tmp_path / "coco", weights, tmp_path / "out", "--workers", "1")
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "1 of 2 images could not be decoded" in captured.err and str(bad) in captured.err
    assert "published mAP 42.4" not in captured.out and "not comparable with the published mAP" in captured.out
    (metrics,) = (tmp_path / "out").glob("*.metrics.json")
    assert len(json.loads(metrics.read_text())["skipped_images"]) == 1

    gt = json.loads(annotations.read_text())
    annotations.write_text(json.dumps(dict(gt, annotations=[])))
    assert cli.main(argv) == 0  # the detections are reused: the ground truth is not in the key
    out = capsys.readouterr().out
    assert "no ground truth" in out and "-1.000" not in out

    coco_val = argparse.Namespace(min_size=None, max_size=None)
    data = argparse.Namespace(annotations=Path("x/annotations/instances_val2017.json"))
    assert evaluate_command._comparable_with_published(coco_val, data, 5000)
    assert not evaluate_command._comparable_with_published(coco_val, data, 500)
    assert not evaluate_command._comparable_with_published(argparse.Namespace(min_size=600, max_size=None), data, 5000)


# Item 14: resume key, lock, negative boxes, devices, --version -----------------------------------

def test_resume_key_follows_file_names_and_contents_not_folders(model, tmp_path):
    first = evaluate(model, load_coco(*write_coco(tmp_path / "coco", SIZES[:2])), tmp_path / "out", progress=False)
    assert first.computed_images == 2
    shutil.move(tmp_path / "coco", tmp_path / "moved")
    images_dir, annotations = tmp_path / "moved" / "val2017", tmp_path / "moved/annotations/instances_val2017.json"
    moved = evaluate(model, load_coco(images_dir, annotations), tmp_path / "out", progress=False)
    assert moved.computed_images == 0 and moved.metrics == first.metrics
    Image.fromarray(np.zeros((SIZES[0][0], SIZES[0][1], 3), np.uint8)).save(images_dir / "000000000100.jpg")
    changed = evaluate(model, load_coco(images_dir, annotations), tmp_path / "out", progress=False)
    assert changed.computed_images == 2


def test_a_second_evaluation_into_the_same_folder_says_so(model, weights, tmp_path, capsys):
    data = load_coco(*write_coco(tmp_path / "coco", SIZES[:1]))
    out = tmp_path / "out"
    out.mkdir()
    lock = out / f"{NAME}-{run_key(run_settings(model, data))}.rank0.lock"
    with lock.open("a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as another process's evaluation would
        with pytest.raises(EvaluationLockedError, match="another evaluation"):
            evaluate(model, data, out, progress=False)
        assert cli.main(eval_argv(tmp_path / "coco", weights, out)) == 2
        assert "another evaluation" in one_line_error(capsys)
    assert evaluate(model, data, out, progress=False).computed_images == 1  # released: it runs


def test_negative_size_ground_truth_boxes_warn_with_a_count(tmp_path):
    images_dir, annotations = write_coco(tmp_path, SIZES[:2])
    gt = json.loads(annotations.read_text())
    gt["annotations"][0]["bbox"][2] = -5.0
    gt["annotations"][3]["bbox"][3] = -1.0
    annotations.write_text(json.dumps(gt))
    with pytest.warns(UserWarning, match="2 of 6 ground-truth boxes have a negative width or height"):
        load_coco(images_dir, annotations)


def test_device_takes_any_torch_device_and_version_is_printed(capsys):
    parser = cli.build_parser()
    for device in ("cuda:1", "mps", "cpu"):
        assert parser.parse_args(["eval", "--model", NAME, "--device", device]).device == device
    assert distributed.resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="not a torch device"):
        distributed.resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda:1: no CUDA device"):
            distributed.resolve_device("cuda:1")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"dyhead-zoo {dyhead_zoo.__version__}"
