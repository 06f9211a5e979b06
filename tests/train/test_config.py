"""The training config: defaults, YAML files, --set overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from contrastkit.train.config import Config, ConfigError, load_config, parse_overrides

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_the_defaults_are_valid_and_the_shapes_config_spells_them_out():
    default = load_config()
    assert default.data.train["name"] == "shapes" and default.loss.name == "clip"
    assert load_config(CONFIGS / "shapes-clip.yaml").to_dict() == default.to_dict()


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_config_loads(path):
    assert isinstance(load_config(path), Config)


def test_overrides_are_parsed_as_yaml_into_nested_keys():
    assert parse_overrides(["optim.lr=3e-4", "data.eval=null", "optim.betas=[0.9, 0.95]"]) == [
        (["optim", "lr"], 3e-4),  # read as YAML 1.2 does, also inside free-form options
        (["data", "eval"], None),
        (["optim", "betas"], [0.9, 0.95]),
    ]
    config = load_config(None, ["optim.lr=3e-4", "optim.betas=[0.9, 0.95]", "train.steps=5"])
    assert config.optim.lr == 3e-4 and config.optim.betas == (0.9, 0.95) and config.train.steps == 5
    assert isinstance(load_config(None, ["optim.lr=1"]).optim.lr, float)


def test_a_file_merges_key_by_key_and_replaces_the_model(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "optim:\n  lr: 0.01\nmodel:\n  towers:\n    image: {type: vit}\n    text: {type: transformer}\n"
    )
    config = load_config(path, ["train.steps=7"])
    assert config.optim.lr == 0.01 and config.optim.weight_decay == 0.1 and config.train.steps == 7
    assert config.model == {"towers": {"image": {"type": "vit"}, "text": {"type": "transformer"}}}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lrr=1"], r"optim.lrr: unknown key; valid keys of optim: betas, eps"),
        (["trian.steps=1"], r"trian: unknown key; valid keys: data, eval"),
        (["train.steps=ten"], r"train.steps: expected int; got 'ten'"),
        (["train.steps=2.5"], r"train.steps: expected int"),
        (["train.progress=3"], r"train.progress: expected bool"),
        (["train.steps=0"], r"train.steps: must be >= 1"),
        (["optim.lr=-1"], r"optim.lr: must be a positive finite number"),
        (["optim.betas=[0.9, 1.5]"], r"optim.betas: expected two numbers in \[0, 1\)"),
        (["train.precision=fp8"], r"train.precision: expected one of fp32, bf16, fp16"),
        (["train.device=tpu"], r"train.device: expected cpu, cuda"),
        (["data.sampler=class_balanced"], r"data.sampler: 'class_balanced' needs data.classes_per_batch"),
        (["data.train={name: shapes, manifest: x.tsv}"], r"data.train: give exactly one of 'name'"),
        (["data.max_bad_fraction=2"], r"data.max_bad_fraction: must lie in \[0, 1\]"),
        (["eval.templates=[no placeholder]"], r"eval.templates: each template needs a '\{\}'"),
        (["train.micro_batch_size=1000"], r"train.micro_batch_size: 1000 is larger than train.batch_size"),
        (["model.towers={}"], r"model.towers: expected a mapping"),
        (["train.steps.x=1"], r"--set train.steps.x: train.steps is not a mapping"),
        (["optim"], r"--set 'optim': expected KEY=VALUE"),
        (["optim..lr=1"], r"expected KEY=VALUE with a dotted key"),
        (["optim.lr=[1"], r"the value is not valid YAML"),
        (["optim=1"], r"optim: expected a mapping of keys"),
    ],
)
def test_each_bad_key_type_and_value_is_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_config(bad)


def test_exponent_floats_are_numbers_everywhere(tmp_path):
    assert load_config(None, ["loss.options={temperature: 5e-2}"]).loss.options == {"temperature": 0.05}
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 3e-4\nloss:\n  options: {temperature: 1e-1}\n")
    config = load_config(path)
    assert config.optim.lr == 3e-4 and config.loss.options == {"temperature": 0.1}


def test_an_override_replaces_the_value_at_its_key():
    config = load_config(None, ["model.towers.image={type: vit}", "data.train={manifest: pairs.tsv}"])
    assert config.model["towers"]["image"] == {"type": "vit"}
    assert "text" in config.model["towers"]
    assert config.data.train == {"manifest": "pairs.tsv"}
