"""The DyHead detector: backbone, FPN, DyHead tower and the variant's detection head."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn

from dyhead_zoo.config import ModelConfig
from dyhead_zoo.data.images import ImageInput, load_image
from dyhead_zoo.data.preprocess import group_by_padded_shape, normalize_and_pad, resize, to_model_tensor
from dyhead_zoo.models.anchors import AnchorGenerator
from dyhead_zoo.models.atss import ATSSHead
from dyhead_zoo.models.detections import Detections, class_indices, select
from dyhead_zoo.models.dyhead import DyHeadBackbone
from dyhead_zoo.models.fpn import FPN
from dyhead_zoo.models.postprocess import rescale_boxes
from dyhead_zoo.weights import hub


def _build_bottom_up(config: ModelConfig) -> nn.Module:
    if config.backbone == "resnet50":
        from dyhead_zoo.models.resnet import ResNet50

        return ResNet50(config.backbone_out_features)
    if config.backbone == "swin_t":
        from dyhead_zoo.models.swin import SwinTransformer

        return SwinTransformer(drop_path_rate=config.drop_path_rate)
    raise ValueError(f"unknown backbone {config.backbone!r}")


class DyHeadDetector(nn.Module, PyTorchModelHubMixin, **hub.mixin_metadata()):
    """A Dynamic Head detector built from a :class:`~dyhead_zoo.config.ModelConfig`.

    ``model.predict(images)`` runs the official test-time pipeline end to end;
    ``model(batch)`` takes an already normalised and padded (N, 3, H, W) tensor.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        fpn = FPN(_build_bottom_up(config), config.fpn_in_features, config.fpn_channels, config.top_block)
        self.backbone = DyHeadBackbone(fpn, config.fpn_channels, config.dyhead_num_blocks,
                                       config.gradient_checkpointing)
        self.levels = list(fpn.out_features)
        anchors = config.anchors
        if config.meta_architecture == "GeneralizedRCNN":
            from dyhead_zoo.models.roi_heads import ROIHeads
            from dyhead_zoo.models.rpn import RPN

            rpn_strides = [fpn.strides[name] for name in config.rpn.in_features]
            self.anchor_generator = AnchorGenerator(rpn_strides, anchors.sizes, anchors.aspect_ratios, anchors.offset)
            self.proposal_generator = RPN(config.rpn, config.fpn_channels, self.anchor_generator.num_anchors)
            self.roi_heads = ROIHeads(config.roi_heads, config.fpn_channels, config.num_classes,
                                      {name: fpn.strides[name] for name in config.roi_heads.in_features})
        else:
            strides = [fpn.strides[name] for name in self.levels]
            self.anchor_generator = AnchorGenerator(strides, anchors.sizes, anchors.aspect_ratios, anchors.offset)
            if config.meta_architecture == "ATSS":
                head_cls: type[nn.Module] = ATSSHead
            else:
                from dyhead_zoo.models.retinanet import RetinaNetHead

                head_cls = RetinaNetHead
            self.head = head_cls(config.head, config.fpn_channels, config.num_classes,
                                 self.anchor_generator.num_anchors, len(self.levels))

    @property
    def class_names(self) -> tuple[str, ...]:
        """Label ``i``'s name: the 80 COCO classes, or those a fine-tuned model was trained on."""
        return self.config.class_names

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _detect(self, features: dict[str, Tensor], image_sizes: list[tuple[int, int]]
                ) -> list[tuple[Tensor, Tensor, Tensor]]:
        max_det = self.config.detections_per_image
        if self.config.meta_architecture == "GeneralizedRCNN":
            proposals = self.proposal_generator(
                [features[f] for f in self.config.rpn.in_features], self.anchor_generator, image_sizes)
            return self.roi_heads(features, [boxes for boxes, _ in proposals], image_sizes, max_det)
        maps = [features[name] for name in self.levels]
        outputs = self.head(maps)
        return self.head.inference(outputs, self.anchor_generator(maps), len(image_sizes), max_det)

    def forward(self, images: Tensor, image_sizes: Sequence[tuple[int, int]] | None = None,
                targets: Sequence[dict[str, Tensor]] | None = None,
                output_sizes: Sequence[tuple[int, int]] | None = None) -> list[Detections] | dict[str, Tensor]:
        """Detect objects (eval mode) or compute the training losses (train mode).

        ``images`` is a normalised batch (N, 3, H, W) zero-padded to the size divisibility;
        ``image_sizes`` are each image's (h, w) before padding (default: the full tensor).
        Eval mode returns one :class:`Detections` per image, boxes clipped to its size, or
        scaled to ``output_sizes`` and clipped there when given; ``targets`` are ignored.
        Train mode needs ``targets``: per image a dict with ``boxes`` (K, 4) float XYXY in the
        resized image's pixels and ``labels`` (K,) int64 0-based (K may be 0); it returns the
        official loss terms by name (see :meth:`losses`).
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected an (N, 3, H, W) batch, got shape {tuple(images.shape)}")
        d = self.config.input.size_divisibility
        if images.shape[-2] % d or images.shape[-1] % d:
            raise ValueError(f"batch size {tuple(images.shape[-2:])} must be divisible by {d}; pad it "
                             "(dyhead_zoo.data.preprocess.normalize_and_pad) or use model.predict()")
        sizes = list(image_sizes) if image_sizes is not None else [tuple(images.shape[-2:])] * images.shape[0]
        if self.training:
            if targets is None:
                raise ValueError("train mode needs targets: per image {'boxes': (K, 4) XYXY, 'labels': (K,)}; "
                                 "call model.eval() to detect")
            return self.losses(images, sizes, targets)
        with torch.no_grad():
            return self._detections(images, sizes, output_sizes)

    def _detections(self, images: Tensor, sizes: list[tuple[int, int]],
                    output_sizes: Sequence[tuple[int, int]] | None) -> list[Detections]:
        outputs = list(output_sizes) if output_sizes is not None else sizes
        features = self.backbone(images)
        results = []
        for (boxes, scores, labels), size, target in zip(self._detect(features, sizes), sizes, outputs):
            boxes, scores, labels = rescale_boxes(boxes, scores, labels, size, target)
            names = [self.config.class_names[i] for i in labels.tolist()]
            results.append(Detections(boxes, scores, labels, names))
        return results

    def losses(self, images: Tensor, image_sizes: list[tuple[int, int]],
               targets: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        """The official training losses for a padded batch: ATSS ``loss_cls``, ``loss_box_reg``,
        ``loss_ctr``; RetinaNet ``loss_cls``, ``loss_box_reg``; Faster R-CNN ``loss_rpn_cls``,
        ``loss_rpn_loc``, ``loss_cls``, ``loss_box_reg``."""
        features = self.backbone(images)
        if self.config.meta_architecture == "GeneralizedRCNN":
            from dyhead_zoo.losses.rcnn_losses import rcnn_losses

            return rcnn_losses(self, features, image_sizes, targets)
        maps = [features[name] for name in self.levels]
        outputs = self.head(maps)
        anchors = self.anchor_generator(maps)
        if self.config.meta_architecture == "ATSS":
            from dyhead_zoo.losses.atss_loss import atss_losses

            return atss_losses(self.head, outputs, anchors, image_sizes, targets)
        from dyhead_zoo.losses.retinanet_loss import retinanet_losses

        return retinanet_losses(self.head, outputs, anchors, image_sizes, targets)

    def preprocess(self, images: Sequence[ImageInput]) -> list[tuple[Tensor, tuple[int, int]]]:
        """Load, resize and convert images: per image the (3, h, w) tensor and the original (H, W)."""
        prepared = []
        for image in images:
            rgb = load_image(image)
            prepared.append((to_model_tensor(resize(rgb, self.config.input), self.config.input), rgb.shape[:2]))
        return prepared

    @torch.no_grad()
    def predict(self, images: ImageInput | Sequence[ImageInput], score_threshold: float | None = None,
                classes: Sequence[int | str] | None = None, batch_size: int = 4) -> Detections | list[Detections]:
        """Detect objects in one image or a list of images (paths, PIL images, HxWx3 uint8 RGB
        arrays, (3, H, W) uint8 RGB tensors as ``torchvision.io.read_image`` returns them, or an
        (N, 3, H, W) uint8 tensor of several).

        Returns one :class:`Detections` per image (a single one for a single input), boxes in
        the original image's pixels. ``score_threshold`` keeps detections scoring at least that
        much and ``classes`` (names or 0-based ids of :attr:`class_names`) those classes, both
        applied to the variant's final detections. A list is decoded lazily, ``batch_size``
        images at a time; of those, images whose padded sizes agree run in one forward pass and
        others run apart, so results never depend on what else is in the list or on ``batch_size``.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        keep_classes = None if classes is None else class_indices(classes, self.class_names)
        if isinstance(images, Tensor) and images.dim() == 4:
            images = list(images.unbind(0))
        single = not isinstance(images, (list, tuple))
        items = [images] if single else images
        results: list[Detections] = []
        device = self._device()
        for start in range(0, len(items), batch_size):
            # Only this window is held decoded: a folder of large photos never sits in memory at once.
            prepared = self.preprocess(items[start:start + batch_size])
            window: list[Detections | None] = [None] * len(prepared)
            groups = group_by_padded_shape([tensor for tensor, _ in prepared], self.config.input.size_divisibility)
            for indices in groups:
                batch, sizes = normalize_and_pad([prepared[i][0].to(device) for i in indices], self.config.input)
                batch = batch.to(next(self.parameters()).dtype)
                outputs = self(batch, sizes, output_sizes=[prepared[i][1] for i in indices])
                for i, det in zip(indices, outputs):
                    window[i] = select(det.to("cpu"), score_threshold, keep_classes)
            results.extend(window)
        return results[0] if single else results

    def _save_pretrained(self, save_directory: Path) -> None:
        """Write ``model.safetensors``, ``config.json`` and the ``README.md`` model card
        (called by ``save_pretrained`` and ``push_to_hub``)."""
        hub.save_folder(self.state_dict(), self.config, save_directory)

    def generate_model_card(self, *args, **kwargs) -> hub.ModelCard:
        """The model card ``save_pretrained`` writes: metadata header, usage and citation."""
        return hub.model_card(self.config)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir: str | Path | None,
                         force_download: bool, local_files_only: bool, token: str | bool | None,
                         config: ModelConfig | dict | None = None, device: str | None = None) -> "DyHeadDetector":
        """``from_pretrained(repo_or_dir)``: rebuild from ``config.json`` and load
        ``model.safetensors`` strictly (every key and shape must match, unlike the mixin's default)."""
        return hub.load_pretrained(cls, model_id, config, revision=revision, cache_dir=cache_dir,
                                   force_download=force_download, local_files_only=local_files_only,
                                   token=token, device=device)
