"""Networks by name and the ATS model that joins them: tensors in, tensors out, no slides.

Importing this package registers the built-in networks (each module registers its own).
"""

from wsi_ats.models.registry import available, build, register  # noqa: I001 - the registry before the nets
from wsi_ats.models import attention, classifier, features, timm_features  # noqa: F401 - registers the built-in nets
from wsi_ats.models.ats_model import ATSModel, ATSOutput
from wsi_ats.models.config import ConfigError, LevelSpec, ModelConfig, NetSpec, PipelineConfig, TissueSpec, TrainConfig, load_config

__all__ = [
    "ATSModel",
    "ATSOutput",
    "ConfigError",
    "LevelSpec",
    "ModelConfig",
    "NetSpec",
    "PipelineConfig",
    "TissueSpec",
    "TrainConfig",
    "available",
    "build",
    "load_config",
    "register",
]
