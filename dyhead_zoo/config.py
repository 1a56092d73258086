"""Frozen settings of one zoo variant, read from its record in ``configs/``.

Every number the model needs to rebuild itself lives here; overrides go through
``dataclasses.replace`` (for example a smaller test size), never through mutable globals.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from dyhead_zoo.categories import COCO_CLASS_NAMES

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
    # RetinaNet training (MODEL.RETINANET): anchor labelling by IoU (low-quality matches kept)
    # and the box loss; the DyHead config sets SMOOTH_L1_LOSS_BETA 0 (plain L1).
    iou_thresholds: tuple[float, ...] = (0.4, 0.5)
    iou_labels: tuple[int, ...] = (0, -1, 1)
    smooth_l1_loss_beta: float = 0.0
    bbox_reg_loss_type: str = "smooth_l1"


@dataclass(frozen=True)
class RPNConfig:
    """Region proposal network inference rules (Faster R-CNN)."""

    in_features: tuple[str, ...]
    pre_nms_topk: int
    post_nms_topk: int
    nms_thresh: float
    bbox_reg_weights: tuple[float, float, float, float]
    # Training (MODEL.RPN): anchor labelling by IoU (low-quality matches kept), sampled anchors
    # per image and their foreground fraction, proposals kept per image before/after NMS, box loss.
    iou_thresholds: tuple[float, ...] = (0.3, 0.7)
    iou_labels: tuple[int, ...] = (0, -1, 1)
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    pre_nms_topk_train: int = 2000
    post_nms_topk_train: int = 1000
    smooth_l1_beta: float = 0.0
    bbox_reg_loss_type: str = "smooth_l1"


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
    # Training (MODEL.ROI_HEADS, MODEL.ROI_BOX_HEAD): proposal labelling by IoU, ground truth
    # added to the proposals, sampled proposals per image and their foreground fraction, box loss.
    iou_thresholds: tuple[float, ...] = (0.5,)
    iou_labels: tuple[int, ...] = (0, 1)
    proposal_append_gt: bool = True
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    smooth_l1_beta: float = 0.0
    bbox_reg_loss_type: str = "smooth_l1"


@dataclass(frozen=True)
class WeightSource:
    """One place the published weights of a variant can be fetched from.

    ``role``: ``"project"`` (this project's Hub repo, the converted ``model.safetensors``),
    ``"official"`` (the release's own file) or ``"mirror"`` (a copy kept by someone else).
    A source is either a plain ``url`` (kept in the torch hub cache) or a Hugging Face Hub
    ``repo`` + ``revision`` + ``filename`` (kept in the Hugging Face cache). ``sha256`` is the
    pinned hash of the file, "" until someone has checked it against the original.
    """

    role: Literal["project", "official", "mirror"]
    url: str = ""
    repo: str = ""
    revision: str = "main"
    filename: str = ""
    sha256: str = ""

    def __post_init__(self) -> None:
        if self.role not in ("project", "official", "mirror"):
            raise ValueError(f"weight source role {self.role!r}: use 'project', 'official' or 'mirror'")
        if bool(self.url) == bool(self.repo) or (self.repo and not self.filename):
            raise ValueError(f"a {self.role} weight source needs either url = '...' or repo = 'OWNER/NAME' with "
                             f"filename = '...' (and optionally revision), got url={self.url!r} repo={self.repo!r} "
                             f"filename={self.filename!r}")

    @property
    def label(self) -> str:
        """How messages name this source, e.g. ``mirror fuliucansheng/detectron2@main:dyhead/x.bin``."""
        where = self.url or f"{self.repo}@{self.revision}:{self.filename}"
        return f"{self.role} {where}"


@dataclass(frozen=True)
class WeightSources:
    """Where the published weights live, in the order they are tried, and what they must contain."""

    num_params: int
    sources: tuple[WeightSource, ...] = ()

    def __post_init__(self) -> None:  # records and config.json give the sources as plain dicts
        sources = tuple(s if isinstance(s, WeightSource) else _build(WeightSource, dict(s)) for s in self.sources)
        object.__setattr__(self, "sources", sources)

    def first(self, role: str) -> WeightSource | None:
        """The first source with ``role`` (``"project"``, ``"official"`` or ``"mirror"``), or None."""
        return next((s for s in self.sources if s.role == role), None)

    @property
    def url(self) -> str:
        """The official release's URL ("" if the record has none)."""
        official = self.first("official")
        return official.url if official else ""

    @property
    def hf_repo(self) -> str:
        """This project's Hugging Face Hub repo ("" if the record has none)."""
        project = self.first("project")
        return project.repo if project else ""

    @property
    def sha256(self) -> str:
        """The pinned SHA-256 of the official file ("" until pinned)."""
        official = self.first("official")
        return official.sha256 if official else ""


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
    # Label i's name; a model fine-tuned to other classes carries them here (and in config.json).
    class_names: tuple[str, ...] = COCO_CLASS_NAMES

    def __post_init__(self) -> None:
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{self.name}: num_classes is {self.num_classes} but {len(self.class_names)} "
                             "class_names are given; change both together, e.g. dataclasses.replace(config, "
                             "num_classes=len(names), class_names=tuple(names))")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"{self.name}: class_names must be unique, got {list(self.class_names)}")

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
    """Build a :class:`ModelConfig` from a nested dict (a parsed ``dyhead_zoo/configs/*.toml`` or config.json)."""
    data = dict(data)
    for key, cls in _SECTIONS.items():
        if data.get(key) is not None:
            data[key] = _build(cls, data[key])
    return _build(ModelConfig, data)
