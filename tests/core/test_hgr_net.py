"""The HGR network: shapes, pairing of rows, pooled vectors, dtypes, zero initialisation."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safecfg_core import Cond
from safecfg_core.errors import HGRMismatchError
from safecfg_core.hgr import HarmfulGuidanceRedirector, HGRBundle, HGRConfig

torch.set_num_threads(1)


def _nonzero_net(pooled_dim: int = 0, seed: int = 0) -> HarmfulGuidanceRedirector:
    """A small HGR with random (non-zero) output heads, as after training."""
    b = HGRBundle.create(HGRConfig(token_dim=16, pooled_dim=pooled_dim, model_family="test", width=32, depth=2, heads=4),
                         seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        b.net.out_proj.weight.copy_(0.1 * torch.randn(b.net.out_proj.weight.shape, generator=g))
        if pooled_dim:
            b.net.pooled_out_proj.weight.copy_(0.1 * torch.randn(b.net.pooled_out_proj.weight.shape, generator=g))
    return b.net.eval()


NET = _nonzero_net()
NET_POOLED = _nonzero_net(pooled_dim=8, seed=1)

lengths = st.sampled_from([1, 5, 77, 154, 231])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.integers(1, 3), tc=lengths, tu=lengths, pooled=st.booleans(), seed=st.integers(0, 2**16))
def test_delta_has_u_shape_and_rows_are_independent(batch: int, tc: int, tu: int, pooled: bool, seed: int) -> None:
    net = NET_POOLED if pooled else NET
    g = torch.Generator().manual_seed(seed)
    c = Cond(torch.randn(batch, tc, 16, generator=g), torch.randn(batch, 8, generator=g) if pooled else None)
    u = Cond(torch.randn(batch, tu, 16, generator=g), torch.randn(batch, 8, generator=g) if pooled else None)
    with torch.no_grad():
        d = net(c, u)
        assert d.tokens.shape == u.tokens.shape
        assert (d.pooled is not None) == pooled
        if pooled:
            assert d.pooled.shape == u.pooled.shape
        assert torch.isfinite(d.tokens).all()
        # Row i of Delta depends on (c[i], u[i]) only: computing a row alone gives the same result.
        for i in range(batch):
            di = net(c.index([i]), u.index([i]))
            torch.testing.assert_close(di.tokens, d.tokens[i:i + 1], rtol=1e-5, atol=1e-6)
            if pooled:
                torch.testing.assert_close(di.pooled, d.pooled[i:i + 1], rtol=1e-5, atol=1e-6)


def test_delta_depends_on_c() -> None:
    g = torch.Generator().manual_seed(0)
    u = Cond(torch.randn(1, 77, 16, generator=g))
    c1, c2 = Cond(torch.randn(1, 77, 16, generator=g)), Cond(torch.randn(1, 77, 16, generator=g))
    with torch.no_grad():
        assert not torch.allclose(NET(c1, u).tokens, NET(c2, u).tokens)


def test_pooled_input_reaches_both_outputs() -> None:
    """SDXL: the pooled vectors are read (they change token and pooled Delta) and a pooled Delta comes out."""
    g = torch.Generator().manual_seed(2)
    c = Cond(torch.randn(2, 77, 16, generator=g), torch.randn(2, 8, generator=g))
    u = Cond(torch.randn(2, 77, 16, generator=g), torch.randn(2, 8, generator=g))
    c_other_pooled = Cond(c.tokens, torch.randn(2, 8, generator=g))
    with torch.no_grad():
        d1, d2 = NET_POOLED(c, u), NET_POOLED(c_other_pooled, u)
    assert not torch.allclose(d1.tokens, d2.tokens)
    assert not torch.allclose(d1.pooled, d2.pooled)
    with pytest.raises(HGRMismatchError, match="pooled"):
        NET_POOLED(Cond(c.tokens), Cond(u.tokens))
    with pytest.raises(HGRMismatchError, match="pooled vector is 5 wide"):
        NET_POOLED(Cond(c.tokens, torch.zeros(2, 5)), Cond(u.tokens, torch.zeros(2, 5)))


@pytest.mark.parametrize("pooled_dim", [0, 8])
def test_zero_init_gives_exact_zero_and_trains(pooled_dim: int) -> None:
    net = HarmfulGuidanceRedirector(HGRConfig(token_dim=16, pooled_dim=pooled_dim, width=32, depth=1, heads=4))
    g = torch.Generator().manual_seed(3)
    c = Cond(torch.randn(2, 154, 16, generator=g) * 30, torch.randn(2, 8, generator=g) if pooled_dim else None)
    u = Cond(torch.randn(2, 77, 16, generator=g), torch.randn(2, 8, generator=g) if pooled_dim else None)
    d = net(c, u)
    assert torch.count_nonzero(d.tokens) == 0
    if pooled_dim:
        assert torch.count_nonzero(d.pooled) == 0
    # Zero heads still receive gradients (otherwise training could never leave zero).
    loss = (d.tokens - 1).pow(2).mean() + ((d.pooled - 1).pow(2).mean() if pooled_dim else 0)
    loss.backward()
    assert net.out_proj.weight.grad.abs().sum() > 0
    if pooled_dim:
        assert net.pooled_out_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("net_dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("in_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_runs_in_net_dtype_returns_u_dtype(net_dtype: torch.dtype, in_dtype: torch.dtype) -> None:
    net = _nonzero_net(pooled_dim=8, seed=4).to(net_dtype)
    g = torch.Generator().manual_seed(4)
    c = Cond(torch.randn(2, 77, 16, generator=g).to(in_dtype), torch.randn(2, 8, generator=g).to(in_dtype))
    u = Cond(torch.randn(2, 154, 16, generator=g).to(in_dtype), torch.randn(2, 8, generator=g).to(in_dtype))
    with torch.no_grad():
        d = net(c, u)
        ref = _nonzero_net(pooled_dim=8, seed=4)(c.to(torch.float32), u.to(torch.float32))
    assert d.tokens.dtype == in_dtype and d.pooled.dtype == in_dtype
    assert torch.isfinite(d.tokens.float()).all()
    tol = 1e-5 if (net_dtype == torch.float32 and in_dtype == torch.float32) else 0.1
    torch.testing.assert_close(d.tokens.float(), ref.tokens, rtol=tol, atol=tol)


def test_mismatched_inputs_are_explained() -> None:
    c = Cond(torch.zeros(2, 77, 16))
    with pytest.raises(HGRMismatchError, match="expects 16"):
        NET(Cond(torch.zeros(2, 77, 12)), c)
    with pytest.raises(ValueError, match="c has 2 rows and u has 3"):
        NET(c, Cond(torch.zeros(3, 77, 16)))


def test_position_embedding_is_periodic_in_chunks() -> None:
    """A 154-token conditioning that is a 77-token one repeated (ComfyUI padding) gets a repeated Delta."""
    g = torch.Generator().manual_seed(6)
    c = Cond(torch.randn(1, 77, 16, generator=g))
    u77 = torch.randn(1, 77, 16, generator=g)
    with torch.no_grad():
        d = NET(c, Cond(u77.repeat(1, 2, 1))).tokens
    torch.testing.assert_close(d[:, :77], d[:, 77:], rtol=1e-4, atol=1e-5)
