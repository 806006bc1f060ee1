"""Networks chosen by name, as in timm: ``@register("features", "small_cnn")`` then `build`.

Three kinds: ``attention`` (low-level image -> one logit per grid cell), ``features``
(patches -> vectors, exposing ``out_features``) and ``classifier`` (vector -> class logits,
built with ``in_features`` and ``num_classes``). A recipe names them; a checkpoint stores
the names and parameters and rebuilds the same modules. The registry knows no network: each
module registers its own when imported, and ``wsi_ats.models`` imports the built-in ones.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

KINDS = ("attention", "features", "classifier")
_REGISTRY: dict[str, dict[str, Callable[..., nn.Module]]] = {kind: {} for kind in KINDS}

F = TypeVar("F", bound=Callable[..., nn.Module])


def register(kind: str, name: str) -> Callable[[F], F]:
    """Decorator adding a network constructor under ``kind``/``name``."""
    if kind not in _REGISTRY:
        raise ValueError(f"unknown network kind {kind!r}; kinds: {', '.join(KINDS)}")

    def add(factory: F) -> F:
        if name in _REGISTRY[kind]:
            raise ValueError(f"{kind} network {name!r} is already registered")
        _REGISTRY[kind][name] = factory
        return factory

    return add


def available(kind: str) -> tuple[str, ...]:
    """Registered names of one kind, sorted."""
    return tuple(sorted(_REGISTRY[kind]))


def build(kind: str, name: str, **params: Any) -> nn.Module:
    """Instantiate a registered network; bad names or parameters say what is accepted."""
    if kind not in _REGISTRY:
        raise ValueError(f"unknown network kind {kind!r}; kinds: {', '.join(KINDS)}")
    factory = _REGISTRY[kind].get(name)
    if factory is None:
        raise ValueError(f"no {kind} network named {name!r}; available: {', '.join(available(kind))}")
    accepted = inspect.signature(factory).parameters
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"{kind} network {name!r} takes no parameter(s) {', '.join(unknown)}; accepted: {', '.join(accepted)}")
    return factory(**params)
