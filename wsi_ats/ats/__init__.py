"""Attention sampling (Katharopoulos & Fleuret, ICML 2019) in PyTorch.

Knows nothing of slides: attention maps, draws, estimators and patch coordinates only.
"""

from .attention_sampling import AttentionSamplingResult, attention_sampling
from .coords import extract_patches, patch_top_left
from .expectation import expectation
from .regularizers import entropy_regularizer
from .sampling import sample

__all__ = [
    "AttentionSamplingResult",
    "attention_sampling",
    "entropy_regularizer",
    "expectation",
    "extract_patches",
    "patch_top_left",
    "sample",
]
