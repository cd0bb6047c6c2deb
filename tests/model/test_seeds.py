"""A comparison over several seeds: means and sample standard deviations by hand, and the rule
for a difference the seeds do not explain."""
import pytest

from model.pipeline.seeds import aggregate, beyond_spread, mean_sd


def _run(name, t2i, vqa):
    return {"variant": name, "pretraining": "stage1 2", "retrieval": {"t2i_r1": t2i, "split": "x"},
            "vqa": {"shapes": {"vqa_acc": vqa}}}


def test_mean_and_sample_sd_by_hand():
    assert mean_sd([0.2, 0.4, 0.6]) == (pytest.approx(0.4), pytest.approx(0.2))
    assert mean_sd([0.3]) == (0.3, None)   # one seed: no spread, printed as the mean alone


def test_aggregate_and_the_seed_spread_rule():
    ref = aggregate({0: _run("a", 0.10, 0.5), 1: _run("a", 0.14, 0.7)})   # sd 0.0283
    near = aggregate({0: _run("b", 0.13, 0.5), 1: _run("b", 0.15, 0.5)})  # gap 0.02 < spread
    far = aggregate({0: _run("c", 0.30, 0.5), 1: _run("c", 0.32, 0.5)})   # gap 0.19 > spread
    assert ref["retrieval"] == {"t2i_r1": pytest.approx(0.12)}          # numbers only
    assert ref["retrieval_sd"]["t2i_r1"] == pytest.approx(0.02 * 2 ** 0.5)
    assert ref["vqa"] == {"shapes": {"vqa_acc": pytest.approx(0.6)}}
    assert ref["vqa_sd"]["shapes"] == pytest.approx(0.1 * 2 ** 0.5)
    said = beyond_spread({"a": ref, "b": near, "c": far}, "a", ["t2i_r1"])
    assert said == ["c t2i_r1 +19.0 points against a (seed spread 4.2)"]


def test_one_seed_gives_no_spread_and_no_claims():
    from model.pipeline.compare import results_table
    one = {"a": aggregate({0: _run("a", 0.10, 0.5)}), "c": aggregate({0: _run("c", 0.30, 0.5)})}
    assert beyond_spread(one, "a", ["t2i_r1"]) == []
    out = {"variants": one, "chance": {"t2i_r1": 0.01, "i2t_r1": 0.01, "vqa": {}}}
    _, rows = results_table(out)
    assert rows[0][2] == "10.0" and rows[1][2] == "30.0"   # the mean alone, no "± 0.0"
