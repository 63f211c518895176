"""Parts of the demo world's training recipe: min-SNR weights, the VAE's edge loss, the DiT's text pool and
local mixing (including latents that are not square)."""
import math

import torch

from safecfg_core.demo.denoiser import DemoDiT, _Block
from safecfg_core.demo.render import COLORS, random_scenes, render_scenes
from safecfg_core.demo.render import _RGB_TABLE as RGB
from safecfg_core.demo.train_world import (edge_loss, latent_object_cells, min_snr_weight, object_weight_map,
                                           object_weighted_mse, render_pool)


def test_min_snr_weight_caps_only_high_snr_steps():
    alpha_bar = torch.tensor([0.5, 5 / 6, 0.99, 0.001])  # SNR 1, 5, 99, ~0.001
    w = min_snr_weight(alpha_bar, gamma=5.0)
    assert torch.allclose(w, torch.tensor([1.0, 1.0, 5 / 99, 1.0]), atol=1e-6)
    assert torch.equal(min_snr_weight(alpha_bar, gamma=0.0), torch.ones(4))


def test_edge_loss_counts_a_moved_edge():
    x = torch.zeros(1, 1, 5, 9)
    x[..., 4:] = 1.0  # vertical edge between columns 3 and 4
    y = torch.zeros(1, 1, 5, 9)
    y[..., 5:] = 1.0  # the same edge one pixel to the right
    assert edge_loss(x, x).item() == 0.0
    # horizontal differences differ by 1 at two of the 8 column gaps in every row; vertical ones not at all
    assert math.isclose(edge_loss(y, x).item(), 2 / 8, rel_tol=1e-6)


def test_object_coverage_is_where_the_benign_picture_leaves_the_background():
    """The coverage mask that weighs the decoder's loss marks the object's pixels and nothing else, even when a
    harm is drawn over the scene (it is computed before the harm)."""
    scenes = random_scenes(40, seed=3, harm_fraction=0.5, both_fraction=0.1)
    imgs, cover = render_scenes(scenes, seed=4, return_object=True)
    assert cover.shape == (40, 1, 64, 64) and torch.equal(imgs, render_scenes(scenes, seed=4))
    benign = render_scenes([s.benign() for s in scenes], seed=4)
    bg = torch.stack([RGB[COLORS.index(s.background)] for s in scenes]).view(40, 3, 1, 1)
    off_background = (benign - bg).abs().amax(1, keepdim=True) > 1e-4
    assert torch.equal(off_background, cover > 0)
    small = [i for i, s in enumerate(scenes) if s.size == "small"]
    large = [i for i, s in enumerate(scenes) if s.size == "large"]
    assert cover[small].mean() < cover[large].mean() / 2  # small shapes: a few percent of the picture


def test_object_weight_map_grows_the_object_and_keeps_the_rest_at_one():
    cover = torch.zeros(1, 1, 16, 16)
    cover[..., 8, 8] = 1.0
    w = object_weight_map(cover, 4.0)
    assert w[0, 0, 8, 8] == 5.0 and w[0, 0, 6, 10] == 5.0  # the object and a ring 2 pixels wide
    assert w[0, 0, 5, 8] == 1.0 and w[0, 0, 0, 0] == 1.0
    assert torch.equal(object_weight_map(cover, 0.0), torch.ones_like(cover))


def test_latent_object_cells_mark_the_cells_a_shape_touches():
    cover = torch.zeros(2, 1, 64, 64)
    cover[0, 0, 30:34, 30:34] = 0.5  # straddles the four centre cells
    cover[1, 0, 0:2, 60:64] = 1.0  # the top-right cell only
    cells = latent_object_cells(cover)
    assert cells.shape == (2, 1, 8, 8) and cells.dtype == torch.uint8
    assert cells[0, 0].nonzero().tolist() == [[3, 3], [3, 4], [4, 3], [4, 4]]
    assert cells[1, 0].nonzero().tolist() == [[0, 7]]


def test_object_weighted_mse_shifts_weight_to_the_object_only():
    target = torch.zeros(2, 4, 8, 8)
    objects = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    objects[:, :, 3, 3] = 1
    on_object = target.clone()
    on_object[:, :, 3, 3] = 1.0  # error on the object cell
    on_background = target.clone()
    on_background[:, :, 0, 0] = 1.0  # the same error on a background cell
    plain = (on_object - target).pow(2).mean((1, 2, 3))
    assert torch.allclose(object_weighted_mse(on_object, target, objects, 0.0), plain)
    w_obj = object_weighted_mse(on_object, target, objects, 3.0)
    w_bg = object_weighted_mse(on_background, target, objects, 3.0)
    assert torch.allclose(w_obj, 4 * w_bg)  # the object's error counts 1 + 3 times a background cell's
    # normalised per sample: an error spread evenly over every cell costs what it did without the weights
    even = torch.full_like(target, 0.5)
    assert torch.allclose(object_weighted_mse(even, target, objects, 3.0), torch.full((2,), 0.25))


def test_render_pool_small_fraction():
    scenes, _ = render_pool(200, seed=5)
    assert 0.35 < sum(s.size == "small" for s in scenes) / 200 < 0.65
    scenes_s, imgs, cover = render_pool(200, seed=5, small_fraction=0.8, with_objects=True)
    assert sum(s.size == "small" for s in scenes_s) / 200 > 0.8
    assert [s.shape for s in scenes_s] == [s.shape for s in scenes]  # same scenes, only sizes changed
    assert imgs.shape == (200, 3, 64, 64) and cover.shape == (200, 1, 64, 64)


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
