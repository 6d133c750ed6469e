"""Training on Accelerate: recipe configuration, data packing, the loop with exact resume, LoRA."""

from memlm.training.config import RecipeConfig, load_config
from memlm.training.trainer import TrainResult, train

__all__ = ["RecipeConfig", "TrainResult", "load_config", "train"]
