"""ONNX and torch.export: every variant exported at a small size runs in onnxruntime / PyTorch and
gives the eager model's raw outputs (1e-4 relative) and its detections (the parity criterion).

The exported models here have a one-block DyHead tower (the official six blocks repeat the same
ops, and export time grows with them); everything else is the variant as published.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch
from conftest import load_case, official_state_dict, parity_cases
from PIL import Image

import dyhead_zoo
from dyhead_zoo.evaluation.agreement import match_one_to_one
from dyhead_zoo.export import (
    ExportableNetwork,
    export_onnx,
    export_program,
    output_names,
    postprocess,
    prepare_batch,
    torchvision_deform_conv,
)
from dyhead_zoo.models import fused_conv

onnx = pytest.importorskip("onnx", reason="the export extra is not installed: pip install -e '.[export]'")
ort = pytest.importorskip("onnxruntime", reason="the export extra is not installed: pip install -e '.[export]'")

SIZE = 128  # shorter side of the test photo, and the test size of the models
BLOCKS = 1


def small_model(name: str) -> dyhead_zoo.DyHeadDetector:
    """Variant ``name`` at test size 128 with one DyHead block, official-layout random weights."""
    config = dyhead_zoo.get_config(name)
    config = dataclasses.replace(config, dyhead_num_blocks=BLOCKS,
                                 input=dataclasses.replace(config.input, min_size=SIZE, max_size=SIZE * 2))
    state = {k: v for k, v in official_state_dict(name).items()
             if not (m := re.match(r"backbone\.dyhead_tower\.(\d+)\.", k)) or int(m.group(1)) < BLOCKS}
    model = dyhead_zoo.create_model(name, config=config)
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real photo already at the test size, so boxes are compared in the network's own pixels."""
    image = load_case(parity_cases()[1][1])["image_rgb"]
    h, w = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((round(w * SIZE / min(h, w)), SIZE), Image.BILINEAR))


class Exported:
    """One variant exported both ways, with the eager model's outputs on the same batch."""

    def __init__(self, name: str, photo: np.ndarray, folder) -> None:
        self.model = small_model(name)
        self.config = self.model.config
        batch, self.sizes, self.originals = prepare_batch([photo], self.config)
        self.padded_hw = tuple(batch.shape[-2:])
        inputs = [torch.from_numpy(batch)]
        if self.config.meta_architecture == "GeneralizedRCNN":
            inputs.append(torch.tensor(self.sizes))
        self.inputs = inputs
        # The eager reference uses the reference DCN backend, the op both exports contain (the
        # fast CPU backend agrees with it to ~1e-5, which a two-stage detector can amplify).
        # The plain (unfused) eager path: the arithmetic the exported graphs contain.
        with torchvision_deform_conv(), pytest.MonkeyPatch.context() as patch, torch.no_grad():
            patch.setenv(fused_conv.ENV_VAR, "0")
            self.eager_detections = self.model.predict(photo)
            self.eager_outputs = [t.float() for t in ExportableNetwork(self.model)(*inputs)]
            if self.config.meta_architecture == "GeneralizedRCNN":  # for the box head on ONNX's boxes
                self.eager_features = self.model.backbone(inputs[0])
        self.program = export_program(self.model, *self.padded_hw)
        self.onnx_path = export_onnx(self.model, folder / f"{name}.onnx", *self.padded_hw, program=self.program)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(self.onnx_path), options, providers=["CPUExecutionProvider"])
        feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)}
        self.onnx_outputs = [torch.from_numpy(o) for o in session.run(None, feeds)]
        with torch.no_grad():
            self.program_outputs = [t.float() for t in self.program.module()(*inputs)]

    def detections(self, outputs) -> dyhead_zoo.Detections:
        return postprocess(self.config, outputs, self.sizes, self.padded_hw, self.originals)[0]


NAMES = dyhead_zoo.list_models()


@pytest.fixture(scope="module", params=NAMES)
def exported(request, photo, tmp_path_factory) -> Exported:
    return Exported(request.param, photo, tmp_path_factory.mktemp("export"))


def relative_difference(output: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest absolute difference over the reference's largest magnitude."""
    return float((output.float() - reference.float()).abs().max() / reference.float().abs().max().clamp(min=1e-12))


def align_candidates(outputs: list[torch.Tensor], reference: list[torch.Tensor]) -> list[torch.Tensor]:
    """Faster R-CNN: reorder ``outputs``' proposal rows to the reference's. The RPN's top-k may
    order tied objectness logits differently; each row is matched to the reference row of the
    same level with the nearest logit and box."""
    boxes, logits, levels = outputs[0][0], outputs[1][0], outputs[2][0]
    ref_boxes, ref_logits, ref_levels = reference[0][0], reference[1][0], reference[2][0]
    cost = (ref_logits[:, None] - logits[None]).abs() + (ref_boxes[:, None] - boxes[None]).abs().sum(-1)
    cost[ref_levels[:, None] != levels[None]] = float("inf")
    ranked = cost.argsort(dim=1)[:, :8].tolist()  # rows can repeat exactly (boxes clipped to a corner)
    used: set[int] = set()
    order = []
    for candidates in ranked:
        row = next(j for j in candidates if j not in used)
        used.add(row)
        order.append(row)
    return [o[:, order] for o in outputs]


RAW_TOLERANCE = 1e-4


def check_raw(outputs, exported: Exported, references: list[torch.Tensor] | None = None) -> None:
    """Each output within RAW_TOLERANCE of ``references`` (default: the eager outputs); Faster
    R-CNN's proposal rows are first aligned with eager's."""
    references = exported.eager_outputs if references is None else references
    if exported.config.meta_architecture == "GeneralizedRCNN":
        outputs = align_candidates(outputs, exported.eager_outputs)
    assert len(outputs) == len(references) == len(output_names(exported.model))
    for name, output, reference in zip(output_names(exported.model), outputs, references):
        assert output.shape == reference.shape, name
        assert relative_difference(output, reference) < RAW_TOLERANCE, name


def match_detections(det: dyhead_zoo.Detections, ref: dyhead_zoo.Detections) -> int:
    """The parity criterion, where for boxes under a pixel thick, whose IoU float noise alone
    moves by 1e-3, corners within 0.01 px also count as the same box."""
    return len(match_one_to_one(det.boxes, det.scores, det.labels, ref.boxes, ref.scores, ref.labels,
                                corner_tol=0.01))


def check_detections(detections: dyhead_zoo.Detections, exported: Exported) -> None:
    reference = exported.eager_detections
    assert len(reference) > 0
    assert len(detections) == len(reference)
    assert match_detections(detections, reference) == len(reference)
    assert detections.label_names == reference.label_names or sorted(detections.label_names) == sorted(
        reference.label_names)


def eager_box_head(exported: Exported, boxes: torch.Tensor) -> list[torch.Tensor]:
    """Faster R-CNN: the eager box head's class logits and deltas (N, M, .) for proposal
    ``boxes`` (N, M, 4), pooled from the eager features."""
    model = exported.model
    features = [exported.eager_features[name] for name in model.config.roi_heads.in_features]
    with torch.no_grad():
        pooled = ExportableNetwork(model)._pool(features, boxes)
        logits, deltas = model.roi_heads.box_predictor(model.roi_heads.box_head(pooled))
    n, m = boxes.shape[:2]
    return [logits.view(n, m, -1), deltas.view(n, m, -1)]


def test_onnx_raw_outputs_match_eager(exported):
    """Faster R-CNN's box-head outputs are compared with the eager box head run on the ONNX
    graph's own proposal boxes (which are themselves checked against eager's): ROI pooling's
    adaptive sampling grid (ceil(box size / 7)) and its level assignment jump with the last bits
    of a box, so onnxruntime's 1-ulp different box decoding may pool a few candidates on
    another grid (1.3e-4 relative in the class logits when compared across those jumps)."""
    references = None
    if exported.config.meta_architecture == "GeneralizedRCNN":
        boxes = align_candidates(exported.onnx_outputs, exported.eager_outputs)[0]
        references = exported.eager_outputs[:4] + eager_box_head(exported, boxes)
    check_raw(exported.onnx_outputs, exported, references)


def test_onnx_detections_match_predict(exported):
    check_detections(exported.detections(exported.onnx_outputs), exported)


def test_exported_program_raw_outputs_match_eager(exported):
    check_raw(exported.program_outputs, exported)


def test_exported_program_detections_match_predict(exported):
    check_detections(exported.detections(exported.program_outputs), exported)


def test_onnx_uses_the_standard_deform_conv_op(exported):
    graph = onnx.load(str(exported.onnx_path), load_external_data=False)
    opsets = {entry.domain: entry.version for entry in graph.opset_import}
    assert opsets[""] >= 19
    op_types = {node.op_type for node in graph.graph.node}
    assert "DeformConv" in op_types
    # No custom op library: every node is a standard ONNX op (functions the exporter inlines aside).
    assert {node.domain for node in graph.graph.node} <= {"", "ai.onnx"}
    deform = [n for n in graph.graph.node if n.op_type == "DeformConv"]
    assert len(deform) == 3 * 5 - 2  # one DyHead block: three DCNs per level but none below/above the ends


def test_exported_program_keeps_torchvision_deform_conv(exported):
    targets = [str(node.target) for node in exported.program.graph.nodes if node.op == "call_function"]
    assert sum("torchvision.deform_conv2d" in t for t in targets) == 3 * 5 - 2
