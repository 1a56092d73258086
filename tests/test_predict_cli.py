"""``dyhead-zoo predict`` and ``dyhead-zoo export`` end to end (small random-weight models)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import load_case, parity_cases, random_model
from PIL import Image

import dyhead_zoo
import dyhead_zoo.registry
from dyhead_zoo.cli import main as cli
from dyhead_zoo.cli.predict_files import find_images, sample_image


@pytest.fixture(scope="module")
def small_atss():
    config = dyhead_zoo.get_config("dyhead_r50_atss_fpn_1x")
    return random_model("dyhead_r50_atss_fpn_1x", input=dataclasses.replace(config.input, min_size=96, max_size=160))


@pytest.fixture
def fake_weights(monkeypatch, small_atss, tmp_path):
    """``create_model`` returns the small model; records what the command asked for."""
    calls = []

    def create_model(name, **kwargs):
        calls.append((name, kwargs))
        return small_atss

    monkeypatch.setattr(dyhead_zoo.registry, "create_model", create_model)
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"not read: create_model is replaced")
    return weights, calls


@pytest.fixture
def photos(tmp_path):
    """A folder with a photo, a rotated (EXIF) photo in a subfolder, a broken file and a text file."""
    image = load_case(parity_cases()[1][1])["image_rgb"]
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(image).resize((150, 100)).save(folder / "coffee.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 150x100, shown 100x150
    Image.fromarray(image).resize((150, 100)).save(folder / "sub" / "rotated.jpg", exif=exif, quality=95)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_find_images_expands_folders_recursively_and_globs(photos):
    found = find_images([str(photos), str(photos / "*.png"), str(photos / "missing.jpg")])
    names = [p.name for p in found.paths]
    assert names == ["broken.jpg", "coffee.png", "rotated.jpg"]  # the glob's coffee.png is not repeated
    assert found.unmatched == [str(photos / "missing.jpg")]


def test_predict_on_a_folder_writes_drawings_and_coco_json(photos, fake_weights, tmp_path, capsys):
    weights, calls = fake_weights
    out = tmp_path / "out"
    status = cli.main(["predict", str(photos), "--weights", str(weights), "--output", str(out),
                       "--score-threshold", "0.0", "--batch-size", "2"])
    printed = capsys.readouterr()
    assert status == 1  # one file could not be read
    assert calls[0][0] == "dyhead_r50_atss_fpn_1x" and calls[0][1]["weights"] == str(weights)
    assert "broken.jpg: skipped" in printed.out and "2 of 3 images done" in printed.out
    assert Image.open(out / "coffee.png").size == (150, 100)
    assert Image.open(out / "rotated.jpg").size == (100, 150)  # EXIF orientation applied
    records = json.loads((out / "predictions.json").read_text())
    by_file = {}
    for record in records:
        by_file.setdefault(record["file_name"], []).append(record)
    assert sorted(by_file) == [str(photos / "coffee.png"), str(photos / "sub" / "rotated.jpg")]
    expected = fake_weights_model_predict(photos / "coffee.png")
    coffee = by_file[str(photos / "coffee.png")]
    assert len(coffee) == len(expected) > 0
    assert {r["image_id"] for r in coffee} == {2}  # position in the sorted file list
    assert all(r["category_id"] in dyhead_zoo.COCO_CATEGORY_IDS for r in coffee)
    x1, y1, x2, y2 = expected.boxes[0].tolist()
    assert coffee[0]["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=1e-3)
    assert f"{len(expected)} in predictions.json" in printed.out


def fake_weights_model_predict(path):
    config = dyhead_zoo.get_config("dyhead_r50_atss_fpn_1x")
    model = random_model("dyhead_r50_atss_fpn_1x", input=dataclasses.replace(config.input, min_size=96, max_size=160))
    return model.predict(path)


def test_predict_classes_filter_the_json_and_the_threshold_only_the_drawing(photos, fake_weights, tmp_path):
    weights, _ = fake_weights
    out = tmp_path / "out"
    assert cli.main(["predict", str(photos / "coffee.png"), "--weights", str(weights), "--output", str(out),
                     "--score-threshold", "1.0"]) == 0
    everything = json.loads((out / "predictions.json").read_text())
    assert np.array_equal(np.asarray(Image.open(out / "coffee.png")), np.asarray(Image.open(photos / "coffee.png")))
    category = everything[0]["category_id"]
    name = dyhead_zoo.COCO_CLASS_NAMES[dyhead_zoo.COCO_CATEGORY_IDS.index(category)]
    assert cli.main(["predict", str(photos / "coffee.png"), "--weights", str(weights), "--output", str(out),
                     "--classes", name]) == 0
    only = json.loads((out / "predictions.json").read_text())
    assert only == [r for r in everything if r["category_id"] == category]


def test_predict_without_images_runs_on_the_packaged_sample(fake_weights, tmp_path, capsys):
    weights, _ = fake_weights
    assert sample_image().is_file() and sample_image().stat().st_size < 100_000
    assert cli.main(["predict", "--weights", str(weights), "--output", str(tmp_path)]) == 0
    assert Image.open(tmp_path / "astronaut.jpg").size == Image.open(sample_image()).size
    assert "astronaut.jpg" in capsys.readouterr().out


def test_predict_errors_name_the_problem(fake_weights, tmp_path, capsys):
    weights, _ = fake_weights
    assert cli.main(["predict", str(tmp_path / "nothing-here"), "--weights", str(weights)]) != 0
    assert "no image files found" in capsys.readouterr().err
    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    assert cli.main(["predict", str(tmp_path / "a.png"), "--weights", str(weights), "--classes", "unicorn",
                     "--output", str(tmp_path / "o")]) != 0
    assert "unknown class 'unicorn'" in capsys.readouterr().err


def test_export_command_writes_an_exported_program(monkeypatch, tmp_path, capsys):
    # One DyHead block keeps the trace short; the command and the file are what is tested here.
    config = dyhead_zoo.get_config("dyhead_r50_atss_fpn_1x")
    model = dyhead_zoo.create_model("dyhead_r50_atss_fpn_1x", config=dataclasses.replace(config, dyhead_num_blocks=1))
    monkeypatch.setattr(dyhead_zoo.registry, "create_model", lambda name, **kwargs: model)
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"not read: create_model is replaced")
    path = tmp_path / "atss.pt2"
    assert cli.main(["export", "--model", "dyhead_r50_atss_fpn_1x", "--weights", str(weights), "--format",
                     "exported-program", "--height", "128", "--width", "128", "--output", str(path)]) == 0
    program = torch.export.load(str(path))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert any("torchvision.deform_conv2d" in t for t in targets)
    assert cli.main(["export", "--model", "dyhead_r50_atss_fpn_1x", "--weights", str(weights),
                     "--height", "100", "--width", "128", "--output", str(path)]) != 0
    assert "multiples of" in capsys.readouterr().err



def test_predict_batch_size_sets_the_images_per_forward_pass(small_atss, tmp_path):
    from dyhead_zoo.cli.predict_files import predict_files

    paths = []
    for i in range(6):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((40, 48, 3), 40 * i, np.uint8)).save(paths[-1])
    batches = []
    hook = small_atss.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    try:
        predict_files(small_atss, paths, tmp_path / "out", batch_size=6)
    finally:
        hook.remove()
    assert batches == [6]  # one forward pass of six images, not the predict() default of four
