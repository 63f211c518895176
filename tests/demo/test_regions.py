"""The content mask behind the demo trainer's ``--region-weight``: found from a latent alone, it must mark where the
renderer drew the object (ground truth: we drew it)."""
import torch
import torch.nn.functional as F

from safecfg_core.demo.regions import content_mask
from safecfg_core.demo.render import random_scenes, render_scenes
from safecfg_core.demo.world import load_demo_world


def test_content_mask_marks_the_drawn_object_cells():
    world = load_demo_world()
    scenes = random_scenes(48, seed=21, harm_fraction=0.0)
    images, cover = render_scenes(scenes, seed=22, return_object=True)
    mask = content_mask(world.vae, world.vae.encode(images.permute(0, 2, 3, 1)))
    truth = F.avg_pool2d(cover, 8)
    assert mask.shape == truth.shape == (48, 1, 8, 8)
    err = (mask - truth).abs()
    print(f"content mask vs drawn coverage per cell: mean |error| {err.mean():.3f}, max {err.max():.3f}")
    assert err.mean() < 0.05
    # cells the object does not touch at all are (nearly) never marked, cells it fills always are
    assert mask[truth == 0].mean() < 0.02 and mask[truth == 1].min() > 0.5
