"""timm encoders as the feature net: local weights, frozen or fine-tuned, their own normalisation (no downloads)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from wsi_ats.models import ATSModel, ConfigError, LevelSpec, ModelConfig, NetSpec, TissueSpec, build
from wsi_ats.models.timm_features import import_timm

CLASSES = ("negative", "positive")
VIT = {"img_size": 32, "patch_size": 16, "embed_dim": 48, "depth": 1, "num_heads": 2}


def save_random(arch: str, path: Path, seed: int = 0, **kwargs) -> torch.nn.Module:
    """A random-initialised timm net (with its classifier head, as a published checkpoint has) saved to ``path``."""
    timm = import_timm()
    torch.manual_seed(seed)
    net = timm.create_model(arch, pretrained=False, **kwargs).eval()
    state = net.state_dict()
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": state}, path)
    return net


def encoder_config(features: NetSpec, patch_size: int = 32) -> ModelConfig:
    return ModelConfig(
        attention=NetSpec("small_cnn", (("channels", 4),)),
        features=features,
        classifier=NetSpec("linear"),
        low=LevelSpec(downsample=4),
        high=LevelSpec(downsample=1),
        patch_size=patch_size,
        n_patches=3,
        tile=16,
        tissue=TissueSpec(downsample=16),
    )


def spec(**params) -> NetSpec:
    return NetSpec("timm", tuple(sorted(params.items())))


@pytest.mark.parametrize(
    ("arch", "suffix", "kwargs"),
    [("resnet10t", ".safetensors", {}), ("vit_tiny_patch16_224", ".pth", VIT)],
)
def test_a_timm_net_loads_from_a_local_weights_file_and_embeds_as_timm_does(tmp_path, arch, suffix, kwargs):
    reference = save_random(arch, tmp_path / f"w{suffix}", **kwargs)
    reference.reset_classifier(0)
    net = build("features", "timm", arch=arch, weights=str(tmp_path / f"w{suffix}"), timm_kwargs=kwargs).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = reference(x)
    assert net(x).shape == (2, net.out_features) == expected.shape
    assert torch.allclose(net(x), expected, atol=1e-5)


def test_without_weights_the_net_differs_so_the_file_was_really_read(tmp_path):
    save_random("resnet10t", tmp_path / "w.safetensors", seed=1)
    loaded = build("features", "timm", arch="resnet10t", weights=str(tmp_path / "w.safetensors")).eval()
    torch.manual_seed(2)
    fresh = build("features", "timm", arch="resnet10t").eval()
    x = torch.randn(1, 3, 32, 32)
    assert not torch.allclose(loaded(x), fresh(x))


def test_patches_are_normalised_with_the_pretrained_config_and_the_attention_keeps_its_own():
    model = ATSModel.from_config(encoder_config(spec(arch="resnet10t")), CLASSES).eval()
    timm_cfg = model.feature_net.net.pretrained_cfg
    assert model.feature_stats == (tuple(timm_cfg["mean"]), tuple(timm_cfg["std"])) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    patches = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    x = patches.permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(timm_cfg["mean"]).view(1, 3, 1, 1), torch.tensor(timm_cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model.encode(patches), model.feature_net.net((x - mean) / std), atol=1e-5)
        assert torch.allclose(model.normalize(patches), (x - 0.5) / 0.25)  # the attention net's inputs: unchanged


def test_recipe_mean_and_std_override_the_pretrained_config():
    net = build("features", "timm", arch="resnet10t", mean=[0.5, 0.5, 0.5], std=[0.2, 0.2, 0.2])
    assert (net.mean, net.std) == ((0.5, 0.5, 0.5), (0.2, 0.2, 0.2))


def training_step(model: ATSModel) -> None:
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    patches = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    out = model(torch.randn(10), lambda idx: patches[: idx.numel()], generator=torch.Generator().manual_seed(0))
    torch.nn.functional.cross_entropy(out.logits, torch.tensor([1])).backward()
    optimiser.step()


def test_a_frozen_encoder_does_not_change_in_a_training_step_and_keeps_no_activations():
    model = ATSModel.from_config(encoder_config(spec(arch="resnet10t", freeze=True)), CLASSES)
    before = {k: v.clone() for k, v in model.feature_net.state_dict().items()}
    classifier_before = [p.clone() for p in model.classifier.parameters()]
    training_step(model)
    assert not model.feature_net.net.training  # batch norm statistics stay as pretrained
    assert all(torch.equal(before[k], v) for k, v in model.feature_net.state_dict().items())
    assert all(p.grad is None for p in model.feature_net.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(classifier_before, model.classifier.parameters()))  # the head learns
    embedding = model.encode(torch.zeros(1, 32, 32, 3, dtype=torch.uint8))
    assert embedding.grad_fn is None and not embedding.requires_grad


def test_an_unfrozen_encoder_receives_gradients():
    model = ATSModel.from_config(encoder_config(spec(arch="resnet10t")), CLASSES)
    training_step(model)
    grads = [p.grad for p in model.feature_net.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_input_size_resizes_patches_to_what_the_encoder_expects():
    net = build("features", "timm", arch="vit_tiny_patch16_224", input_size=32, timm_kwargs=VIT).eval()
    assert net(torch.randn(1, 3, 48, 48)).shape == (1, 48)


def test_an_unknown_architecture_names_the_recipe_key():
    with pytest.raises(ConfigError, match=r"\[model.features\] arch = 'resnet_nope'"):
        build("features", "timm", arch="resnet_nope")
    with pytest.raises(ConfigError, match=r"needs arch"):
        build("features", "timm")


def test_a_bad_weights_file_names_the_recipe_key(tmp_path):
    missing = tmp_path / "absent.safetensors"
    with pytest.raises(ConfigError, match=r"weights = .*absent.safetensors.*file not found"):
        build("features", "timm", arch="resnet10t", weights=str(missing))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"weights = .*garbage.pth.*not a readable weights file"):
        build("features", "timm", arch="resnet10t", weights=str(garbage))
    save_random("resnet10t", tmp_path / "other.safetensors")
    with pytest.raises(ConfigError, match=r"weights = .*other.safetensors.*do not fit arch = 'resnet18'"):
        build("features", "timm", arch="resnet18", weights=str(tmp_path / "other.safetensors"))


def test_the_old_resnet18_name_builds_timms_resnet18_and_refuses_the_removed_sizes():
    net = build("features", "resnet18")
    assert net.out_features == 512 and type(net.net).__name__ == "ResNet"
    with pytest.raises(ConfigError, match="width/blocks .* are gone"):
        build("features", "resnet18", width=8)


def test_a_timm_recipe_round_trips_through_the_checkpoint_dict():
    config = encoder_config(spec(arch="resnet10t", freeze=True, mean=(0.1, 0.2, 0.3), timm_kwargs={"drop_rate": 0.0}))
    again = ModelConfig.from_dict(config.to_dict())
    assert again.to_dict() == config.to_dict()
    assert dataclasses.asdict(again)["features"]["name"] == "timm"


def test_a_relative_weights_path_in_a_recipe_is_relative_to_the_recipe(tmp_path, monkeypatch):
    from wsi_ats.models import load_config

    (tmp_path / "recipes").mkdir()
    recipe = tmp_path / "recipes" / "r.toml"
    recipe.write_text(
        "[model]\npatch_size = 32\nn_patches = 2\n[model.low]\ndownsample = 4\n[model.high]\ndownsample = 1\n"
        '[model.attention]\nname = "small_cnn"\n[model.classifier]\nname = "linear"\n'
        '[model.features]\nname = "timm"\narch = "resnet10t"\nweights = "../w/enc.safetensors"\nfreeze = true\n'
    )
    monkeypatch.chdir(tmp_path / "recipes")
    assert load_config(recipe).model.features.kwargs["weights"] == str(tmp_path / "w" / "enc.safetensors")


@pytest.mark.parametrize("name", ["synthetic_resnet50_frozen", "camelyon16_uni"])
def test_the_shipped_encoder_recipes_name_a_frozen_timm_net_with_weights_beside_the_recipe(name):
    from wsi_ats import recipes
    from wsi_ats.models import load_config

    features = load_config(recipes.path(name)).model.features
    assert features.name == "timm" and features.kwargs["freeze"] is True
    assert Path(features.kwargs["weights"]).is_absolute()
    assert import_timm().is_model(features.kwargs["arch"])


def test_a_frozen_encoder_in_training_encodes_each_patch_content_once():
    model = ATSModel.from_config(encoder_config(spec(arch="resnet10t", freeze=True)), CLASSES).train()
    calls = []
    model.feature_net.register_forward_hook(lambda _m, inputs, _o: calls.append(len(inputs[0])))
    patches = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    first = model.encode(patches)
    again = model.encode(torch.cat([patches[[2, 0]], torch.zeros(1, 32, 32, 3, dtype=torch.uint8)]))
    assert calls == [3, 1]  # only the new patch went through the encoder
    assert torch.equal(again[:2], first[[2, 0]])
    assert model.embedding_stats == {"hits": 2, "misses": 4}
    model.eval().encode(patches)
    assert calls == [3, 1, 3]  # no cache outside training


def copy_recipe(name: str, folder: Path) -> Path:
    """The shipped recipe ``name`` copied into ``folder``: its relative weights path now points inside ``folder.parent``."""
    from wsi_ats import recipes

    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / f"{name}.toml"
    copy.write_text(recipes.path(name).read_text())
    return copy


def test_the_resnet50_recipe_loads_its_weights_from_beside_the_recipe(tmp_path):
    from wsi_ats.models import load_config

    recipe = copy_recipe("synthetic_resnet50_frozen", tmp_path / "pipelines")
    weights = tmp_path / "experiments" / "encoder_pretrain" / "resnet50_synth.safetensors"
    weights.parent.mkdir(parents=True)
    reference = save_random("resnet50", weights, num_classes=3)
    model = ATSModel.from_config(load_config(recipe).model, CLASSES)
    assert model.feature_net.frozen and model.feature_net.out_features == 2048
    assert torch.equal(model.feature_net.net.conv1.weight, reference.conv1.weight)


def test_a_missing_recipe_weights_file_names_the_key_and_the_command_that_makes_it(tmp_path):
    from wsi_ats.models import load_config

    recipe = copy_recipe("synthetic_resnet50_frozen", tmp_path / "pipelines")
    with pytest.raises(ConfigError, match=r"^\[model.features\] weights = .*resnet50_synth.safetensors': file not found; "
                                          r"to get it: python -m experiments.encoder_pretrain.pretrain --arch resnet50"):  # fmt: skip
        ATSModel.from_config(load_config(recipe).model, CLASSES)


def test_train_with_a_missing_recipe_weights_file_exits_2_and_leaves_no_run_folder(tmp_path, capsys):
    from toy_cohort import write_toy_cohort

    from wsi_ats.cli import main
    from wsi_ats.exit_codes import EXIT_USAGE

    recipe = copy_recipe("synthetic_resnet50_frozen", tmp_path / "pipelines")
    manifest = write_toy_cohort(tmp_path / "cohort", splits=True)
    code = main(["train", "--manifest", str(manifest), "--config", str(recipe), "--out", str(tmp_path / "run")])
    assert code == EXIT_USAGE and "resnet50_synth.safetensors': file not found" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
