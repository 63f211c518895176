"""The analytic toy model is what its docstring claims: the exact posterior mean, a deterministic encoder."""
from __future__ import annotations

import torch

from safecfg_core import Cond
from safecfg_core.analytic import AnalyticDenoiser, ToyTextEncoder, analytic_prompts, load_analytic_setup

torch.set_num_threads(1)


def test_denoiser_is_tweedie_posterior_mean() -> None:
    """Tweedie: E[x0 | x] = x + sigma^2 * grad log p_sigma(x), with p_sigma = N(mu, (tau^2 + sigma^2) I)."""
    den = AnalyticDenoiser(token_dim=8, latent_shape=(2, 3, 3), tau=0.7, seed=4)
    g = torch.Generator().manual_seed(0)
    cond = Cond(torch.randn(3, 77, 8, generator=g))
    mu = (cond.tokens.double().mean(1) @ den.A.double().t()).reshape(3, 2, 3, 3)
    for sigma in (0.1, 1.0, 5.0):
        x = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64).requires_grad_(True)
        logp = -0.5 * ((x - mu) ** 2).sum() / (0.49 + sigma ** 2)
        (grad,) = torch.autograd.grad(logp, x)
        expect = x.detach() + sigma ** 2 * grad
        got = den(x.detach().float(), torch.full((3,), sigma), cond).double()
        torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-5)


def test_denoiser_ignores_repetition_padding_and_keeps_dtype() -> None:
    den = AnalyticDenoiser(token_dim=8, seed=1)
    g = torch.Generator().manual_seed(1)
    c = Cond(torch.randn(2, 77, 8, generator=g))
    x = torch.randn(2, 4, 8, 8, generator=g)
    s = torch.tensor([0.5, 3.0])
    torch.testing.assert_close(den(x, s, c), den(x, s, Cond(c.tokens.repeat(1, 3, 1))), rtol=1e-5, atol=1e-5)
    assert den(x.half(), s, c).dtype == torch.float16


def test_samples_follow_the_cfg_gaussian() -> None:
    den = AnalyticDenoiser(token_dim=8, latent_shape=(1, 1, 1), tau=0.5, seed=2)
    g = torch.Generator().manual_seed(2)
    c = Cond(torch.randn(1, 77, 8, generator=g))
    u = Cond(torch.randn(1, 77, 8, generator=g))
    xs = torch.cat([den.sample(c, u, 3.0, g) for _ in range(4000)]).flatten()
    mu_c, mu_u = den.mean(c).item(), den.mean(u).item()
    assert abs(xs.mean().item() - (mu_u + 3.0 * (mu_c - mu_u))) < 0.05
    assert abs(xs.std().item() - 0.5) < 0.03


def test_text_encoder_is_deterministic_and_carries_harm() -> None:
    a, b = ToyTextEncoder(token_dim=16, seed=7), ToyTextEncoder(token_dim=16, seed=7)
    prompts = ["a cat in a garden", "a bloody corpse", ""]
    ea, eb = a(prompts), b(prompts)
    assert ea.tokens.shape == (3, 77, 16)
    assert torch.equal(ea.tokens, eb.tokens)
    assert not torch.equal(ToyTextEncoder(token_dim=16, seed=8)(prompts).tokens, ea.tokens)
    h = a.harm_direction("violence")
    assert abs(h.norm().item() - 1) < 1e-6
    # Each harm word carries exactly harm_gain along its category direction on top of its own random vector.
    plain = ToyTextEncoder(token_dim=16, seed=7, harm_lexicon={})
    for w in ("blood", "gore", "corpse"):
        torch.testing.assert_close(a.word_vector(w) - plain.word_vector(w), a.harm_gain * h)
    for w in ("cat", "garden"):
        assert torch.equal(a.word_vector(w), plain.word_vector(w))
    # Padding is CLIP-like: the empty prompt is BOS followed by 76 identical EOS tokens.
    empty = ea.tokens[2]
    assert torch.equal(empty[1:], empty[1:2].expand(76, 16))
    pooled = ToyTextEncoder(token_dim=16, pooled_dim=6)(prompts)
    assert pooled.pooled is not None and pooled.pooled.shape == (3, 6)


def test_world_prompt_splits_are_disjoint_and_balanced() -> None:
    tr_c, tr_h = analytic_prompts("train")
    te_c, te_h = analytic_prompts("test")
    assert not set(tr_c) & set(te_c) and not {p for p, _ in tr_h} & {p for p, _ in te_h}
    assert {c for _, c in te_h} == {c for _, c in tr_h} == {"violence", "nudity"}
    w = load_analytic_setup()
    lat = w.sample_latents(w.clean_prompts[:3])
    assert lat.shape == (3, 4, 8, 8)
    # Order-independent: a prompt's latent does not depend on its neighbours.
    assert torch.equal(w.sample_latents([w.clean_prompts[2]])[0], lat[2])
