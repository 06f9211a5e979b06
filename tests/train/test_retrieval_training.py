"""Retriever training on mined rows: mnrl (symmetric, GISTEmbed guide), margin_mse, GradCache, resume."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from contrastkit.errors import InputError
from contrastkit.losses.retrieval import margin_mse, mnrl
from contrastkit.models import build_model
from contrastkit.train.config import ConfigError, load_config
from contrastkit.train.mined import MinedPairsDataset, MinedSource
from contrastkit.train.objective import build_objective
from contrastkit.train.trainer import Trainer, train

WORDS = (
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma".split()
)


def mined_rows(n: int = 24, negatives: int = 3, scores: bool = True, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)

    def text(k: int) -> str:
        picks = torch.randint(len(WORDS), (k,), generator=g).tolist()
        return " ".join(WORDS[i] for i in picks)

    rows = []
    for i in range(n):
        row = {
            "query": f"q{i} {text(3)}",
            "positive": f"d{i} {text(6)}",
            "negatives": [text(6) for _ in range(negatives)],
        }
        if scores:
            row["scores"] = torch.rand(1 + negatives, generator=g).mul(10).tolist()
        rows.append(row)
    return rows


def write_rows(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def read_rows(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def run_config(path: str, *overrides: str):
    return load_config(
        None,
        [
            f"data.train={{mined: {path}}}",
            "data.eval=null",
            "data.tokenizer=byte",
            "data.max_length=24",
            "data.negatives=2",
            "model={towers: {text: {type: transformer, dim: 32, depth: 1, heads: 2}}, embed_dim: 16}",
            "loss.name=mnrl",
            "train.batch_size=8",
            "train.steps=3",
            "train.log_every=1",
            "train.checkpoint_every=2",
            "train.progress=false",
            "optim.warmup_steps=1",
            *overrides,
        ],
    )


def fit(config, run_dir, resume: bool = False) -> Trainer:
    """Train without the final evaluation and report (the losses are in log.csv)."""
    trainer = Trainer(config, run_dir, resume)
    trainer.fit()
    return trainer


def losses(run_dir) -> list[float]:
    with open(run_dir / "log.csv", newline="") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def tiny_bert(folder) -> str:
    """A random one-layer BERT with a word-level vocabulary, saved as a local HF folder."""
    transformers = pytest.importorskip("transformers")
    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *WORDS,
        *[f"q{i}" for i in range(30)],
        *[f"d{i}" for i in range(30)],
    ]
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    tokenizer.save_pretrained(str(folder))
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    transformers.BertModel(config).save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> str:
    return write_rows(tmp_path_factory.mktemp("mined") / "negatives.jsonl", mined_rows())


@pytest.fixture(scope="module")
def guide_dir(tmp_path_factory) -> str:
    return tiny_bert(tmp_path_factory.mktemp("guide") / "bert")


def first_batch(config, tmp_path):
    trainer = Trainer(config, tmp_path)
    batch, _ = trainer._batch()
    return trainer, batch, trainer._encode(batch)


# ---- each objective: a run, and the objective equals the loss on the batch's embeddings ---------


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["data.negatives=0"],
        ["loss.options={symmetric: true}"],
        ["loss.name=margin_mse"],
    ],
    ids=["mnrl", "mnrl-in-batch", "mnrl-symmetric", "margin_mse"],
)
def test_each_retrieval_objective_trains(tmp_path, data_file, overrides):
    assert fit(run_config(data_file, *overrides), tmp_path).step == 3
    values = losses(tmp_path)
    assert len(values) == 3 and all(torch.isfinite(torch.tensor(values)))


def test_mnrl_objective_is_mnrl_over_the_rows_negatives(tmp_path, data_file):
    trainer, batch, emb = first_batch(run_config(data_file, "loss.options={symmetric: true}"), tmp_path)
    assert set(emb) == {"text", "positive", "negative_1", "negative_2"}
    assert torch.allclose(emb["negative_2"].norm(dim=1), torch.ones(8))
    negatives = torch.stack([emb["negative_1"], emb["negative_2"]], dim=1)
    want = mnrl(emb["text"], emb["positive"], negatives, scale=trainer.model.scale(), symmetric=True)
    torch.testing.assert_close(trainer.objective(emb, batch), want)
    one_way = mnrl(emb["text"], emb["positive"], negatives, scale=trainer.model.scale())
    assert abs(float((want - one_way).detach())) > 1e-4
    # the rows' texts, in order: the query, the positive, then the first data.negatives negatives
    rows = read_rows(data_file)
    for i, raw in zip(batch["index"].tolist(), batch["raw_texts"], strict=True):
        assert list(raw) == [rows[i]["query"], rows[i]["positive"], *rows[i]["negatives"][:2]]


def test_margin_mse_uses_raw_dot_products_and_the_stored_scores(tmp_path, data_file):
    trainer, batch, emb = first_batch(run_config(data_file, "loss.name=margin_mse"), tmp_path)
    assert not torch.allclose(emb["text"].norm(dim=1), torch.ones(8))  # not normalised
    rows = read_rows(data_file)
    scores = torch.tensor([rows[i]["scores"][:3] for i in batch["index"].tolist()])
    q, p = emb["text"], emb["positive"]
    s_neg = torch.stack([(q * emb[f"negative_{k}"]).sum(1) for k in (1, 2)], dim=1)
    want = margin_mse((q * p).sum(1), s_neg, scores[:, 0], scores[:, 1:])
    torch.testing.assert_close(trainer.objective(emb, batch), want)


def test_gist_guide_masks_with_the_guide_models_embeddings(tmp_path, data_file, guide_dir):
    config = run_config(data_file, f"loss.guide={{type: hf, path: {guide_dir}, max_length: 16}}")
    trainer, batch, emb = first_batch(config, tmp_path / "gist")
    from contrastkit.train.retrieval import GuideEncoder

    guide = GuideEncoder({"type": "hf", "path": guide_dir, "max_length": 16})
    g = guide.embed_rows(batch["raw_texts"], 2, torch.device("cpu"))
    assert g[0].shape == (8, 16) and g[2].shape == (8, 2, 16)
    negatives = torch.stack([emb["negative_1"], emb["negative_2"]], dim=1)
    scale = trainer.model.scale()
    want = mnrl(emb["text"], emb["positive"], negatives, scale=scale, guide=g)
    torch.testing.assert_close(trainer.objective(emb, batch), want)
    plain = mnrl(emb["text"], emb["positive"], negatives, scale=scale)
    assert abs(float((want - plain).detach())) > 1e-4  # the guide masked something
    assert fit(config, tmp_path / "run").step == 3


# ---- GradCache and resume ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [["loss.options={symmetric: true}"], ["loss.name=margin_mse"]],
    ids=["mnrl-symmetric", "margin_mse"],
)
def test_gradcache_equals_the_full_batch_step(tmp_path, data_file, overrides):
    fit(run_config(data_file, *overrides), tmp_path / "full")
    fit(run_config(data_file, *overrides, "train.micro_batch_size=3"), tmp_path / "cached")
    full, cached = losses(tmp_path / "full"), losses(tmp_path / "cached")
    assert cached == pytest.approx(full, abs=1e-5, rel=1e-4)


def test_gradcache_with_the_gist_guide(tmp_path, data_file, guide_dir):
    guide = f"loss.guide={{type: hf, path: {guide_dir}, max_length: 16}}"
    fit(run_config(data_file, guide), tmp_path / "full")
    fit(run_config(data_file, guide, "train.micro_batch_size=3"), tmp_path / "cached")
    assert losses(tmp_path / "cached") == pytest.approx(losses(tmp_path / "full"), abs=1e-5, rel=1e-4)


def test_resume_is_exact(tmp_path, data_file, monkeypatch):
    dropout = "model.towers.text.dropout=0.1"  # resuming replays the dropout masks too
    config = run_config(data_file, "train.steps=4", dropout)
    fit(config, tmp_path / "full")
    original = Trainer.train_step

    def stop_after_two(self):
        if self.step == 2:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        fit(config, tmp_path / "resumed")
    monkeypatch.setattr(Trainer, "train_step", original)
    fit(config, tmp_path / "resumed", resume=True)
    assert losses(tmp_path / "resumed") == losses(tmp_path / "full")


# ---- the source and the config: errors -------------------------------------------------------------


def test_source_reads_rows_and_checks_negatives(tmp_path):
    path = write_rows(tmp_path / "rows.jsonl", mined_rows(n=4, negatives=2))
    source = MinedSource(path)
    assert len(source) == 4 and source.has_scores and source.modalities == ("text",)
    assert [source[i]["group"] for i in range(4)] == source.group_keys() and len(source.groups()[0]) == 4
    item = MinedPairsDataset(source, 1)[2]
    assert set(item) == {"index", "text", "positive", "negative_1", "scores", "raw_texts"}
    assert item["scores"].shape == (2,)
    with pytest.raises(InputError, match="row 1 has 2 negative"):
        MinedPairsDataset(source, 3)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '{"query": "a", "positive": "b", "negatives": ["c"], "scores": [1.0]}\n',
            "line 1 'scores' must list 2 numbers",
        ),
        ('{"query": "a", "positive": "b", "negatives": ["c"]\n', "line 1 is not valid JSON"),
        ('["a", "b"]\n', "line 1 must be a JSON object"),
        ('{"query": "a", "positive": "b", "negatives": []}\n', "line 1 needs at least one negative"),
        ('{"query": "a", "positive": "b", "negatives": "c"}\n', "line 1 needs at least one negative"),
        (
            '{"query": " ", "positive": "b", "negatives": ["c"]}\n',
            "row 1 has an empty or whitespace-only text",
        ),
        (
            '{"query": "a", "positive": "b", "negatives": ["c"], "scores": [1, NaN]}\n',
            "row 1 'scores' must be finite",
        ),
        (
            '{"query": "a", "positive": "b", "negatives": ["c"], "scores": [1, 0]}\n\n'
            '{"query": "c", "positive": "d", "negatives": ["e"]}\n',
            "row 2 differs from row 1 in having 'scores'",
        ),
        ("\n", "holds no rows"),
    ],
)
def test_bad_files_fail_naming_the_line(tmp_path, text, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        MinedSource(path)
    with pytest.raises(ConfigError, match=f"data.train: .*{message}"):
        Trainer(run_config(str(path)), tmp_path / "run")


def test_a_row_without_negatives_fails_when_negatives_are_used(tmp_path):
    rows = mined_rows(n=12, negatives=2)
    rows[5]["negatives"], rows[5]["scores"] = rows[5]["negatives"][:1], rows[5]["scores"][:2]
    path = write_rows(tmp_path / "rows.jsonl", rows)
    with pytest.raises(ConfigError, match="data.negatives: .*row 6 has 1 negative"):
        Trainer(run_config(path), tmp_path / "run")
    assert fit(run_config(path, "data.negatives=0", "train.steps=1"), tmp_path / "ok").step == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["loss.name=clip"], "mined rows .* train a retriever with mnrl or margin_mse"),
        (["loss.name=margin_mse", "data.negatives=0"], "margin_mse needs at least one mined negative"),
        (["loss.name=margin_mse", "loss.guide={type: hf, path: x}"], "GISTEmbed masking is an mnrl option"),
        (["loss.guide={type: transformer}"], "loss.guide: expected a text tower spec"),
        (["loss.guide={type: hf, path: /nonexistent}"], "loss.guide: HFTextTower: 'path' must be a local"),
        (["loss.options={symmetric: true}", "loss.guide={type: hf, path: x}"], "symmetric: GISTEmbed"),
        (["loss.options={negatives: 3}"], "loss.options.negatives: not an option of mnrl"),
    ],
)
def test_bad_retrieval_configs_fail_early(tmp_path, data_file, overrides, message):
    with pytest.raises(ConfigError, match=message):
        Trainer(run_config(data_file, *overrides), tmp_path)


def test_margin_mse_needs_scores_and_mined_data(tmp_path):
    path = write_rows(tmp_path / "rows.jsonl", mined_rows(n=12, scores=False))
    with pytest.raises(ConfigError, match="margin_mse trains on the teacher scores"):
        Trainer(run_config(path, "loss.name=margin_mse"), tmp_path / "a")
    with pytest.raises(ConfigError, match="data.negatives: 2 mined negatives per row need"):
        load_config(None, ["data.negatives=2"])
    with pytest.raises(ConfigError, match="data.eval: a retriever trained on mined rows"):
        load_config(None, [f"data.train={{mined: {path}}}"])
    model = build_model({"towers": {"text": {"type": "transformer", "vocab_size": 300}}})
    with pytest.raises(ConfigError, match="set data.train: {mined: path}"):
        build_objective(load_config(None, ["loss.name=margin_mse"]), model)


def test_the_retrieval_objective_needs_a_text_only_model(data_file):
    config = run_config(data_file)
    model = build_model(
        {"towers": {"text": {"type": "transformer", "vocab_size": 300}, "image": {"type": "cnn"}}}
    )
    with pytest.raises(ConfigError, match="one shared text tower"):
        build_objective(config, model)


def test_train_writes_the_run_files(tmp_path, data_file):
    metrics = train(run_config(data_file, "train.steps=1"), tmp_path)
    assert metrics["train/steps"] == 1
    assert (tmp_path / "report.html").is_file() and (tmp_path / "metrics.json").is_file()


def test_rows_sharing_a_query_or_a_positive_never_share_a_batch(tmp_path):
    # rows i and i + 8 have different queries but one positive text: batched together, each
    # positive would be the other row's in-batch false negative (an identical column)
    rows = mined_rows(n=16, negatives=2)
    for i in range(8):
        rows[i + 8]["positive"] = rows[i]["positive"]
    rows[3]["query"] = rows[5]["query"]  # and one repeated query
    path = write_rows(tmp_path / "rows.jsonl", rows)
    source = MinedSource(path)
    groups = source.group_keys()
    assert groups[0] == groups[8] and groups[3] == groups[5] == groups[11] == groups[13]
    assert len(set(groups)) == 7
    trainer = Trainer(run_config(path, "train.batch_size=4", "train.steps=20"), tmp_path / "run")
    for _ in range(12):
        batch, _ = trainer._batch()
        raw = batch["raw_texts"]
        assert len({r[0] for r in raw}) == len({r[1] for r in raw}) == len(raw)
