"""Any timm architecture as the feature net: ImageNet ResNets, pathology foundation models (UNI, Virchow, ...).

A recipe names it: ``[model.features] name = "timm"``, ``arch = "resnet50"``, ``weights = "path"``
(a local ``.safetensors``/``.bin``/``.pth``/``.pt``, or ``"hf-hub:org/name"`` which timm resolves
when the machine can reach the hub), ``freeze = true``, ``mean``/``std`` (default: the model's
pretrained config), ``input_size`` (patches are resized to it when they differ) and
``normalize`` (L2 norm of the output) and ``timm_kwargs`` (what `timm.create_model` needs for the weights, e.g. UNI's ``init_values``),
``weights_hint`` (how to get the weights file: the error says it when the file is missing).
Nothing is downloaded unless ``weights`` is a hub name. timm is imported on first use, so the
models package stays light for users of the small nets.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsi_ats.models.config import ConfigError
from wsi_ats.models.registry import register

KEY = "[model.features]"
#: Suffixes of weights files read with `torch.load` (``weights_only``) or safetensors.
TORCH_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt")
#: Where a classification checkpoint keeps its head; such keys the headless net (``num_classes = 0``) lacks are dropped.
HEAD_PREFIXES = ("fc.", "head.", "classifier.", "last_linear.")


def import_timm() -> Any:
    """timm, importable even beside a CUDA torchvision wheel whose compiled ops cannot load on CPU torch.

    Why: torchvision registers fake kernels for ``torchvision::nms``/``qnms`` at import and fails
    when its ``_C`` library did not load (a CUDA build of torchvision beside a CPU torch). timm
    needs only torchvision's Python parts, so the two schemas are declared and the import retried.
    """
    try:
        import timm
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith(("torchvision.", "timm"))]:
            del sys.modules[name]
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for op in ("nms", "qnms"):
            try:
                lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            except RuntimeError:
                pass  # already declared
        _KEEP.append(lib)
        import timm
    return timm


_KEEP: list[Any] = []  # the library object must outlive the import, or its schemas are dropped


def load_state_dict(path: str | Path, hint: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: safetensors or a torch pickle (``weights_only``), unwrapped and without ``module.``.

    ``hint`` (the recipe's ``weights_hint``) says how to get a missing file, e.g. the command that makes it.
    """
    path = Path(path)
    if not path.is_file():
        how = f"; to get it: {hint}" if hint else ' (a local weights file, or "hf-hub:org/name")'
        raise ConfigError(f"{KEY} weights = {str(path)!r}: file not found{how}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        elif path.suffix in TORCH_SUFFIXES:
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise ConfigError(f"{KEY} weights = {str(path)!r}: unknown format; expected .safetensors or {', '.join(TORCH_SUFFIXES)}")
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad file, reported by key
        raise ConfigError(f"{KEY} weights = {str(path)!r}: not a readable weights file ({type(err).__name__}: {err})") from None
    for wrapper in ("state_dict", "model", "teacher"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{KEY} weights = {str(path)!r}: holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


@register("features", "timm")
class TimmFeatures(nn.Module):
    """A timm network without its classification head: uint8-normalised patches ``[N, 3, P, P]`` -> ``[N, D]``.

    ``mean``/``std`` are the normalisation the weights were trained with (the pretrained
    config's unless the recipe overrides them); `ATSModel.features` applies them to the patches
    while the attention net keeps its own. Frozen, the net stays in eval mode, holds no gradient
    and runs without autograd; on CUDA it runs in bf16. Always channels-last.
    """

    def __init__(
        self,
        arch: str | None = None,
        weights: str | None = None,
        freeze: bool = False,
        input_size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        out: str = "pooled",
        normalize: bool = False,
        timm_kwargs: Mapping[str, Any] | None = None,
        weights_hint: str | None = None,
    ) -> None:
        super().__init__()
        timm = import_timm()
        if out != "pooled":
            raise ConfigError(f'{KEY} out = {out!r}: only "pooled" is supported')
        if arch is None:
            raise ConfigError(f'{KEY} name = "timm" needs arch = "<timm architecture>", e.g. "resnet50"')
        if not isinstance(arch, str) or not timm.is_model(arch):
            raise ConfigError(f"{KEY} arch = {arch!r}: not a timm architecture (see timm.list_models())")
        if input_size is not None and (isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1):
            raise ConfigError(f"{KEY} input_size = {input_size!r}: must be a positive integer")
        hub = isinstance(weights, str) and weights.startswith("hf-hub:")
        kwargs = {k: v for k, v in (timm_kwargs or {}).items() if k != "num_classes"}  # always headless: the pooled embedding
        try:
            self.net = timm.create_model(weights if hub else arch, pretrained=hub, num_classes=0, **kwargs)
        except TypeError as err:
            raise ConfigError(f"{KEY} timm_kwargs = {kwargs!r}: {arch} does not take them ({err})") from None
        if weights is not None and not hub:
            own = self.net.state_dict()
            # a published checkpoint's classification head, which the headless net has not (ConvNeXt's head.norm it has)
            state = {k: v for k, v in load_state_dict(weights, weights_hint).items() if k in own or not k.startswith(HEAD_PREFIXES)}
            missing = [k for k in own if k not in state]
            unexpected = [k for k in state if k not in own]
            misshapen = [k for k in state if k in own and state[k].shape != own[k].shape]
            if missing or unexpected or misshapen:
                raise ConfigError(
                    f"{KEY} weights = {weights!r}: do not fit arch = {arch!r} ({len(missing)} missing, e.g. {missing[:3]}; "
                    f"{len(unexpected)} unexpected, e.g. {unexpected[:3]}; {len(misshapen)} of another shape, e.g. {misshapen[:3]})"
                )
            self.net.load_state_dict(state)
        cfg = self.net.pretrained_cfg
        self.mean = tuple(float(v) for v in (mean if mean is not None else cfg.get("mean", (0.485, 0.456, 0.406))))
        self.std = tuple(float(v) for v in (std if std is not None else cfg.get("std", (0.229, 0.224, 0.225))))
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"{KEY} mean/std: three values each, std positive; got {self.mean} and {self.std}")
        self.input_size = input_size
        self.normalize = bool(normalize)
        self.frozen = bool(freeze)
        self.out_features = int(self.net.num_features)
        self.net.to(memory_format=torch.channels_last)
        if self.frozen:
            self.net.requires_grad_(False)
            self.net.eval()

    def train(self, mode: bool = True) -> TimmFeatures:
        """A frozen encoder stays in eval mode (its batch norms and dropout as pretrained)."""
        super().train(mode)
        if self.frozen:
            self.net.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_size is not None and x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False, antialias=True)
            x = x.contiguous(memory_format=torch.channels_last)
        cast = torch.autocast("cuda", dtype=torch.bfloat16) if x.is_cuda else nullcontext()
        if self.frozen:
            with torch.inference_mode(), cast:
                y = self.net(x)
            y = y.float().clone()  # an ordinary tensor again (inference tensors cannot meet autograd), still without history
        else:
            with cast:
                y = self.net(x).float()
        return F.normalize(y, dim=1) if self.normalize else y
