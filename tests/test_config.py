"""The one recipe builder: `from_table` and `read_toml` of `wsi_ats.models.config`, which every recipe goes through."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from wsi_ats.models.config import ConfigError, TrainConfig, from_table, read_toml


@dataclass(frozen=True)
class Canvas:
    edge: int = 500
    scale: float = 0.5

    def __post_init__(self) -> None:
        if self.edge < 1:
            raise ValueError(f"edge must be positive, got {self.edge}")


def test_from_table_builds_the_dataclass_and_takes_an_integer_where_a_float_is_expected():
    canvas = from_table(Canvas, {"edge": 250, "scale": 1}, source="r.toml", name="dataset")
    assert canvas == Canvas(edge=250, scale=1.0) and isinstance(canvas.scale, float)


def test_from_table_rejects_an_unknown_key_naming_the_source_the_table_and_the_known_keys():
    with pytest.raises(ConfigError, match=r"^r\.toml: \[dataset\]: unknown key\(s\) edges; known: edge, scale$"):
        from_table(Canvas, {"edges": 3}, source="r.toml", name="dataset")


def test_from_table_reports_the_dataclass_own_check_naming_the_source_and_the_table():
    with pytest.raises(ConfigError, match=r"^r\.toml: \[dataset\]: edge must be positive, got 0$"):
        from_table(Canvas, {"edge": 0}, source="r.toml", name="dataset")


def test_from_table_builds_the_package_train_config_as_load_config_does():
    assert from_table(TrainConfig, {"epochs": 3, "lr": 1}, source="r.toml", name="train") == TrainConfig(epochs=3, lr=1.0)


def test_read_toml_names_the_file_when_it_is_missing_or_not_toml(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"absent\.toml: recipe not found"):
        read_toml(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nepochs = 3\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        read_toml(bad)
