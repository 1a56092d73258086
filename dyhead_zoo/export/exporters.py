"""Writing a detector as ONNX (dynamo exporter, opset 19, standard ``DeformConv``) or as a
``torch.export`` ExportedProgram (keeping ``torchvision::deform_conv2d``)."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Literal

import torch
from torch import nn

from dyhead_zoo.data.preprocess import padded_shape
from dyhead_zoo.export.network import ExportableNetwork, input_names, output_names
from dyhead_zoo.ops.deform_conv import ENV_VAR

ONNX_OPSET = 19  # the first opset with the standard DeformConv op
Format = Literal["onnx", "exported-program"]


@contextlib.contextmanager
def torchvision_deform_conv() -> Iterator[None]:
    """Trace the deformable convs as ``torchvision::deform_conv2d``: the op both exporters know
    (ONNX ``DeformConv``), instead of the fast CPU/CUDA backends that eager runs choose."""
    previous = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = "torchvision"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = previous


def example_inputs(model: nn.Module, height: int, width: int, batch_size: int = 1) -> tuple[torch.Tensor, ...]:
    """Inputs to trace ``model``'s :class:`ExportableNetwork` with: a zero (N, 3, H, W) batch and,
    for Faster R-CNN, the (N, 2) int64 image sizes (the full padded size)."""
    d = model.config.input.size_divisibility
    if height < d or width < d or height % d or width % d:
        raise ValueError(f"--height/--width must be positive multiples of {model.config.name}'s size "
                         f"divisibility {d}, got {height}x{width}; e.g. {padded_shape(max(height, 1), max(width, 1), d)}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    device = next(model.parameters()).device
    images = torch.zeros(batch_size, 3, height, width, device=device)
    if model.config.meta_architecture == "GeneralizedRCNN":
        return images, torch.tensor([[height, width]] * batch_size, device=device)
    return (images,)


def _dynamic_shapes(model: nn.Module, dynamic: bool):
    if not dynamic:
        return None
    if model.config.meta_architecture == "GeneralizedRCNN":
        raise ValueError("--dynamic is available for the one-stage variants (ATSS, RetinaNet); Faster R-CNN's "
                         "in-graph proposal top-k fixes the input size: export it at the size you need")
    d = model.config.input.size_divisibility
    Dim = torch.export.Dim
    return ({0: Dim("batch", min=1, max=64), 2: d * Dim("height_blocks", min=2, max=4096 // d),
             3: d * Dim("width_blocks", min=2, max=4096 // d)},)


def export_program(model: nn.Module, height: int, width: int, batch_size: int = 1,
                   dynamic: bool = False) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model``'s :class:`ExportableNetwork` (float32, eval mode) at the padded
    input size ``height`` x ``width`` (or dynamic sizes, multiples of the size divisibility)."""
    network = ExportableNetwork(model.eval().float())
    if dynamic:  # sizes of 1 (batch, blocks of the divisibility) would be specialised as constants
        d = model.config.input.size_divisibility
        height, width, batch_size = max(height, 2 * d), max(width, 2 * d), max(batch_size, 2)
    inputs = example_inputs(model, height, width, batch_size)
    # Traced with autograd on: the eager no-grad fast paths (folded and fused convs, oneDNN
    # kernels) are not exportable ops; the plain path computes the same numbers.
    with torchvision_deform_conv(), torch.enable_grad():
        return torch.export.export(network, inputs, dynamic_shapes=_dynamic_shapes(model, dynamic))


def export_onnx(model: nn.Module, path: str | os.PathLike, height: int, width: int, batch_size: int = 1,
                dynamic: bool = False, program: torch.export.ExportedProgram | None = None) -> Path:
    """Write ``model``'s :class:`ExportableNetwork` to ``path`` as ONNX (opset 19, the deformable convs
    as ``DeformConv``), inputs and outputs named as :func:`input_names` / :func:`output_names`.
    ``program`` reuses an :func:`export_program` result of the same settings."""
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter's op library)
    except ModuleNotFoundError as err:
        raise ValueError("ONNX export needs the export extra: pip install 'dyhead-zoo[export]' "
                         "(onnx, onnxscript, onnxruntime)") from err
    program = program or export_program(model, height, width, batch_size, dynamic)
    onnx_program = torch.onnx.export(program, dynamo=True, opset_version=ONNX_OPSET, input_names=input_names(model),
                                     output_names=output_names(model), verbose=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_program.save(str(path))
    return path


def export_model(model: nn.Module, path: str | os.PathLike, format: Format = "onnx", height: int | None = None,
                 width: int | None = None, batch_size: int = 1, dynamic: bool = False) -> Path:
    """Export ``model`` to ``path`` as ``"onnx"`` or ``"exported-program"`` (``torch.export.save``).

    The default size is the padded batch of an 800x1333 image (the test size), e.g. 896x1408
    for a size divisibility of 128. Returns the path written.
    """
    default_h, default_w = padded_shape(model.config.input.min_size, model.config.input.max_size,
                                        model.config.input.size_divisibility)
    height, width = height or default_h, width or default_w
    if format == "onnx":
        return export_onnx(model, path, height, width, batch_size, dynamic)
    if format == "exported-program":
        program = export_program(model, height, width, batch_size, dynamic)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.export.save(program, str(path))
        return path
    raise ValueError(f"unknown export format {format!r}; choose 'onnx' or 'exported-program'")
