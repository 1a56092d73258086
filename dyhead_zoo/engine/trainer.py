"""The training loop: one optimizer step per batch, checkpoints, metrics, evaluation, Ctrl-C.

:class:`Trainer` takes a built model, its :class:`~dyhead_zoo.engine.recipe.TrainRecipe` and a
resumable loader of ``(images, image_sizes, targets)`` batches (this process's share of each
global batch, see :func:`dyhead_zoo.data.train_loader.build_train_loader`). Under ``torchrun``
the model is wrapped in DistributedDataParallel, which averages the gradients of the ranks.
"""
from __future__ import annotations

import dataclasses
import json
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn

from dyhead_zoo.distributed import Distributed
from dyhead_zoo.engine.amp import autocast, check_amp, grad_scaler
from dyhead_zoo.engine.metrics import MetricsLog
from dyhead_zoo.engine.optimizer import build_optimizer, build_scheduler
from dyhead_zoo.engine.recipe import TrainRecipe
from dyhead_zoo.engine.snapshots import (
    BEST_MODEL,
    FINAL_MODEL,
    last_checkpoint,
    load_training_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_model_folder,
)

BEST_FILE = "best.json"
EVAL_METRIC = "AP"


class ResumableLoader(Protocol):
    """What the trainer needs from a data loader: endless batches and a data position."""

    def __iter__(self) -> Iterator[tuple[Tensor, list[tuple[int, int]], list[dict[str, Tensor]]]]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class TrainResult:
    """The outcome of :meth:`Trainer.train`: iterations done, the final model folder
    (``from_pretrained``-loadable), the last checkpoint, the last evaluation's COCO metrics
    (percent, rank 0 only; empty without validation data) and the best one's."""

    iterations: int
    final_model: Path
    last_checkpoint: Path
    metrics: dict[str, float]
    best_metric: float | None


class _StopRequest:
    """First SIGINT/SIGTERM: ask the loop to checkpoint and stop; a second SIGINT: stop now."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print("\ndyhead-zoo train: stopping after this iteration and writing a checkpoint "
              "(Ctrl-C again to stop at once, without one)", file=sys.stderr)

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class Trainer:
    """Trains ``model`` (a :class:`~dyhead_zoo.models.detector.DyHeadDetector`) with ``recipe``.

    ``loader`` yields this process's batches; ``output_dir`` receives checkpoints,
    ``metrics.jsonl``, ``model_final/`` and (with ``val_data``) evaluations and
    ``model_best/``. ``device``: where to train; ``amp``: ``None`` (float32), ``"bf16"`` or
    ``"fp16"`` (CUDA); ``checkpoint_period``: iterations between checkpoints (default the
    recipe's; one is always written at the end); ``eval_period``: iterations between COCO
    evaluations on ``val_data`` (a :class:`~dyhead_zoo.data.coco_data.CocoData`; 0: at the
    end only); ``group``: this process's place in a ``torchrun`` run (see
    :func:`dyhead_zoo.evaluation.evaluate.distributed`).
    """

    def __init__(self, model: nn.Module, recipe: TrainRecipe, loader: ResumableLoader,
                 output_dir: str | Path, *, device: str | torch.device = "cpu", amp: str | None = None,
                 checkpoint_period: int | None = None, eval_period: int = 0, val_data: Any = None,
                 eval_batch_size: int = 1, log_period: int = 20, progress: bool = True,
                 keep_checkpoints: int = 2, group: Distributed | None = None) -> None:
        self.device = torch.device(device)
        check_amp(amp, self.device)
        self.group = group or Distributed()
        if recipe.images_per_iteration % self.group.world_size:
            raise ValueError(f"--batch-size {recipe.images_per_iteration} (images per iteration, all processes "
                             f"together) must be a multiple of the number of processes {self.group.world_size}")
        for name, value in (("checkpoint_period", checkpoint_period), ("eval_period", eval_period),
                            ("log_period", log_period)):
            if value is not None and value < 0:
                raise ValueError(f"{name} must be 0 or more iterations, got {value}")
        self.model = model.to(self.device).train()
        self.recipe = recipe
        self.loader = loader
        self.output_dir = Path(output_dir)
        self.amp = amp
        self.checkpoint_period = recipe.checkpoint_period if checkpoint_period is None else checkpoint_period
        self.eval_period = eval_period
        self.val_data = val_data
        self.eval_batch_size = eval_batch_size
        self.log_period = max(1, log_period)
        self.progress = progress
        self.keep_checkpoints = keep_checkpoints
        self.optimizer = build_optimizer(self.model, recipe)
        self.scheduler = build_scheduler(self.optimizer, recipe)
        self.scaler = grad_scaler(amp, self.device)
        self.iteration = 0
        self.best_metric: float | None = None
        self.last_metrics: dict[str, float] = {}
        self.is_main = self.group.rank == 0
        self.network = self._wrap(self.model)

    def _wrap(self, model: nn.Module) -> nn.Module:
        if self.group.world_size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None,
                                       broadcast_buffers=False)

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything besides the weights that a resumed run needs (see :meth:`load_state_dict`);
        collective under ``torchrun`` (gathers every rank's RNG states)."""
        extra = {}
        normalizer = getattr(getattr(self.model, "head", None), "loss_normalizer", None)
        if isinstance(normalizer, (int, float)):
            extra["head.loss_normalizer"] = float(normalizer)
        return {"iteration": self.iteration, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "data": self.loader.state_dict(), "rng": self.group.all_gather(rng_state()),
                "model_attributes": extra, "best_metric": self.best_metric,
                "recipe": dataclasses.asdict(self.recipe), "world_size": self.group.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (the weights are loaded separately)."""
        self.iteration = int(state["iteration"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.loader.load_state_dict(state["data"])
        rng = state["rng"]
        set_rng_state(rng[self.group.rank] if self.group.rank < len(rng) else rng[0])
        for name, value in state.get("model_attributes", {}).items():
            module_name, attribute = name.rsplit(".", 1)
            setattr(self.model.get_submodule(module_name), attribute, value)
        self.best_metric = state.get("best_metric")

    def resume(self) -> bool:
        """Load the newest checkpoint under ``output_dir`` (weights and training state); returns
        whether there was one."""
        from dyhead_zoo.weights.checkpoint import SAFETENSORS_NAME, load_checkpoint

        folder = last_checkpoint(self.output_dir)
        if folder is None:
            return False
        load_checkpoint(self.model, folder / SAFETENSORS_NAME)
        self.load_state_dict(load_training_state(folder))
        if self.is_main:
            print(f"resuming from {folder} (iteration {self.iteration} of {self.recipe.max_iter})", file=sys.stderr)
        return True

    def save_checkpoint(self) -> Path:
        """Write a checkpoint of the current iteration (collective; rank 0 writes)."""
        state = self.state_dict()
        folder = self.output_dir / "checkpoints"
        if self.is_main:
            folder = save_checkpoint(self.output_dir, self.model, state, self.iteration, self.keep_checkpoints)
        self._barrier()
        return folder

    def _barrier(self) -> None:
        if self.group.world_size > 1:
            dist.barrier(group=self.group.group)

    # ----------------------------------------------------------------------------- steps
    def _to_device(self, batch: tuple) -> tuple[Tensor, list[tuple[int, int]], list[dict[str, Tensor]]]:
        images, sizes, targets = batch
        images = images.to(self.device, non_blocking=True)
        targets = [{k: v.to(self.device, non_blocking=True) for k, v in t.items()} for t in targets]
        return images, [tuple(s) for s in sizes], targets

    def step(self, images: Tensor, image_sizes: list[tuple[int, int]], targets: list[dict[str, Tensor]]
             ) -> dict[str, float]:
        """One iteration: forward (under autocast), backward, optimizer and LR schedule step.
        Returns this process's loss values. Raises ``FloatingPointError`` on a non-finite loss."""
        with autocast(self.amp, self.device):
            losses = self.network(images, image_sizes, targets)
        total = sum(v.float() for v in losses.values())
        if not torch.isfinite(total):
            raise FloatingPointError(
                f"iteration {self.iteration + 1}: the loss is {float(total)} "
                f"({ {k: float(v) for k, v in losses.items()} }); lower the LR (--lr) or check the data")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            total.backward()
            self.optimizer.step()
        self.scheduler.step()
        values = {k: float(v.detach()) for k, v in losses.items()}
        values["total_loss"] = float(total.detach())
        return values

    def _mean_over_ranks(self, values: dict[str, float]) -> dict[str, float]:
        if self.group.world_size == 1:
            return values
        keys = sorted(values)
        tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64,
                              device=self.device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(tensor)
        return {k: float(v) / self.group.world_size for k, v in zip(keys, tensor.tolist())}

    def _any_rank(self, flag: bool) -> bool:
        if self.group.world_size == 1:
            return flag
        tensor = torch.tensor([int(flag)], device=self.device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(tensor)
        return bool(tensor.item())

    # ----------------------------------------------------------------------------- eval
    def evaluate(self) -> dict[str, float]:
        """COCO box metrics of the current weights on ``val_data`` (percent; empty dict on
        other ranks than 0). Keeps ``model_best/`` when AP improved."""
        from dyhead_zoo.evaluation.evaluate import evaluate

        self.model.eval()
        try:
            result = evaluate(self.model, self.val_data, self.output_dir / "eval",
                              batch_size=self.eval_batch_size, progress=False, group=self.group)
        finally:
            self.model.train()
        if result is None:
            return {}
        metrics = dict(result.metrics)
        self.last_metrics = metrics
        value = metrics[EVAL_METRIC]
        if self.best_metric is None or value > self.best_metric:
            self.best_metric = value
            write_model_folder(self.model, self.output_dir / BEST_MODEL)
            (self.output_dir / BEST_FILE).write_text(json.dumps(
                {"iteration": self.iteration, "metric": EVAL_METRIC, "value": value, "metrics": metrics}, indent=2))
        return metrics

    # ----------------------------------------------------------------------------- loop
    def train(self) -> TrainResult:
        """Run until ``recipe.max_iter`` iterations are done (from the resumed iteration).

        Ctrl-C (or SIGTERM) stops after the current iteration, writes a checkpoint and raises
        ``KeyboardInterrupt``; ``--resume`` continues from it.
        """
        from tqdm import tqdm

        recipe = self.recipe
        metrics_log = MetricsLog(self.output_dir) if self.is_main else None
        per_iteration = recipe.images_per_iteration
        if self.is_main:
            print(f"training {self.model.config.name}: {recipe.describe()}; {self.group.world_size} process"
                  f"{'es' if self.group.world_size > 1 else ''} on {self.device}"
                  f"{f', autocast {self.amp}' if self.amp else ''}", file=sys.stderr)
        bar = tqdm(total=recipe.max_iter, initial=self.iteration, unit="it", desc="train", file=sys.stderr,
                   disable=not (self.progress and self.is_main), dynamic_ncols=True)
        batches = iter(self.loader)
        window_start, window_iters, stopped = time.perf_counter(), 0, False
        checkpoint = self.output_dir / "checkpoints"
        try:
            with _StopRequest() as stop:
                while self.iteration < recipe.max_iter:
                    values = self.step(*self._to_device(next(batches)))
                    self.iteration += 1
                    window_iters += 1
                    bar.update(1)
                    it = self.iteration
                    last = it == recipe.max_iter
                    if it % self.log_period == 0 or last or it == 1:
                        elapsed = time.perf_counter() - window_start
                        values = self._mean_over_ranks(values)
                        speed = per_iteration * window_iters / elapsed if elapsed > 0 else 0.0
                        lr = self.optimizer.param_groups[0]["lr"] / self.optimizer.param_groups[0].get("lr_factor", 1)
                        if metrics_log is not None:
                            metrics_log.write(it, {**values, "lr": lr, "images_per_second": speed})
                        bar.set_postfix({**{k.removeprefix("loss_"): f"{v:.3f}" for k, v in values.items()},
                                         "lr": f"{lr:.2e}", "img/s": f"{speed:.2f}"}, refresh=False)
                        window_start, window_iters = time.perf_counter(), 0
                    if self._any_rank(stop.requested):
                        stopped = True
                        break
                    if not last and self.checkpoint_period and it % self.checkpoint_period == 0:
                        checkpoint = self.save_checkpoint()
                    if self.val_data is not None and self.eval_period and it % self.eval_period == 0 and not last:
                        self._log_eval(metrics_log, self.evaluate())
            if not stopped and self.val_data is not None:
                self._log_eval(metrics_log, self.evaluate())
            checkpoint = self.save_checkpoint()
            final = self.output_dir / FINAL_MODEL
            if self.is_main and not stopped:
                write_model_folder(self.model, final)
            self._barrier()
        finally:
            bar.close()
            if metrics_log is not None:
                metrics_log.close()
        if stopped:
            raise KeyboardInterrupt(f"stopped at iteration {self.iteration}; checkpoint {checkpoint}")
        return TrainResult(self.iteration, final, checkpoint, dict(self.last_metrics), self.best_metric)

    def _log_eval(self, metrics_log: MetricsLog | None, metrics: dict[str, float]) -> None:
        if metrics_log is not None and metrics:
            metrics_log.write(self.iteration, {"eval": metrics})
            print(f"iteration {self.iteration}: " + ", ".join(f"{k} {v:.2f}" for k, v in list(metrics.items())[:6]),
                  file=sys.stderr)

