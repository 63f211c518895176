"""The training session and the run's reliability (issue 29): fingerprints cover every result setting, checkpoints
survive every interruption and resume exactly, existing HGRs are never replaced by accident, the latent cache grows
without being rewritten, and unusable targets and settings are refused before any work."""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from safecfg_core.analytic import load_analytic_setup
from safecfg_core.errors import CheckpointMismatch, HGRExistsError, TrainingInputError
from safecfg_core.hgr import HGRBundle, HGRConfig
from safecfg_core.train import (HarmfulPrompt, PromptSet, TrainConfig, TrainingSession, train_hgr,
                                training_fingerprint)

torch.set_num_threads(1)


def _world():
    setup = load_analytic_setup()
    setup.hgr_config = HGRConfig(token_dim=32, model_family="analytic", width=32, depth=1, heads=4)
    ps = PromptSet(list(setup.clean_prompts[:8]), [HarmfulPrompt(p, c) for p, c in setup.harmful_prompts[:6]],
                   dict(setup.concepts))
    return setup, ps


def _cfg(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(steps=8, batch_size=4, seed=3, warmup_steps=2, checkpoint_path=str(tmp_path / "ckpt.safetensors"),
                checkpoint_every=100)
    base.update(kw)
    return TrainConfig(**base)


class _Interrupt(Exception):
    """Stands for ComfyUI's InterruptProcessingException, raised by its progress bar's own interrupt check."""


def test_steps_and_every_result_setting_are_in_the_fingerprint_and_guard_resume(tmp_path: Path) -> None:
    """Finding 2: a run with other ``steps`` is another run: another fingerprint, and its checkpoint is not resumed."""
    setup, ps = _world()
    fp = lambda **kw: training_fingerprint(ps, TrainConfig(**kw), setup.hgr_config)  # noqa: E731
    assert len({fp(), fp(steps=2), fp(calibrate_fpr=0.05), fp(sampler_id="64x64"), fp(latent_batch_size=2)}) == 5
    assert fp(device="meta", checkpoint_every=7) == fp()  # where and how often to save change nothing
    train_hgr(setup.text_encoder, setup.denoiser, ps, _cfg(tmp_path, steps=4), setup.hgr_config,
              sample_latents=setup.sample_latents)
    with pytest.raises(CheckpointMismatch) as ei:
        train_hgr(setup.text_encoder, setup.denoiser, ps, _cfg(tmp_path, steps=2, resume=True), setup.hgr_config,
                  sample_latents=setup.sample_latents)
    assert ei.value.differences == {"steps": (4, 2)} and "steps" in str(ei.value)


def test_an_exception_from_the_progress_callback_keeps_a_checkpoint_at_that_step(tmp_path: Path) -> None:
    """Finding 3: the interrupt raised inside the progress callback (not a TrainingCancelled) still leaves a
    checkpoint of exactly the completed steps, and resuming it gives the uninterrupted run bit for bit."""
    setup, ps = _world()
    full = train_hgr(setup.text_encoder, setup.denoiser, ps, _cfg(tmp_path / "full"), setup.hgr_config,
                     sample_latents=setup.sample_latents)

    def interrupt_at_5(p):
        if p.phase == "train" and p.step == 5:
            raise _Interrupt()

    cfg = _cfg(tmp_path / "cut")
    with pytest.raises(_Interrupt):
        train_hgr(setup.text_encoder, setup.denoiser, ps, cfg, setup.hgr_config,
                  sample_latents=setup.sample_latents, progress=interrupt_at_5)
    assert HGRBundle.load(cfg.checkpoint_path).meta.training["checkpoint_step"] == 5
    resumed = train_hgr(setup.text_encoder, setup.denoiser, ps, replace(cfg, resume=True), setup.hgr_config,
                        sample_latents=setup.sample_latents)
    assert resumed.summary["resumed_from"] == 5 and resumed.loss_history == full.loss_history
    assert all(torch.equal(a, b) for a, b in zip(full.bundle.net.state_dict().values(),
                                                  resumed.bundle.net.state_dict().values()))


def test_an_exception_in_the_middle_of_a_step_keeps_the_completed_steps(tmp_path: Path) -> None:
    """A step cut short after it drew its batch: the checkpoint holds the steps before it, with the generator as
    they left it, so the resumed run still equals the uninterrupted one."""
    setup, ps = _world()
    full = train_hgr(setup.text_encoder, setup.denoiser, ps, _cfg(tmp_path / "full"), setup.hgr_config,
                     sample_latents=setup.sample_latents)
    calls = {"n": 0}

    def failing_denoiser(x, sigma, cond):
        calls["n"] += 1
        if calls["n"] == 2 * 3 + 2:  # the gradient pass of step 4
            raise MemoryError("out of memory")
        return setup.denoiser(x, sigma, cond)

    cfg = _cfg(tmp_path / "cut")
    with pytest.raises(MemoryError):
        train_hgr(setup.text_encoder, failing_denoiser, ps, cfg, setup.hgr_config, sample_latents=setup.sample_latents)
    assert HGRBundle.load(cfg.checkpoint_path).meta.training["checkpoint_step"] == 3
    resumed = train_hgr(setup.text_encoder, setup.denoiser, ps, replace(cfg, resume=True), setup.hgr_config,
                        sample_latents=setup.sample_latents)
    assert resumed.loss_history == full.loss_history


def test_session_skips_what_is_trained_and_never_replaces_another_hgr(tmp_path: Path) -> None:
    """Finding 6: same inputs load the existing HGR; other inputs are refused and leave the file as it was, unless
    retrain is asked."""
    setup, ps = _world()
    out = tmp_path / "mine.safetensors"

    def session(config: TrainConfig, **kw) -> TrainingSession:
        return TrainingSession(setup.text_encoder, setup.denoiser, ps, config, setup.hgr_config, output_path=out,
                               sample_latents=setup.sample_latents, keep_checkpoint=False, **kw)

    first = session(_cfg(tmp_path, steps=3)).run()
    assert not first.reused and out.exists() and not (tmp_path / "ckpt.safetensors").exists()
    before, calls = out.read_bytes(), setup.denoiser.calls
    again = session(_cfg(tmp_path, steps=3)).run()
    assert again.reused and setup.denoiser.calls == calls and out.read_bytes() == before
    assert again.loss_history == pytest.approx(first.loss_history, abs=1e-6)
    with pytest.raises(HGRExistsError, match="retrain") as ei:
        session(_cfg(tmp_path, steps=4)).run()
    assert ei.value.path == str(out) and out.read_bytes() == before and setup.denoiser.calls == calls
    out2 = tmp_path / "not_an_hgr.safetensors"
    out2.write_bytes(b"my notes")
    with pytest.raises(HGRExistsError, match="not an HGR this pack can read"):
        TrainingSession(setup.text_encoder, setup.denoiser, ps, _cfg(tmp_path, steps=3), setup.hgr_config,
                        output_path=out2, sample_latents=setup.sample_latents).run()
    assert out2.read_bytes() == b"my notes"
    replaced = session(_cfg(tmp_path, steps=4), retrain=True).run()
    assert not replaced.reused and HGRBundle.load(out).meta.training["steps"] == 4


def _write_chars() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("wchar:")).split()[1])


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux /proc/self/io to count written bytes")
def test_latent_cache_is_written_incrementally_not_rewritten(tmp_path: Path) -> None:
    """Finding 7: drawing N latents in batches writes each about twice (a shard, then the merged cache), not the
    whole cache after every batch (quadratic in N)."""
    setup, _ = _world()
    clean = [f"{p} number {i}" for i in range(80) for p in setup.clean_prompts[:1]]
    ps = PromptSet(clean, [HarmfulPrompt(p, c) for p, c in setup.harmful_prompts[:20]], dict(setup.concepts))
    cache = tmp_path / "latents.safetensors"
    cfg = TrainConfig(steps=1, batch_size=4, latent_batch_size=2, latent_cache_path=str(cache))
    start = _write_chars()
    train_hgr(setup.text_encoder, setup.denoiser, ps, cfg, setup.hgr_config, sample_latents=setup.sample_latents)
    written = _write_chars() - start
    size = cache.stat().st_size
    assert size >= 100 * 4 * 8 * 8 * 4  # every latent is in the merged cache ...
    assert written < 3 * size, (written, size)  # ... and was written about twice, not 25 times on average
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latents.safetensors"]  # the shards were merged away
    train_hgr(setup.text_encoder, setup.denoiser, ps, cfg, setup.hgr_config,
              sample_latents=lambda p: pytest.fail("every latent is cached"))


def test_unusable_target_and_nan_cfg_are_refused_before_any_work(tmp_path: Path) -> None:
    """Findings 8 and 5: a target that is a folder or a FIFO, and a NaN sampling CFG, are input errors raised before
    anything is sampled (and the FIFO is never opened)."""
    setup, ps = _world()
    folder = tmp_path / "taken.safetensors"
    folder.mkdir()
    never = lambda p: pytest.fail("nothing may be sampled")  # noqa: E731
    with pytest.raises(TrainingInputError, match="is a folder"):
        TrainingSession(setup.text_encoder, setup.denoiser, ps, _cfg(tmp_path), setup.hgr_config,
                        output_path=folder, sample_latents=never).run()
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)  # opening it would block the whole queue
    with pytest.raises(TrainingInputError, match="not a regular file"):
        TrainingSession(setup.text_encoder, setup.denoiser, ps, _cfg(tmp_path), setup.hgr_config,
                        output_path=fifo, sample_latents=never).run()
    with pytest.raises(TrainingInputError, match="cfg_scale"):
        TrainingSession(setup.text_encoder, setup.denoiser, ps, _cfg(tmp_path, cfg_scale=float("nan")),
                        setup.hgr_config, sample_latents=never).run()
