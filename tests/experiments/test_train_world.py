"""The demo world's training script still holds the recipe of the shipped weights, and its loss parts do their job."""
import math
import shlex

import torch

from experiments import train_world as tw
from safecfg_core.demo.world import WEIGHT_FILES, read_metadata

OLD_MODULE = "python -m safecfg_core.demo.train_world"  # where the script lived when the shipped weights were made


def _recorded_args(name):
    meta = read_metadata(WEIGHT_FILES[name])
    command = str(meta["command"])
    assert command.startswith((OLD_MODULE, tw.MODULE)), command
    argv = shlex.split(command)[3:]
    return meta, tw.build_parser().parse_args(argv)


def test_every_shipped_weight_files_command_runs_with_todays_options():
    """Each weight file records the command that made it; those options must all still exist, and what the run
    recorded beside them must be what the script's parser and constants give today."""
    for name in WEIGHT_FILES:
        meta, args = _recorded_args(name)
        assert args.seed == meta["seed"], name
    meta, args = _recorded_args("denoiser")
    assert (args.n_prompts, args.renders, args.lr) == (meta["n_prompts"], meta["renders"], meta["lr"])
    assert args.init == meta["init"] and meta["steps"] == meta["init_from"]["steps"] + args.steps
    base = tw.build_parser().parse_args(shlex.split(meta["init_from"]["command"])[3:])
    assert base.steps == meta["init_from"]["steps"]  # the base run used the default step count


def test_the_recipe_constants_are_the_shipped_ones():
    vae = read_metadata(WEIGHT_FILES["vae"])
    assert vae["phases"] == [{"steps": tw.VAE_STEPS, "lr": tw.VAE_LR, "decoder_only": False, "pool": tw.VAE_POOL}]
    assert vae["batch"] == tw.VAE_BATCH
    den = read_metadata(WEIGHT_FILES["denoiser"])
    assert (den["batch"], den["p_uncond"], den["ema"], den["min_snr"]) == (tw.BATCH, tw.P_UNCOND, tw.EMA, tw.MIN_SNR)
    assert den["config"] == tw.DIT_CONFIG
    check = den["check"]
    assert (check["n_prompts"], check["steps"], check["cfg"]) == (tw.CHECK_N, tw.CHECK_STEPS, tw.CHECK_CFG)
    ev = read_metadata(WEIGHT_FILES["evaluator"])
    assert (ev["steps"], ev["batch"], ev["config"]) == (tw.EVAL_STEPS, tw.EVAL_BATCH, {"width": tw.EVAL_WIDTH})


def test_min_snr_weight_caps_only_high_snr_steps():
    alpha_bar = torch.tensor([0.5, 5 / 6, 0.99, 0.001])  # SNR 1, 5, 99, ~0.001
    w = tw.min_snr_weight(alpha_bar, gamma=5.0)
    assert torch.allclose(w, torch.tensor([1.0, 1.0, 5 / 99, 1.0]), atol=1e-6)
    assert torch.equal(tw.min_snr_weight(alpha_bar, gamma=0.0), torch.ones(4))


def test_edge_loss_counts_a_moved_edge():
    x = torch.zeros(1, 1, 5, 9)
    x[..., 4:] = 1.0  # vertical edge between columns 3 and 4
    y = torch.zeros(1, 1, 5, 9)
    y[..., 5:] = 1.0  # the same edge one pixel to the right
    assert tw.edge_loss(x, x).item() == 0.0
    # horizontal differences differ by 1 at two of the 8 column gaps in every row; vertical ones not at all
    assert math.isclose(tw.edge_loss(y, x).item(), 2 / 8, rel_tol=1e-6)


def test_training_prompts_include_the_empty_and_the_concept_prompts():
    class Args:
        n_prompts, seed = 12, 0

    texts, scenes, text_idx = tw.training_texts_and_scenes(Args)
    assert texts[0] == "" and len(texts) == 1 + 12 + 2
    assert len(scenes) == len(text_idx) == 12 + 2 * tw.N_CONCEPT
    concept_scenes = scenes[12:]
    assert all(s.harmful and s.size == "large" for s in concept_scenes)
    assert {texts[i] for i in text_idx[12:]} == set(texts[-2:])
