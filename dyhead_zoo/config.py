"""Frozen settings of one zoo variant, read from its record in ``configs/``.

Every number the model needs to rebuild itself lives here; overrides go through
``dataclasses.replace`` (for example a smaller test size), never through mutable globals.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

MetaArchitecture = Literal["ATSS", "RetinaNet", "GeneralizedRCNN"]


@dataclass(frozen=True)
class InputConfig:
    """Test-time preprocessing: channel order, normalisation, resize, padding."""

    format: Literal["BGR", "RGB"]
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]
    min_size: int = 800
    max_size: int = 1333
    size_divisibility: int = 128


@dataclass(frozen=True)
class AnchorConfig:
    """detectron2 DefaultAnchorGenerator settings, one tuple of sizes per level."""

    sizes: tuple[tuple[float, ...], ...]
    aspect_ratios: tuple[float, ...]
    offset: float


@dataclass(frozen=True)
class HeadConfig:
    """One-stage head (ATSS / RetinaNet) structure and inference rules."""

    num_convs: int
    score_thresh: float
    topk_candidates: int
    nms_thresh: float
    bbox_reg_weights: tuple[float, float, float, float]
    # Training, named after the official MODEL.ATSS / MODEL.RETINANET keys: the sigmoid focal
    # loss, ATSS's candidates per level (TOPK) and the weight of its GIoU box loss.
    focal_loss_alpha: float = 0.25
    focal_loss_gamma: float = 2.0
    atss_topk: int = 9
    reg_loss_weight: float = 2.0


@dataclass(frozen=True)
class RPNConfig:
    """Region proposal network inference rules (Faster R-CNN)."""

    in_features: tuple[str, ...]
    pre_nms_topk: int
    post_nms_topk: int
    nms_thresh: float
    bbox_reg_weights: tuple[float, float, float, float]


@dataclass(frozen=True)
class ROIHeadsConfig:
    """StandardROIHeads with a 2-FC box head (Faster R-CNN)."""

    in_features: tuple[str, ...]
    pooler_resolution: int
    pooler_sampling_ratio: int
    fc_dim: int
    num_fc: int
    score_thresh: float
    nms_thresh: float
    bbox_reg_weights: tuple[float, float, float, float]


@dataclass(frozen=True)
class WeightSources:
    """Where the published weights live and what they must contain."""

    url: str
    hf_repo: str
    num_params: int
    sha256: str = ""


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines one DyHead variant."""

    name: str
    description: str
    meta_architecture: MetaArchitecture
    backbone: Literal["resnet50", "swin_t"]
    backbone_out_features: tuple[str, ...]
    fpn_in_features: tuple[str, ...]
    top_block: Literal["p6p7", "maxpool"]
    published_map: float
    input: InputConfig
    anchors: AnchorConfig
    weights: WeightSources
    head: HeadConfig | None = None
    rpn: RPNConfig | None = None
    roi_heads: ROIHeadsConfig | None = None
    num_classes: int = 80
    fpn_channels: int = 256
    dyhead_num_blocks: int = 6
    detections_per_image: int = 100
    # Training: Swin-T stochastic depth (official MODEL.SWINT.DROP_PATH_RATE; identity in eval
    # mode) and recomputing each DyHead block in the backward pass to save activation memory.
    drop_path_rate: float = 0.0
    gradient_checkpointing: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict (tuples become lists); inverse of :func:`from_dict`."""
        return dataclasses.asdict(self)


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def _build(cls: type, data: dict[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} settings {sorted(unknown)}; known: {sorted(fields)}")
    return cls(**{k: _tuples(v) for k, v in data.items()})


_SECTIONS = {
    "input": InputConfig,
    "anchors": AnchorConfig,
    "weights": WeightSources,
    "head": HeadConfig,
    "rpn": RPNConfig,
    "roi_heads": ROIHeadsConfig,
}


def from_dict(data: dict[str, Any]) -> ModelConfig:
    """Build a :class:`ModelConfig` from a nested dict (a parsed ``configs/*.toml`` or config.json)."""
    data = dict(data)
    for key, cls in _SECTIONS.items():
        if data.get(key) is not None:
            data[key] = _build(cls, data[key])
    return _build(ModelConfig, data)
