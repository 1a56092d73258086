"""Training checkpoints that survive a crash: one folder per checkpoint, written atomically.

``OUTPUT/checkpoints/iter_0000300/`` holds ``model.safetensors`` + ``config.json`` + ``README.md``
(a folder ``DyHeadDetector.from_pretrained`` loads) and ``training_state.pth`` (optimizer,
scheduler, gradient scaler, every process's RNG states, the data position, the iteration and
non-tensor model state such as RetinaNet's running loss normaliser). Each folder is written
under a temporary name and renamed when complete; ``OUTPUT/last_checkpoint`` (replaced
atomically) names the newest one, so a run killed at any moment resumes from a whole checkpoint.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dyhead_zoo.weights import hub
from dyhead_zoo.weights.checkpoint import SAFETENSORS_NAME

CHECKPOINTS_DIR = "checkpoints"
LAST_CHECKPOINT = "last_checkpoint"
TRAINING_STATE = "training_state.pth"
FINAL_MODEL = "model_final"
BEST_MODEL = "model_best"


def checkpoint_name(iteration: int) -> str:
    """Folder name of the checkpoint taken after ``iteration`` completed iterations."""
    return f"iter_{iteration:07d}"


def rng_state() -> dict[str, Any]:
    """This process's RNG states (torch CPU and CUDA, Python, NumPy) as torch.load-safe values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _replace_dir(tmp: Path, final: Path) -> None:
    # A directory cannot be renamed over a non-empty one: move the old one aside first.
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def write_model_folder(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``README.md`` of ``model`` into
    ``directory`` atomically (complete or absent, never half-written). Returns the folder."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    hub.save_folder(model.state_dict(), model.config, tmp)
    _replace_dir(tmp, directory)
    return directory


def save_checkpoint(output_dir: str | os.PathLike, model: nn.Module, state: dict[str, Any], iteration: int,
                    keep: int = 2) -> Path:
    """Write checkpoint ``iter_<iteration>`` (model folder + ``training_state.pth`` holding
    ``state``), point ``last_checkpoint`` at it and delete all but the newest ``keep``
    checkpoints (0: keep all). Call on one process only. Returns the checkpoint folder."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(iteration)
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    hub.save_folder(model.state_dict(), model.config, tmp)
    torch.save(state, tmp / TRAINING_STATE)
    _replace_dir(tmp, final)
    pointer = Path(output_dir) / LAST_CHECKPOINT
    pointer_tmp = pointer.with_name(f".{pointer.name}.tmp-{os.getpid()}")
    pointer_tmp.write_text(f"{CHECKPOINTS_DIR}/{final.name}\n")
    os.replace(pointer_tmp, pointer)
    if keep > 0:
        for old in sorted(root.glob("iter_*"))[:-keep]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    return final


def last_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder under ``output_dir``, or ``None`` when there is none."""
    output_dir = Path(output_dir)
    pointer = output_dir / LAST_CHECKPOINT
    if pointer.is_file():
        folder = output_dir / pointer.read_text().strip()
        if (folder / TRAINING_STATE).is_file() and (folder / SAFETENSORS_NAME).is_file():
            return folder
    complete = [p for p in sorted((output_dir / CHECKPOINTS_DIR).glob("iter_*"))
                if (p / TRAINING_STATE).is_file() and (p / SAFETENSORS_NAME).is_file()]
    return complete[-1] if complete else None


def load_training_state(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``training_state.pth`` of a checkpoint folder (read with ``weights_only=True``)."""
    return torch.load(Path(folder) / TRAINING_STATE, map_location="cpu", weights_only=True)
