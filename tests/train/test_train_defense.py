"""``loss.defense`` (CleanCLIP, RoCLIP, SafeCLIP, unlearning) through the Trainer, and ``train.init_from``."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_RUN, crash_at_step
from contrastkit.security.defenses import cleanclip_loss
from contrastkit.train.config import ConfigError, load_config
from contrastkit.train.trainer import Trainer

DEFENSES = {
    "cleanclip": "{name: cleanclip, word_dropout: 0.2}",
    "roclip": "{name: roclip, bank_size: 40, swap_every: 2}",
    "safeclip": "{name: safeclip, warmup_steps: 2, start_fraction: 0.5}",
    "unlearn": "{name: unlearn, fraction: 0.1}",
}


SHORT = ["train.steps=4", "train.checkpoint_every=2"]


def config(defense: str, *extra: str):
    return load_config(None, [*TINY_RUN, f"loss.defense={DEFENSES[defense]}", *extra])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["loss.defense={name: nope}"], r"loss.defense.name: expected one of cleanclip, roclip"),
        (["loss.defense={fraction: 0.1}"], "loss.defense.name"),
        (
            ["loss.defense={name: cleanclip, fraction: 0.1}"],
            "loss.defense.fraction: not an option of cleanclip",
        ),
        (["loss.defense={name: unlearn, fraction: 1.5}"], r"loss.defense.fraction: must lie in \[0.0, 1.0\)"),
        (["loss.defense={name: unlearn, target: -2}"], "loss.defense.target: must lie"),
        (["loss.defense={name: roclip, bank_size: 0}"], "loss.defense.bank_size: expected an integer >= 1"),
        (["loss.defense={name: roclip, swap_every: 1.5}"], "loss.defense.swap_every: expected an integer"),
        (
            ["loss.defense={name: roclip, swap_length: 0}"],
            "loss.defense.swap_length: expected an integer >= 1",
        ),
        (
            ["loss.defense={name: roclip, swap_every: 2, swap_length: 3}"],
            "loss.defense.swap_length: 3 exceeds swap_every 2",
        ),
        (
            ["loss.defense={name: safeclip, start_fraction: 0.8, end_fraction: 0.5}"],
            "loss.defense.start_fraction: 0.8 exceeds end_fraction",
        ),
        (["loss.defense={name: cleanclip}", "loss.name=siglip"], "set loss.name: clip"),
        (["loss.defense={name: cleanclip}", "loss.options={label_smoothing: 0.1}"], "loss.options"),
        (["loss.defense=cleanclip"], "loss.defense: expected"),
        (["train.init_from=7"], "train.init_from: expected"),
        (["loss.defense={name: [cleanclip]}"], "loss.defense.name: expected one of"),
        (["train.init_from=''"], "train.init_from: expected a checkpoint folder"),
    ],
)
def test_bad_defense_configs_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [*TINY_RUN, *overrides])


def test_defense_refuses_what_it_cannot_combine(tmp_path):
    bad = config("cleanclip", "data.second_caption=first_sentence", "data.caption_sentences=null")
    with pytest.raises(ConfigError, match="data.second_caption: cannot be combined with loss.defense"):
        Trainer(bad, tmp_path)


@pytest.mark.parametrize("defense", list(DEFENSES))
def test_each_defense_trains_a_few_steps(tmp_path, defense):
    trainer = Trainer(config(defense), tmp_path)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    losses = [trainer.train_step()[0] for _ in range(3 if defense in ("roclip", "safeclip") else 2)]
    assert all(torch.isfinite(torch.tensor(losses))) and min(losses) > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))
    assert int(trainer.objective.steps_done) == len(losses)
    if defense == "roclip":
        assert int(trainer.objective.bank.count) == 40  # 3 batches of 16, FIFO-capped


@pytest.mark.parametrize(
    "schedule, swapped",
    [
        ("", [False, True, False, True, False, True]),  # every 2nd step (step 0: empty bank)
        ("swap_every: 4, swap_length: 2", [False, False, True, True, False, False]),  # RoCLIP's epochs
    ],
)
def test_roclip_swaps_on_the_last_swap_length_steps_of_every_cycle(tmp_path, schedule, swapped):
    # a swap step trains the image tower only: the text tower's gradient is zero
    spec = "{name: roclip, bank_size: 40" + (", " + schedule if schedule else "") + "}"
    trainer = Trainer(
        load_config(None, [*TINY_RUN, f"loss.defense={spec}", "optim.grad_clip=null"]), tmp_path
    )
    text = list(trainer.model.towers["text"].parameters())
    seen = []
    for _ in swapped:
        trainer.train_step()
        seen.append(all(p.grad is None or not p.grad.any() for p in text))
    assert seen == swapped


def test_cleanclip_step_is_the_cleanclip_loss_of_the_views(tmp_path):
    trainer = Trainer(config("cleanclip"), tmp_path)
    batch, _ = trainer._batch()
    assert {"image_aug", "text_aug"} <= set(batch)
    assert batch["image_aug"].shape == batch["image"].shape
    emb = trainer._encode(batch)
    want = cleanclip_loss(
        emb["image"], emb["text"], emb["image_aug"], emb["text_aug"], trainer.model.scale(), 1.0
    )
    torch.testing.assert_close(trainer._loss(emb, batch), want)
    assert not torch.allclose(emb["image_aug"], emb["image"])


def test_gradcache_gives_the_plain_gradient(tmp_path):
    # roclip: step 1 fills the bank, step 2 swaps (the text tower's gradient is then zero)
    extra = ["optim.grad_clip=null", "loss.defense.swap_every=1"]
    runs = []
    for name, micro in (("plain", []), ("cached", ["train.micro_batch_size=5"])):
        trainer = Trainer(config("roclip", *extra, *micro), tmp_path / name)
        trainer.optimizer.step = lambda: None  # same weights in both steps
        values = [trainer.train_step()[0] for _ in range(2)]
        runs.append((values, [p.grad for p in trainer.model.parameters()]))
    (plain, plain_grads), (cached, cached_grads) = runs
    assert cached == pytest.approx(plain, rel=1e-5)
    for a, b in zip(cached_grads, plain_grads, strict=True):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("defense", ["roclip", "safeclip"])
def test_resume_continues_the_defense_exactly(tmp_path, defense):
    full = Trainer(config(defense, *SHORT), tmp_path / "full")
    full.fit()
    with crash_at_step(2):
        Trainer(config(defense, *SHORT), tmp_path / "resumed").fit()
    resumed = Trainer(config(defense, *SHORT), tmp_path / "resumed", resume=True)
    resumed.fit()
    assert int(resumed.objective.steps_done) == 4
    for a, b in zip(
        resumed.objective.state_dict().values(), full.objective.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(resumed.model.parameters(), full.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_init_from_starts_from_the_checkpoint_weights(tmp_path):
    base = load_config(None, [*TINY_RUN, "train.steps=3", "data.tokenizer=bpe", "data.vocab_size=300"])
    source = Trainer(base, tmp_path / "poisoned")
    source.fit()
    tuned_config = load_config(
        None,
        [
            *TINY_RUN,
            "data.tokenizer=bpe",
            "data.vocab_size=300",
            "seed=5",
            f"train.init_from={tmp_path / 'poisoned'}",
            f"loss.defense={DEFENSES['cleanclip']}",
        ],
    )
    tuned = Trainer(tuned_config, tmp_path / "tuned")
    for a, b in zip(tuned.model.state_dict().values(), source.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (tmp_path / "tuned" / "tokenizer.json").read_bytes() == (
        tmp_path / "poisoned" / "tokenizer.json"
    ).read_bytes()
    assert tuned.step == 0 and not tuned.optimizer.state  # fresh optimizer and steps
    tuned.train_step()


def test_init_from_errors_name_the_key(tmp_path):
    Trainer(load_config(None, [*TINY_RUN, "train.steps=1"]), tmp_path / "small").fit()
    other = load_config(None, [*TINY_RUN, "model.embed_dim=8", f"train.init_from={tmp_path / 'small'}"])
    with pytest.raises(ConfigError, match=r"train.init_from: .* does not fit this model .*other shapes"):
        Trainer(other, tmp_path / "other")
    missing = load_config(None, [*TINY_RUN, f"train.init_from={tmp_path / 'nowhere'}"])
    with pytest.raises(ConfigError, match="train.init_from: no checkpoint at"):
        Trainer(missing, tmp_path / "missing")
