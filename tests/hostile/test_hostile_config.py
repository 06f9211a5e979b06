"""Hostile configs: malformed YAML, wrong types, unknown keys, out-of-range values and YAML that
tries to build objects. Each is refused by ``contrastkit train`` with one line naming the key or the
file, exit code 2, before anything is written."""

from __future__ import annotations

import json

import pytest
from hostile_cli import one_line_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contrastkit.train.config import ConfigError, load_config

BAD_FILES = {
    "unclosed": ("train: {steps: 3\n", "is not valid YAML"),
    "tab_indent": ("train:\n\tsteps: 3\n", "is not valid YAML"),
    "a_list": ("- train\n- steps\n", "expected a mapping"),
    "a_scalar": ("42\n", "expected a mapping"),
    "python_object": ("train: !!python/object/apply:os.system ['touch PWNED']\n", "is not valid YAML"),
    "section_not_a_mapping": ("train: 3\n", "train"),
    "unknown_section": ("trian: {steps: 3}\n", "trian"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_bad_config_file_is_named_and_nothing_is_run(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text, message = BAD_FILES[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    err = one_line_error(["train", str(path), "--out", str(tmp_path / "run")], capsys)
    assert message in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "PWNED").exists()


def test_non_utf8_and_empty_config_files(tmp_path, capsys):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"train:\n  steps: \xff\xfe\x00\x81\n")
    assert "binary.yaml" in one_line_error(["train", str(binary), "--out", str(tmp_path / "r")], capsys)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")  # an empty file is the defaults, not an error
    assert load_config(empty).train.steps == load_config(None).train.steps


def test_a_folder_given_as_the_config_is_named(tmp_path, capsys):
    assert str(tmp_path) in one_line_error(["train", str(tmp_path), "--out", str(tmp_path / "r")], capsys)


BAD_VALUES = [
    ("train.steps=ten", "train.steps"),
    ("train.steps=-5", "train.steps"),
    ("train.steps=1e400", "train.steps"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.batch_size=[16]", "train.batch_size"),
    ("optim.lr=.nan", "optim.lr"),
    ("optim.lr=.inf", "optim.lr"),
    ("optim.lr=0", "optim.lr"),
    ("optim.betas=[0.9]", "optim.betas"),
    ("optim.grad_clip=-1", "optim.grad_clip"),
    ("data.image_size=2", "data.image_size"),
    ("data.max_bad_fraction=1.5", "data.max_bad_fraction"),
    ("data.tokenizer=sentencepiece", "data.tokenizer"),
    ("data.train=shapes", "data.train"),
    ("data.train={name: nosuchset}", "nosuchset"),
    ("loss.name=nosuchloss", "loss.name"),
    ("loss.options={temprature: 0.1}", "temprature"),
    ("train.precision=fp8", "train.precision"),
    ("train.device=tpu", "train.device"),
    ("trian.steps=3", "trian"),
    ("train.stpes=3", "train.stpes"),
    ("model.embed_dim=-1", "embed_dim"),
    ("model.towers={}", "model.towers"),
    ("model.towers.image={type: vit9000}", "vit9000"),
    ("seed=abc", "seed"),
    ("loss.defense={name: [cleanclip]}", "loss.defense.name"),
    ("loss.defense={name: {a: 1}}", "loss.defense.name"),
    ("loss.defense={name: unlearn, fraction: [0.1]}", "loss.defense.fraction"),
    ("train.init_from=''", "train.init_from"),
]


@pytest.mark.parametrize(("override", "key"), BAD_VALUES)
def test_each_bad_value_names_its_key(override, key, tmp_path, capsys):
    err = one_line_error(["train", "--set", override, "--out", str(tmp_path / "run")], capsys)
    assert key in err
    assert not (tmp_path / "run").exists()


def test_a_malformed_override_is_named(tmp_path, capsys):
    for override in ("train.steps", "=3", "train.steps={3", "train..steps=3"):
        err = one_line_error(["train", "--set", override, "--out", str(tmp_path / "run")], capsys)
        assert "--set" in err or "train" in err


# Any key path and any YAML scalar or small collection: the config either loads or raises the one
# ConfigError; never a TypeError/KeyError/AttributeError from deep inside.
KEYS = st.sampled_from(
    [
        "seed",
        "train.steps",
        "train.batch_size",
        "train.micro_batch_size",
        "train.precision",
        "train.log_every",
        "optim.lr",
        "optim.betas",
        "optim.warmup_steps",
        "data.image_size",
        "data.train",
        "data.eval",
        "data.views",
        "data.caption_sentences",
        "data.sampler",
        "loss.name",
        "loss.options",
        "loss.distributed",
        "loss.defense",
        "loss.defense.name",
        "train.init_from",
        "model.embed_dim",
        "model.towers",
        "model.towers.image",
        "eval.templates",
        "eval.knn_k",
        "nonsense.key",
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _yaml_value(value) -> str:
    return json.dumps(value)  # JSON is YAML 1.2; NaN/Infinity come out as plain strings for YAML


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=KEYS, value=VALUES)
def test_any_value_at_any_key_loads_or_raises_config_error(key, value):
    try:
        load_config(None, [f"{key}={_yaml_value(value)}"])
    except ConfigError as err:
        assert str(err)
