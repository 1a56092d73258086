"""dyhead-zoo: Dynamic Head (CVPR 2021) detectors in pure PyTorch, with the official weights."""
from .config import ModelConfig
from .data.categories import COCO_CATEGORY_IDS, COCO_CLASS_NAMES
from .data.images import load_image
from .draw import draw
from .checkpoint import CheckpointMismatchError, UnsafeCheckpointError
from .errors import CheckpointError, DyHeadZooError, EvaluationLockedError
from .models.detections import Detections
from .models.detector import DyHeadDetector
from .registry import create_model, get_config, list_models, weight_sources
from .weights import WeightsDownloadError
from .engine.recipe import TrainRecipe, get_recipe
from .engine.run import train
from .engine.trainer import Trainer

__all__ = ["COCO_CATEGORY_IDS", "COCO_CLASS_NAMES", "CheckpointError", "CheckpointMismatchError", "Detections",
           "DyHeadDetector", "DyHeadZooError", "EvaluationLockedError", "ModelConfig", "UnsafeCheckpointError",
           "WeightsDownloadError", "TrainRecipe", "Trainer", "create_model", "get_config",
           "draw", "get_recipe", "list_models", "load_image", "train", "weight_sources"]
__version__ = "0.1.0"
