"""The demo's progress lines: share done and time left from the planned costs and the time taken so far."""
from safecfg_core.demo import progress as P


def test_time_left_scales_the_time_taken_by_the_cost_still_planned(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(P.time, "perf_counter", lambda: clock[0])
    lines = []
    prog = P.Progress(lines.append)
    prog.plan("cheap", 1.0)
    prog.plan("dear", 3.0)
    assert prog.seconds_left() is None  # nothing measured yet: no estimate rather than a made-up one
    clock[0] = 102.0
    prog.finish("cheap", "cheap part")
    assert lines[-1] == "[ 25%] cheap part (2 s so far, about 6 s left)"
    clock[0] = 108.0
    prog.finish("dear", "dear part")
    assert lines[-1] == "[100%] dear part (8 s so far, done)"


def test_sampling_cost_follows_images_steps_and_model_passes():
    assert P.sampling_cost("cfg", 10, 20) == 10.0
    assert P.sampling_cost("cfg", 10, 10) == 5.0
    assert P.sampling_cost("sld", 10, 20) > 1.5 * P.sampling_cost("cfg", 10, 20)  # three passes a step, not two
