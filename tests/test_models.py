"""The networks: registry, recipes, geometry, and the ATS model's tensor forward (no slides)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from wsi_ats.models import ATSModel, ConfigError, LevelSpec, ModelConfig, NetSpec, TissueSpec, available, build, load_config

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ("negative", "positive")


def tiny_config(padding: str = "valid", **changes) -> ModelConfig:
    config = ModelConfig(
        attention=NetSpec("small_cnn", (("channels", 4), ("padding", padding))),
        features=NetSpec("small_cnn", (("channels", 8), ("layers", 1), ("normalize", False))),
        classifier=NetSpec("linear"),
        low=LevelSpec(downsample=4),
        high=LevelSpec(downsample=1),
        patch_size=16,
        n_patches=6,
        tile=16,
        tissue=TissueSpec(downsample=16),
    )
    return dataclasses.replace(config, **changes)


def tiny_model(padding: str = "valid", seed: int = 0, **changes) -> ATSModel:
    torch.manual_seed(seed)
    return ATSModel.from_config(tiny_config(padding, **changes), CLASSES)


# -- registry and config ------------------------------------------------------------------------


def test_registry_builds_every_builtin_by_name():
    assert {"small_cnn"} <= set(available("attention"))
    assert {"small_cnn", "resnet18", "timm"} <= set(available("features"))
    assert "linear" in available("classifier")
    x = torch.rand(2, 3, 64, 64)
    small = build("features", "small_cnn")
    assert small(x).shape == (2, small.out_features)
    assert torch.allclose(small(x).norm(dim=1), torch.ones(2))
    resnet = build("features", "timm", arch="resnet10t")
    assert resnet(x).shape == (2, 512) == (2, resnet.out_features)


def test_running_centre_tracks_the_mean_in_training_and_freezes_it_in_evaluation():
    from wsi_ats.models.features import RunningCenter

    centre = RunningCenter(3, momentum=0.5).train()
    first = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    assert torch.allclose(centre(first).mean(dim=0), torch.zeros(3))  # the first batch sets the mean
    centre(torch.full((2, 3), 4.0))
    assert torch.allclose(centre.mean, torch.tensor([3.0, 3.0, 3.0]))  # halfway to the new batch
    centre.eval()
    assert torch.allclose(centre(torch.zeros(1, 3)), -torch.full((1, 3), 3.0))
    assert torch.allclose(centre.mean, torch.tensor([3.0, 3.0, 3.0]))


def test_registry_errors_say_what_exists():
    with pytest.raises(ValueError, match="available: .*small_cnn"):
        build("features", "no_such_net")
    with pytest.raises(ValueError, match="takes no parameter.*bogus"):
        build("attention", "small_cnn", bogus=1)


@pytest.mark.parametrize("padding, lost", [("valid", 6), ("same", 0)])
def test_attention_net_geometry_matches_its_output(padding, lost):
    net = build("attention", "small_cnn", padding=padding)
    assert net.receptive_field == lost
    assert net(torch.rand(1, 3, 40, 50)).shape == (1, 40 - lost, 50 - lost)


def test_the_attention_nets_tanh_is_torch_tanh_with_and_without_autograd():
    from wsi_ats.models.attention import Tanh

    x = torch.randn(2, 8, 11, 13) * 4
    kept = x.clone()
    with torch.no_grad():
        torch.testing.assert_close(Tanh()(x), torch.tanh(x), rtol=0, atol=3e-7)
    torch.testing.assert_close(x, kept, rtol=0, atol=0)  # the in-place identity works on a copy
    leaf = x.clone().requires_grad_()
    Tanh()(leaf).sum().backward()
    torch.testing.assert_close(leaf.grad, 1 - torch.tanh(x) ** 2)


def test_recipe_in_pipelines_builds_a_model():
    config = load_config(ROOT / "pipelines" / "synthetic_wsi.toml")
    model = ATSModel.from_config(config.model, CLASSES)
    assert model.config == config.model
    assert ModelConfig.from_dict(config.model.to_dict()) == config.model


def test_unknown_recipe_key_is_an_error_naming_file_and_key(tmp_path):
    text = (ROOT / "pipelines" / "synthetic_wsi.toml").read_text().replace("n_patches", "n_patchez")
    path = tmp_path / "typo.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"typo\.toml.*n_patchez"):
        load_config(path)


# -- the tensor forward --------------------------------------------------------------------------


def random_patches(indices: torch.Tensor) -> torch.Tensor:
    """A patch source without a slide: one fixed random 16-px patch per cell."""
    table = torch.randint(0, 256, (100, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return table[indices.reshape(-1)]


def test_normalize_maps_uint8_to_the_nets_input_range_channels_first():
    model = tiny_model()
    x = model.normalize(torch.tensor([[[[0, 128, 255]]]], dtype=torch.uint8))
    assert x.shape == (1, 3, 1, 1) and x.dtype == torch.float32
    torch.testing.assert_close(x.flatten(), torch.tensor([-2.0, 128 / 255 / 0.25 - 2.0, 2.0]))
    with pytest.raises(ValueError, match="uint8"):
        model.normalize(torch.zeros(1, 4, 4, 3))


def test_forward_draws_n_cells_per_draw_and_asks_for_all_patches_at_once():
    model = tiny_model().eval()
    asked = []

    def patches(indices):
        asked.append(tuple(indices.shape))
        return random_patches(indices)

    with torch.no_grad():
        out = model(torch.randn(100), patches, draws=3, generator=torch.Generator().manual_seed(0))
    assert asked == [(3, model.n_patches)]
    assert out.logits.shape == (3, len(CLASSES)) and out.attention.shape == (1, 100)
    assert out.indices.shape == out.probs.shape == (3, model.n_patches)
    torch.testing.assert_close(out.probs, out.attention[0][out.indices])


def test_forward_gradients_reach_every_net():
    model = tiny_model().train()
    out = model(torch.randn(100, requires_grad=True), random_patches, generator=torch.Generator().manual_seed(0))
    (torch.nn.functional.cross_entropy(out.logits, torch.tensor([1])) + model.regularizer(out.attention)).backward()
    for net in (model.feature_net, model.classifier):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_models_package_imports_no_slide_machinery():
    """Networks are only networks: no reader, fetch, tissue, engine or output module behind them."""
    import subprocess
    import sys

    code = (
        "import sys, wsi_ats.models; "
        "bad = [m for m in sys.modules if m.startswith(('wsi_ats.readers', 'wsi_ats.engine', 'wsi_ats.outputs', 'wsi_ats.pipeline'))]; "
        "print(bad); sys.exit(bool(bad))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
