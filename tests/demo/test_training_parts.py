"""Parts of the demo model's network that its training recipe relies on: configs written before the text pool and
local mixing still load, the text pool reads the context, and local mixing follows the latent grid (including
latents that are not square). The training script's own loss parts are tested in tests/experiments."""
import torch

from safecfg_core.demo.denoiser import DemoDiT, _Block


def test_old_configs_load_without_the_new_parts():
    old = {"in_channels": 4, "size": 8, "width": 32, "depth": 1, "heads": 4, "context_dim": 384, "mlp_ratio": 2}
    net = DemoDiT(**old)
    assert net.text_pool is None and net.blocks[0].local is None
    assert not any("text_pool" in k or "local" in k for k in net.state_dict())
    new = DemoDiT(**dict(old, text_pool=1, local_mix=1))
    assert new.config["text_pool"] == 1 and new.config["local_mix"] == 1


def test_text_pool_reads_the_context():
    torch.manual_seed(0)
    net = DemoDiT(width=32, depth=1, heads=4, text_pool=1)
    torch.nn.init.normal_(net.text_pool.out.weight, std=0.1)  # zero-initialised: give it something to pass
    ctx = torch.randn(2, 77, 384)
    a = net.text_pool(net.ctx_proj(net.ctx_norm(ctx)))
    b = net.text_pool(net.ctx_proj(net.ctx_norm(ctx.flip(0))))
    assert a.shape == (2, 32) and torch.allclose(a.flip(0), b, atol=1e-6)  # one vector per prompt, row-wise
    assert not torch.allclose(a[0], a[1])


def test_local_mixing_follows_the_latent_grid_for_non_square_latents():
    """With attention switched off, the block is a pointwise MLP plus a depthwise 3x3 convolution over the latent
    grid, so it must commute with a one-column shift away from the borders. A block that laid the tokens out on
    the wrong grid (e.g. H and W swapped) would not."""
    torch.manual_seed(0)
    w, H, W = 16, 4, 7
    blk = _Block(w, heads=2, mlp_ratio=2, local_mix=True)
    with torch.no_grad():
        for lin in (blk.proj, blk.cproj):
            lin.weight.zero_()
            lin.bias.zero_()
        blk.ada.bias[5 * w:].fill_(1.0)  # gate of the MLP branch = 1; shifts and scales stay 0
    x = torch.randn(1, H, W, w)
    temb = torch.zeros(1, w)
    ctx = torch.randn(1, 5, w)
    out = blk(x.reshape(1, H * W, w), temb, ctx, (H, W)).reshape(1, H, W, w)
    shifted = torch.roll(x, 1, dims=2)
    out_s = blk(shifted.reshape(1, H * W, w), temb, ctx, (H, W)).reshape(1, H, W, w)
    assert torch.allclose(out_s[:, :, 2:W - 1], out[:, :, 1:W - 2], atol=1e-5)
    net = DemoDiT(width=32, depth=1, heads=4, text_pool=1, local_mix=1)
    assert net(torch.randn(2, 4, 8, 16), torch.tensor([10.0, 900.0]), context=torch.randn(2, 77, 384)).shape == (
        2, 4, 8, 16)
