"""Training progress lines: at most one per interval, always the last step, with rate and ETA."""
from model.training.progress import Progress


def test_a_line_per_interval_and_at_the_end(capsys, monkeypatch):
    clock = iter([0.0, 1.0, 2.0, 20.0, 21.0, 22.0])
    monkeypatch.setattr("model.training.progress.time.perf_counter", lambda: next(clock))
    p = Progress("stage1", total=4, every_s=15.0, keys=("loss", "vsc"))   # t0 = 0
    p.step(1, {"loss": 3.0, "vsc": 2.0})    # t=1: too soon
    p.step(2, {"loss": 2.5, "vsc": 1.5})    # t=2: too soon
    p.step(3, {"loss": 2.0, "vsc": 1.0})    # t=20: a line, 3 steps in 20 s, 1 left
    p.step(4, {"loss": 1.0})                 # t=21: the last step always prints
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["stage1: step 3/4 loss 2 vsc 1 | 0.15 steps/s, 7 s left",
                     "stage1: step 4/4 loss 1 | 0.19 steps/s, 0 s left"]

