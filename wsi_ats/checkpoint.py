"""One-file checkpoints: weights, the full model config, class names and training metadata.

Everything in the file is a tensor, a dict, a list or a scalar, so it loads with
``torch.load(path, weights_only=True)`` (no pickled code runs) and the model is rebuilt
from the config through the network registry: no code edit, no class import by path.
Writes are atomic (`wsi_ats.outputs.atomic`), so a crash never leaves a half-written
checkpoint where a good one was.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from wsi_ats.device import select_device
from wsi_ats.models import ATSModel, ModelConfig
from wsi_ats.outputs.atomic import atomic_writer

FORMAT = "wsi-ats-checkpoint"
VERSION = 1
_REQUIRED = ("format", "version", "config", "class_names", "state_dict")


class CheckpointError(ValueError):
    """A file that is not a usable wsi-ats checkpoint; the message names the file and the reason."""


def save_checkpoint(
    path: str | Path, model: ATSModel, *, metadata: dict[str, Any] | None = None, training: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` to ``path`` atomically; ``metadata`` (plain values) describes the run, ``training`` holds resume state."""
    if model.config is None:
        raise ValueError("only a model built with ATSModel.from_config can be checkpointed (the config rebuilds it)")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config.to_dict(),
        "class_names": list(model.class_names),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": dict(metadata or {}),
        "microns": dict(model.microns),
    }
    if training is not None:
        payload["training"] = training
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as f:
        torch.save(payload, f)
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's contents, validated; `CheckpointError` for anything that is not ours."""
    path = Path(path)
    if path.is_dir():
        inside = " (it holds model.pt)" if (path / "model.pt").is_file() else ""
        raise CheckpointError(f"{path}: is a folder; give the checkpoint file, e.g. {path / 'model.pt'}{inside}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file, not a wsi-ats checkpoint (an interrupted copy?)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch.load raises many types on foreign bytes; all mean "not ours"
        if isinstance(err, pickle.UnpicklingError) and "Unsupported global" in str(err):  # weights_only refused a class
            reason = "it holds pickled Python objects; wsi-ats loads only tensors and plain values"  # e.g. torch.save(model)
        else:  # torch's unpickling messages advise loading with weights_only=False: not advice to pass on
            detail = type(err).__name__ if isinstance(err, pickle.UnpicklingError) else _first_line(err)[:160]
            reason = f"unreadable as a torch file, truncated or foreign: {detail}"
        raise CheckpointError(f"{path}: not a wsi-ats checkpoint ({reason})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a wsi-ats checkpoint (a torch file without the '{FORMAT}' tag; `wsi-ats train` writes RUN/model.pt)"
        )
    missing = [k for k in _REQUIRED if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint, missing {', '.join(missing)}")
    if payload["version"] != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload['version']} is not supported (this is version {VERSION})")
    return payload


def load_checkpoint(path: str | Path, device: str | torch.device | None = None) -> ATSModel:
    """Rebuild the model saved in ``path`` on ``device`` (default: CUDA when present), in eval mode."""
    payload = read_checkpoint(path)
    try:
        config = ModelConfig.from_dict(payload["config"], source=str(path))
        model = ATSModel.from_config(config, payload["class_names"], load_weights=False)  # the state dict has them
        model.load_state_dict(payload["state_dict"])
    except (ValueError, TypeError, RuntimeError, KeyError) as err:
        raise CheckpointError(f"{path}: cannot rebuild the model: {err}") from None
    model.metadata = dict(payload.get("metadata") or {})
    model.microns = {str(k): float(v) for k, v in (payload.get("microns") or {}).items()}
    return model.to(select_device(device)).eval()


def _first_line(err: BaseException) -> str:
    """``Type: first line of the message`` (some loaders raise with an empty or many-line message)."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
