"""Networks by name and the ATS model that joins them to a slide."""

from wsi_ats.models.ats_model import ATSModel, SlidePlan
from wsi_ats.models.config import ConfigError, LevelSpec, ModelConfig, NetSpec, PipelineConfig, TissueSpec, TrainConfig, load_config
from wsi_ats.models.registry import available, build, register

__all__ = [
    "ATSModel",
    "ConfigError",
    "LevelSpec",
    "ModelConfig",
    "NetSpec",
    "PipelineConfig",
    "SlidePlan",
    "TissueSpec",
    "TrainConfig",
    "available",
    "build",
    "load_config",
    "register",
]
