"""The trainer: official recipes, optimizer and schedule, fine-tuning, lossless resume, DDP, AMP."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import socket
from pathlib import Path

import pytest
import torch
from trainer_testing import (
    CLASS_NAMES,
    MODEL,
    distributed_worker,
    max_abs_diff,
    quick_train,
    read_weights,
    small_config,
    write_coco,
    write_start_weights,
)

import dyhead_zoo
from dyhead_zoo.engine.class_layers import load_for_classes
from dyhead_zoo.engine.metrics import read_metrics
from dyhead_zoo.engine.optimizer import build_optimizer, build_scheduler, parameter_groups
from dyhead_zoo.engine.recipe import get_recipe, run_recipe
from dyhead_zoo.engine.trainer import Trainer
from dyhead_zoo.weights.checkpoint import CheckpointMismatchError

DATA = Path(__file__).parent / "data" / "train_recipe"


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> tuple[Path, Path]:
    return write_coco(tmp_path_factory.mktemp("tiny_coco"))


@pytest.fixture(scope="module")
def start_weights(tmp_path_factory) -> Path:
    return write_start_weights(tmp_path_factory.mktemp("weights") / "start.safetensors")


@pytest.mark.parametrize("name", dyhead_zoo.list_models())
def test_recipe_and_optimizer_are_the_official_ones(name):
    official = json.loads((DATA / f"{name}.train_cfg.json").read_text())
    solver, inputs = official["SOLVER"], official["INPUT"]
    recipe = get_recipe(name)
    assert (recipe.base_lr, recipe.ims_per_batch, recipe.momentum, recipe.weight_decay) == (
        solver["BASE_LR"], solver["IMS_PER_BATCH"], solver["MOMENTUM"], solver["WEIGHT_DECAY"])
    assert (recipe.max_iter, list(recipe.steps), recipe.gamma) == (solver["MAX_ITER"], solver["STEPS"], solver["GAMMA"])
    assert (recipe.warmup_iters, recipe.warmup_factor) == (solver["WARMUP_ITERS"], solver["WARMUP_FACTOR"])
    assert list(recipe.min_size_train) == inputs["MIN_SIZE_TRAIN"] and recipe.max_size_train == inputs["MAX_SIZE_TRAIN"]
    assert recipe.horizontal_flip == (inputs["RANDOM_FLIP"] == "horizontal")
    assert recipe.aspect_ratio_grouping == official["DATALOADER"]["ASPECT_RATIO_GROUPING"]

    # train_net.build_optimizer: one group per parameter, "bias" in the name -> the bias settings.
    model = dyhead_zoo.create_model(name)
    built = official["optimizer_from_train_net_build_optimizer"]
    optimizer = build_optimizer(model, recipe)
    assert type(optimizer).__name__ == built["class"]
    groups = parameter_groups(model, recipe)
    assert sum(len(g["params"]) for g in groups) == built["num_param_groups"]
    assert sum(p.numel() for g in groups for p in g["params"]) == official["num_params_trainable"]
    bias = [n for g in groups if g["weight_decay"] == recipe.weight_decay_bias for n in g["param_names"]]
    if recipe.weight_decay != recipe.weight_decay_bias:  # Swin-T: 0.05 vs 1e-4
        assert len(bias) == built["num_bias_groups(name contains 'bias')"]
        assert all("bias" in n for n in bias)
    assert {g["lr"] for g in groups} == {float(built["distinct_group_lr"][0])}


def test_schedule_warmup_steps_and_linear_lr_scaling():
    recipe = run_recipe(MODEL, batch_size=4, max_iter=900)
    assert recipe.lr == pytest.approx(0.01 * 4 / 16)
    assert recipe.lr_steps() == (600, 800)  # official 60000, 80000 of 90000 -> 2/3 and 8/9
    assert "scaled linearly to 4" in recipe.describe()
    assert run_recipe(MODEL, batch_size=4, lr=0.5).lr == 0.5
    recipe = dataclasses.replace(recipe, warmup_iters=100)
    layer = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(layer, recipe)
    scheduler = build_scheduler(optimizer, recipe)
    seen = []
    for it in range(900):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
        if it == 450:
            saved = scheduler.state_dict()
    base = 0.0025
    assert seen[0] == pytest.approx(base * 0.001)
    assert seen[50] == pytest.approx(base * (0.001 * 0.5 + 0.5))
    assert seen[100] == pytest.approx(base) and seen[599] == pytest.approx(base)
    assert seen[600] == pytest.approx(base * 0.1) and seen[799] == pytest.approx(base * 0.1)
    assert seen[800] == pytest.approx(base * 0.01) and seen[899] == pytest.approx(base * 0.01)
    restored = build_scheduler(build_optimizer(layer, recipe), recipe)
    restored.load_state_dict(saved)
    assert restored.get_last_lr()[0] == pytest.approx(seen[451])
    with pytest.raises(ValueError, match="batch-size"):
        run_recipe(MODEL, batch_size=0)


def test_new_classes_reinitialise_only_the_class_layers(start_weights):
    from safetensors.torch import load_file

    state = load_file(str(start_weights))
    config = dataclasses.replace(small_config(), num_classes=2, class_names=CLASS_NAMES)
    model = dyhead_zoo.create_model(MODEL, config=config)
    names = load_for_classes(model, state, dyhead_zoo.get_config(MODEL).class_names)
    assert names == ["head.cls_logits"]
    loaded = model.state_dict()
    assert loaded["head.cls_logits.weight"].shape[0] == 2
    assert torch.allclose(loaded["head.cls_logits.bias"], torch.full((2,), -math.log(99.0)))
    assert 0.003 < float(loaded["head.cls_logits.weight"].std()) < 0.03
    for key, value in state.items():
        if not key.startswith("head.cls_logits."):
            assert torch.equal(loaded[key], value), key
    same = dyhead_zoo.create_model(MODEL, config=small_config())
    assert load_for_classes(same, state, dyhead_zoo.get_config(MODEL).class_names) == []
    assert torch.equal(same.state_dict()["head.cls_logits.weight"], state["head.cls_logits.weight"])
    with pytest.raises(CheckpointMismatchError, match="unexpected keys"):
        load_for_classes(model, {**state, "head.extra": torch.zeros(1)}, None)
    with pytest.raises(ValueError, match="num_classes is 2 but 80 class_names"):
        dataclasses.replace(small_config(), num_classes=2)


def test_faster_rcnn_class_layers_follow_detectron2():
    from dyhead_zoo.engine.class_layers import class_layers, init_class_layers

    model = dyhead_zoo.create_model("dyhead_r50_rcnn_fpn_1x")
    assert init_class_layers(model) == ["roi_heads.box_predictor.cls_score", "roi_heads.box_predictor.bbox_pred"]
    predictor = model.roi_heads.box_predictor
    assert not predictor.cls_score.bias.detach().any() and not predictor.bbox_pred.bias.detach().any()
    assert float(predictor.bbox_pred.weight.detach().std()) == pytest.approx(0.001, rel=0.05)
    assert set(class_layers(dyhead_zoo.create_model("dyhead_r50_retina_fpn_1x"))) == {"head.cls_score"}


def _interrupt_after(iteration: int, monkeypatch) -> None:
    """Send this process SIGINT (Ctrl-C) inside training step ``iteration`` (1-based)."""
    step = Trainer.step

    def step_then_interrupt(self, *args):
        values = step(self, *args)
        if self.iteration + 1 == iteration:
            os.kill(os.getpid(), signal.SIGINT)
        return values

    monkeypatch.setattr(Trainer, "step", step_then_interrupt)


def test_interrupted_and_resumed_run_equals_straight_run(tiny_set, start_weights, tmp_path, monkeypatch):
    threads_before = torch.get_num_threads()
    straight = quick_train(tiny_set, tmp_path / "straight", start_weights, max_iter=6, deterministic=True)
    assert straight.iterations == 6

    _interrupt_after(3, monkeypatch)
    with pytest.raises(KeyboardInterrupt, match="stopped at iteration 3"):
        quick_train(tiny_set, tmp_path / "resumed", start_weights, max_iter=6, deterministic=True)
    monkeypatch.undo()
    assert (tmp_path / "resumed" / "last_checkpoint").read_text().strip() == "checkpoints/iter_0000003"
    assert not (tmp_path / "resumed" / "model_final").exists()
    with pytest.raises(ValueError, match="--resume"):
        quick_train(tiny_set, tmp_path / "resumed", start_weights, max_iter=6, deterministic=True)
    resumed = quick_train(tiny_set, tmp_path / "resumed", start_weights, max_iter=6, resume=True, deterministic=True)
    assert resumed.iterations == 6

    diff = max_abs_diff(read_weights(straight.final_model), read_weights(resumed.final_model))
    print(f"6 straight vs 3 + resume + 3: max abs weight difference {diff:.3g}")
    assert diff == 0.0  # same batches, same float32 operations in the same order (one thread)
    assert torch.get_num_threads() == threads_before  # the deterministic run gave its threads back
    before = read_weights(straight.final_model.parent / "checkpoints" / "iter_0000006")
    assert max_abs_diff(before, read_weights(straight.final_model)) == 0.0

    records = [r for r in read_metrics(tmp_path / "resumed") if "total_loss" in r]
    assert [r["iteration"] for r in records] == [1, 2, 3, 4, 5, 6]
    straight_losses = [r["total_loss"] for r in read_metrics(tmp_path / "straight") if "total_loss" in r]
    assert [r["total_loss"] for r in records] == straight_losses
    assert all(r["lr"] > 0 and r["images_per_second"] > 0 for r in records)

    model = dyhead_zoo.DyHeadDetector.from_pretrained(str(resumed.final_model))
    assert model.class_names == CLASS_NAMES and model.config.num_classes == 2
    assert "red box" in (resumed.final_model / "README.md").read_text()


def test_two_processes_of_batch_one_equal_one_process_of_batch_two(tiny_set, start_weights, tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(distributed_worker, args=(2, port, tiny_set, tmp_path / "two", start_weights, 3), nprocs=2)
    one = quick_train(tiny_set, tmp_path / "one", start_weights, max_iter=3, batch_size=2, checkpoint_period=0)
    two = read_weights(tmp_path / "two" / "model_final")
    diff = max_abs_diff(read_weights(one.final_model), two)
    print(f"2 gloo processes x batch 1 vs 1 process x batch 2, 3 iterations: max abs weight difference {diff:.3g}")
    # Only the order of float32 sums differs (gradient all-reduce, per-process loss terms).
    assert diff < 1e-5
    moved = max_abs_diff(read_weights(one.final_model), read_weights(tmp_path / "one" / "checkpoints" / "iter_0000003"))
    assert moved == 0.0


def test_evaluation_keeps_the_best_model_and_new_class_names(tiny_set, start_weights, tmp_path):
    images_dir, annotations = tiny_set
    result = quick_train(tiny_set, tmp_path / "run", start_weights, max_iter=2, eval_period=1,
                         val_images=images_dir, val_annotations=annotations)
    evals = [r for r in read_metrics(tmp_path / "run") if "eval" in r]
    assert [r["iteration"] for r in evals] == [1, 2]
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    assert best["value"] == max(r["eval"]["AP"] for r in evals) == result.best_metric
    model = dyhead_zoo.DyHeadDetector.from_pretrained(str(tmp_path / "run" / "model_best"))
    detections = model.predict(str(images_dir / "0.png"))
    assert set(detections.label_names) <= set(CLASS_NAMES)
    config = json.loads((tmp_path / "run" / "model_final" / "config.json").read_text())
    assert config["class_names"] == list(CLASS_NAMES) and "category_ids" not in config

    # `dyhead-zoo eval --weights OUTPUT/model_final` scores the fine-tuned classes against the file's ids.
    from dyhead_zoo.cli.main import main

    assert main(["eval", "--model", MODEL, "--images", str(images_dir), "--annotations", str(annotations),
                 "--weights", str(tmp_path / "run" / "model_final"), "--device", "cpu", "--workers", "0",
                 "--min-size", "64", "--max-size", "128", "--output-dir", str(tmp_path / "eval"),
                 "--no-progress"]) == 0
    metrics = json.loads(next((tmp_path / "eval").glob("*.metrics.json")).read_text())["metrics_percent"]
    assert metrics["AP"] == pytest.approx(result.metrics["AP"])
    hub_model = torch.hub.load(str(Path(__file__).resolve().parent.parent), MODEL, source="local",
                               weights=str(tmp_path / "run" / "model_final"))
    assert hub_model.class_names == CLASS_NAMES


def test_bf16_autocast_step_on_cpu(tiny_set):
    from dyhead_zoo.data.augmentation import TrainAugmentation
    from dyhead_zoo.data.train_dataset import load_train_dataset
    from dyhead_zoo.data.train_loader import build_train_loader

    dataset = load_train_dataset(*tiny_set)
    config = dataclasses.replace(small_config(), num_classes=2, class_names=dataset.class_names)
    model = dyhead_zoo.create_model(MODEL, config=config)
    loader = build_train_loader(dataset, config.input, TrainAugmentation((64,), 128), 1)
    recipe = run_recipe(MODEL, batch_size=1, max_iter=1, warmup_iters=0)
    before = model.head.cls_logits.weight.detach().clone()
    trainer = Trainer(model, recipe, loader, "unused", amp="bf16", progress=False)
    values = trainer.step(*trainer._to_device(next(iter(loader))))
    assert all(math.isfinite(v) for v in values.values())
    assert model.head.cls_logits.weight.dtype == torch.float32
    assert not torch.equal(model.head.cls_logits.weight, before)
    with pytest.raises(ValueError, match="fp16 needs a CUDA"):
        Trainer(model, recipe, loader, "unused", amp="fp16")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_with_gradient_scaler_on_cuda(tiny_set, start_weights, tmp_path):
    result = quick_train(tiny_set, tmp_path / "fp16", start_weights, max_iter=2, device="cuda", amp="fp16")
    assert result.iterations == 2
    assert all(math.isfinite(r["total_loss"]) for r in read_metrics(tmp_path / "fp16") if "total_loss" in r)


def _cli(*args: str) -> int:
    from dyhead_zoo.cli.main import main

    return main(["train", "--model", MODEL, *args])


def test_bad_inputs_fail_before_training(tiny_set, start_weights, tmp_path, capsys):
    images_dir, annotations = tiny_set
    base = ["--train-images", str(images_dir), "--train-annotations", str(annotations), "--device", "cpu",
            "--output-dir", str(tmp_path / "out")]
    assert _cli(*base, "--weights", str(tmp_path / "missing.pth")) == 2
    assert "no such file" in capsys.readouterr().err
    assert _cli(*base, "--weights", str(start_weights), "--amp", "fp16") == 2
    assert "fp16 needs a CUDA" in capsys.readouterr().err
    assert _cli(*base, "--weights", str(start_weights), "--val-images", str(images_dir)) == 2
    assert "--val-annotations" in capsys.readouterr().err
    assert _cli(*base, "--weights", str(start_weights), "--batch-size", "0") == 2
    assert "at least 1" in capsys.readouterr().err

    broken = json.loads(annotations.read_text())
    broken["images"].append({"id": 99, "file_name": "gone.png", "height": 64, "width": 64})
    broken["annotations"].append({"id": 99, "image_id": 99, "category_id": 3, "bbox": [1, 1, 10, 10], "area": 100})
    bad_file = tmp_path / "missing_image.json"
    bad_file.write_text(json.dumps(broken))
    args = ["--train-images", str(images_dir), "--train-annotations", str(bad_file), "--device", "cpu",
            "--output-dir", str(tmp_path / "out"), "--weights", str(start_weights)]
    assert _cli(*args) == 2
    assert "missing" in capsys.readouterr().err
    broken["images"].pop()
    broken["annotations"][-1]["image_id"] = 1
    broken["annotations"][-1]["category_id"] = 12345
    bad_file.write_text(json.dumps(broken))
    assert _cli(*args) == 2
    assert "12345" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _cli(*base, "--weights", str(start_weights), "--pretrained")
    assert not (tmp_path / "out").exists()  # nothing was trained or written


def test_from_scratch_starts_from_the_imagenet_backbone(tmp_path, monkeypatch):
    from test_imagenet_converters import msra_resnet50_blobs, py2_pickle

    from dyhead_zoo.engine.training import _start_weights
    from dyhead_zoo.weights import imagenet as imagenet_backbones

    served = tmp_path / "server" / "R-50.pkl"
    served.parent.mkdir()
    served.write_bytes(py2_pickle(msra_resnet50_blobs(3)))
    monkeypatch.setitem(imagenet_backbones.IMAGENET_WEIGHTS, "resnet50", imagenet_backbones.ImageNetWeights(
        "resnet50", "detectron2's MSRA ResNet-50", served.as_uri()))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    config = dataclasses.replace(small_config(), num_classes=2, class_names=CLASS_NAMES)
    model = dyhead_zoo.create_model(MODEL, config=config)
    line = _start_weights(model, "from_scratch", None)
    assert "ImageNet" in line
    stem = model.backbone.backbone.bottom_up.stem.conv1.weight
    assert torch.equal(stem, torch.from_numpy(msra_resnet50_blobs(3)["conv1_w"]))
    assert torch.allclose(model.head.cls_logits.bias, torch.full((2,), -math.log(99.0)))
    assert not model.backbone.backbone.fpn_lateral3.bias.detach().any()  # c2_xavier_fill: bias 0
    attention = model.backbone.dyhead_tower[0].AttnConv[1].weight
    assert float(attention.detach().std()) == pytest.approx(0.01, rel=0.2)
