"""dyhead-zoo: Dynamic Head (CVPR 2021) detectors in pure PyTorch, with the official weights."""
from .config import ModelConfig
from .models.detector import Detections, DyHeadDetector
from .registry import create_model, get_config, list_models, weight_sources

__all__ = ["Detections", "DyHeadDetector", "ModelConfig", "create_model", "get_config", "list_models", "weight_sources"]
__version__ = "0.1.0"
