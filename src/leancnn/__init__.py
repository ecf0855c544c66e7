"""leancnn: compact convolutional networks from training to deployment."""

from .config import ExperimentConfig, load_config
from .errors import ConfigError, LeancnnError
from .losses import BiasLoss
from .models import create_model, list_models, register_model
from .nn import MixStyle, count_macs, count_params

__version__ = "0.1.0"

__all__ = ["BiasLoss", "ConfigError", "MixStyle", "ExperimentConfig", "LeancnnError", "count_macs", "count_params", "create_model",
           "list_models", "load_config", "register_model", "__version__"]
