"""Loading official or converted checkpoints strictly, with the mismatches named."""
from __future__ import annotations

import hashlib
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from dyhead_zoo.errors import CheckpointError

SAFETENSORS_NAME = "model.safetensors"


class CheckpointMismatchError(CheckpointError):
    """The checkpoint does not hold exactly the model's tensors."""


class UnsafeCheckpointError(CheckpointError):
    """The checkpoint can only be read by arbitrary unpickling, which the caller did not allow."""


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _numpy_safe_globals() -> list:
    # What a pickled numeric ndarray needs; numpy 1.x wrote "numpy.core.multiarray", numpy 2 "numpy._core".
    reconstruct, scalar = np.ndarray.__reduce__(np.zeros(0))[0], np.int64(0).__reduce__()[0]
    dtype_classes = {type(np.dtype(code)) for code in "?bhilqBHILQefdgFDG"}  # what unpickled dtypes are built as
    return [reconstruct, (reconstruct, "numpy.core.multiarray._reconstruct"), scalar,
            (scalar, "numpy.core.multiarray.scalar"), np.ndarray, np.dtype, *dtype_classes]


class _NumpyUnpickler(pickle.Unpickler):
    """Plain-pickle reader (detectron2 ``.pkl``) that resolves only what numpy arrays need."""

    _ALLOWED = {
        ("collections", "OrderedDict"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle protocol
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"Weights only load failed: Unsupported global: GLOBAL {module}.{name}")


def _load_object(path: Path, allow_unsafe_pickle: bool) -> object:
    if path.suffix == ".pkl":  # detectron2's own pickles: a plain pickle of numpy arrays
        with open(path, "rb") as f:
            if allow_unsafe_pickle:
                return pickle.load(f, encoding="latin1")
            return _NumpyUnpickler(f, encoding="latin1").load()
    if allow_unsafe_pickle:
        return torch.load(path, map_location="cpu", weights_only=False)
    with torch.serialization.safe_globals(_numpy_safe_globals()):
        return torch.load(path, map_location="cpu", weights_only=True)


def _unwrap(obj: object, source: str) -> Mapping[str, object]:
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]  # detectron2 checkpointer layout, possibly with iteration/optimizer/scheduler
    elif isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source}: expected a state_dict (a mapping of names to tensors), got {type(obj).__name__}")
    return obj


def read_state_dict(path: str | os.PathLike, allow_unsafe_pickle: bool = False) -> dict[str, Tensor]:
    """Read a checkpoint file into a flat ``{name: tensor}`` dict.

    ``.safetensors`` files are read directly (a folder means its ``model.safetensors``, as
    written by the converter or ``save_pretrained``); ``.pth`` files with
    ``torch.load(weights_only=True)`` and detectron2 ``.pkl`` files with an unpickler that
    resolves numpy arrays only. Files that need arbitrary unpickling are refused unless
    ``allow_unsafe_pickle=True`` (only for files you trust). Accepts detectron2's
    ``{"model": ...}`` layout (with or without iteration/optimizer/scheduler entries), bare
    state_dicts, ``module.`` prefixes, numpy arrays and any tensor dtype (values are returned as
    stored; :func:`load_checkpoint` casts them to the model's dtypes).
    """
    path = Path(path)
    if path.is_dir():
        path = path / SAFETENSORS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{path}: not a readable .safetensors file ({err}); it may be truncated by an "
                                  "interrupted download: fetch it again") from err
    try:
        obj = _load_object(path, allow_unsafe_pickle)
    except Exception as err:  # noqa: BLE001 - torch raises several types for the same cause
        message = str(err)
        if not allow_unsafe_pickle and re.search(r"Unsupported global|Can only build", message):
            found = re.search(r"GLOBAL (\S+)|but got <class '([^']+)'>", message)
            culprit = f" ({found.group(1) or found.group(2)})" if found else ""
            raise UnsafeCheckpointError(
                f"{path}: this checkpoint holds objects other than tensors and numpy arrays{culprit}, and "
                "reading them needs arbitrary unpickling, which can run code. If you trust the file, pass "
                "allow_unsafe_pickle=True (on the dyhead-zoo command line: --allow-unsafe-pickle), or convert it "
                "once with `dyhead-zoo convert NAME --checkpoint PATH --allow-unsafe-pickle` and load the "
                "resulting model.safetensors with weights=PATH") from err
        found = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\n\s*\n|$)", message, re.S)
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint "
                              f"({found.group(1) if found else message})") from err
    state = _unwrap(obj, str(path))
    out: dict[str, Tensor] = {}
    for name, value in state.items():
        if name.startswith("module."):
            name = name[len("module."):]
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, Tensor):
            raise ValueError(f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor")
        out[name] = value
    return out


TensorSpec = tuple[tuple[int, ...], torch.dtype]


def tensor_specs(state: Mapping[str, Tensor]) -> dict[str, TensorSpec]:
    """Name -> (shape, dtype) of every tensor of ``state``, in order."""
    return {k: (tuple(v.shape), v.dtype) for k, v in state.items()}


def dtype_kind(dtype: torch.dtype) -> str:
    """float, complex, bool or integer: what a value may not change into when it is loaded."""
    if dtype == torch.bool:
        return "bool"
    if dtype.is_complex:
        return "complex"
    return "float" if dtype.is_floating_point else "integer"


@dataclass
class Mismatches:
    """How a state_dict differs from the tensors a model expects; each list in the model's key order."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)  # key, got, model's
    kinds: list[tuple[str, torch.dtype, torch.dtype]] = field(default_factory=list)  # key, got, model's

    phrases: list[str] = field(default_factory=list)  # one per key above, in the model's key order

    def first(self) -> str:
        """The first difference as one phrase naming the key (unexpected keys last); "" when none."""
        if self.phrases:
            return self.phrases[0]
        return f"unexpected key {self.unexpected[0]}" if self.unexpected else ""


def find_mismatches(expected: Mapping[str, TensorSpec], state: Mapping[str, Tensor]) -> Mismatches:
    """Compare ``state`` with ``expected`` (see :func:`tensor_specs`): missing and unexpected keys,
    shapes, and dtype kinds (fp16 may stand for float32; an integer tensor may not)."""
    found = Mismatches()
    for key, (shape, dtype) in expected.items():
        if key not in state:
            found.missing.append(key)
            found.phrases.append(f"missing key {key}")
        elif tuple(state[key].shape) != tuple(shape):
            found.shapes.append((key, tuple(state[key].shape), tuple(shape)))
            found.phrases.append(f"{key}: shape {tuple(state[key].shape)}, the model has {tuple(shape)}")
        elif dtype_kind(state[key].dtype) != dtype_kind(dtype):
            found.kinds.append((key, state[key].dtype, dtype))
            found.phrases.append(f"{key}: dtype {state[key].dtype}, the model has {dtype}")
    found.unexpected = [k for k in state if k not in expected]
    return found


def check_state_dict(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Raise :class:`CheckpointMismatchError` naming missing, unexpected and mis-shaped keys."""
    found = find_mismatches(tensor_specs(model.state_dict()), state)
    shapes = [f"{k}: checkpoint {got} vs model {want}" for k, got, want in found.shapes]
    if found.missing or found.unexpected or shapes:
        def listing(title: str, items: list[str]) -> str:
            shown = "\n  ".join(items[:20]) + (f"\n  ... and {len(items) - 20} more" if len(items) > 20 else "")
            return f"{title} ({len(items)}):\n  {shown}\n" if items else ""

        raise CheckpointMismatchError(
            f"the checkpoint does not match {getattr(model, 'config', None) and model.config.name or 'the model'}:\n"
            + listing("missing keys", found.missing) + listing("unexpected keys", found.unexpected)
            + listing("shape mismatches", shapes)
            + "Check that the checkpoint is for this variant (see dyhead_zoo.list_models())."
        )


def check_values(model: nn.Module, state: Mapping[str, Tensor], allow_non_finite: bool = False) -> None:
    """Raise :class:`~dyhead_zoo.errors.CheckpointError` when a value cannot stand for the
    model's tensor: another kind of dtype (an int or bool tensor where the model has floats, or
    the reverse; casting would hide a wrong file) or, unless ``allow_non_finite``, NaN or Inf in
    a float tensor (the model would silently detect nothing). Names the offending tensors.
    Keys missing from ``state`` are left to :func:`check_state_dict`.
    """
    expected = model.state_dict()
    kinds = [f"{k}: checkpoint {got} vs model {want}"
             for k, got, want in find_mismatches(tensor_specs(expected), state).kinds]
    if kinds:
        shown = "\n  ".join(kinds[:10]) + (f"\n  ... and {len(kinds) - 10} more" if len(kinds) > 10 else "")
        raise CheckpointError(f"{len(kinds)} checkpoint tensors have another kind of dtype than the model's "
                              f"(casting them would hide a wrong or damaged file):\n  {shown}")
    if allow_non_finite:
        return
    for name in expected:
        value = state.get(name)
        if value is not None and value.dtype.is_floating_point and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(
                f"checkpoint tensor {name!r} holds {bad} NaN or infinite values of {value.numel()} (the first such "
                "tensor); the model would detect nothing. The file is damaged or came from a diverged training "
                "run; pass allow_non_finite=True to load it anyway")


def conform_state_dict(model: nn.Module, state: Mapping[str, Tensor],
                       allow_non_finite: bool = False) -> dict[str, Tensor]:
    """Check ``state`` strictly against ``model`` and cast each value to the model's dtype.

    Returns a new dict in the model's key order; fp16 and float64 values become the model's
    float32, exactly as ``load_state_dict`` would copy them. Raises
    :class:`CheckpointMismatchError` when keys or shapes differ and
    :class:`~dyhead_zoo.errors.CheckpointError` for dtypes of another kind or non-finite
    values (see :func:`check_values`).
    """
    check_state_dict(model, state)
    check_values(model, state, allow_non_finite)
    return {k: state[k].to(v.dtype) for k, v in model.state_dict().items()}


def load_checkpoint(model: nn.Module, path: str | os.PathLike, allow_unsafe_pickle: bool = False,
                    allow_non_finite: bool = False) -> None:
    """Load the checkpoint at ``path`` into ``model`` strictly (fp16 and numpy values are cast;
    int/bool values for float tensors, and NaN/Inf unless ``allow_non_finite``, are refused)."""
    state = read_state_dict(path, allow_unsafe_pickle)
    model.load_state_dict(conform_state_dict(model, state, allow_non_finite), strict=True)
