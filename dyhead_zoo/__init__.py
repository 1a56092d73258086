"""dyhead-zoo: Dynamic Head (CVPR 2021) detectors in pure PyTorch, with the official weights."""
from .config import ModelConfig
from .models.detector import Detections, DyHeadDetector
from .registry import create_model, get_config, list_models, weight_sources
from .engine.recipe import TrainRecipe, get_recipe
from .engine.run import train
from .engine.trainer import Trainer

__all__ = ["Detections", "DyHeadDetector", "ModelConfig", "TrainRecipe", "Trainer", "create_model", "get_config",
           "get_recipe", "list_models", "train", "weight_sources"]
__version__ = "0.1.0"
