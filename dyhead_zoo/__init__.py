"""dyhead-zoo: Dynamic Head (CVPR 2021) detectors in pure PyTorch, with the official weights."""
from dyhead_zoo.categories import COCO_CATEGORY_IDS, COCO_CLASS_NAMES
from dyhead_zoo.config import ModelConfig
from dyhead_zoo.data.images import load_image
from dyhead_zoo.draw import draw
from dyhead_zoo.engine.recipe import TrainRecipe, get_recipe
from dyhead_zoo.engine.trainer import Trainer
from dyhead_zoo.engine.training import TrainSettings, train
from dyhead_zoo.errors import CheckpointError, DyHeadZooError, EvaluationLockedError
from dyhead_zoo.models.detections import Detections
from dyhead_zoo.models.detector import DyHeadDetector
from dyhead_zoo.registry import create_model, get_config, list_models, weight_sources
from dyhead_zoo.version import __version__
from dyhead_zoo.weights.checkpoint import CheckpointMismatchError, UnsafeCheckpointError
from dyhead_zoo.weights.fetch import WeightsDownloadError

__all__ = ["__version__", "COCO_CATEGORY_IDS", "COCO_CLASS_NAMES", "CheckpointError", "CheckpointMismatchError", "Detections",
           "DyHeadDetector", "DyHeadZooError", "EvaluationLockedError", "ModelConfig", "UnsafeCheckpointError",
           "WeightsDownloadError", "TrainRecipe", "TrainSettings", "Trainer", "create_model", "get_config",
           "draw", "get_recipe", "list_models", "load_image", "train", "weight_sources"]
