"""Champion/challenger on a sqlite registry: the first version is promoted, a worse or tied
challenger is not (champion unchanged, reason recorded), a better one is, lower-is-better
metrics compare the other way, and `models:/<name>@champion` loads the champion's weights."""
import mlflow
import pytest
import torch
from mlflow import MlflowClient

from model.config import load_config
from model.mvp import MVP
from model.serving.registry import CHALLENGER, CHAMPION, promote, register

LINEAGE = {"feature_set": "fs123", "vocab": "v456", "warehouse_snapshot": "7",
           "git_commit": "abc1234"}


@pytest.fixture
def registry(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    mlflow.create_experiment("registry-test", artifact_location=(tmp_path / "art").as_uri())
    mlflow.set_experiment("registry-test")
    yield MlflowClient(uri, registry_uri=uri)
    mlflow.set_registry_uri(None)


def _aliases(client, name) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}


def _log(seed: int):
    """A real (tiny) MVP logged as a model: versions differ by their init seed."""
    torch.manual_seed(seed)
    model = MVP(load_config("tiny"))
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(model, name="model", serialization_format="pickle")
    return info.model_uri, model


@pytest.mark.slow
def test_champion_moves_only_on_a_strictly_better_metric(registry):
    c, name = registry, "mvp-retrieval"
    uri, first = _log(0)
    v1 = register(uri, name, LINEAGE, "rsum", 300.0, client=c)
    mv = c.get_model_version(name, v1)
    assert {k: mv.tags[k] for k in LINEAGE} == LINEAGE and mv.tags["metric.rsum"] == "300.0"
    assert mv.run_id and _aliases(c, name)[CHALLENGER] == v1
    assert promote(name, v1, "rsum", client=c) == (True, "no champion yet")

    worse = register(uri, name, LINEAGE, "rsum", 250.0, client=c)
    promoted, reason = promote(name, worse, "rsum", client=c)
    assert not promoted and reason == ("rsum 250 does not beat champion v1's 300 "
                                       "(higher is better)")
    mv = c.get_model_version(name, worse)
    assert mv.tags["promotion"] == "rejected" and mv.tags["promotion_reason"] == reason
    assert mv.description.endswith(f"not promoted: {reason}")
    aliases = _aliases(c, name)
    assert aliases[CHAMPION] == v1 and aliases[CHALLENGER] == worse

    tie = register(uri, name, LINEAGE, "rsum", 300.0, client=c)
    assert promote(name, tie, "rsum", client=c) == (
        False, "rsum 300 ties champion v1's 300 (higher is better)")
    assert _aliases(c, name)[CHAMPION] == v1

    uri2, second = _log(1)
    better = register(uri2, name, LINEAGE, "rsum", 301.5, client=c)
    assert promote(name, better, "rsum", client=c)[0]
    aliases = _aliases(c, name)
    assert aliases[CHAMPION] == better and CHALLENGER not in aliases
    assert c.get_model_version(name, v1).tags["superseded_by"] == better

    loaded = mlflow.pytorch.load_model(f"models:/{name}@{CHAMPION}")
    assert torch.equal(loaded.embed.weight, second.embed.weight)
    assert not torch.equal(loaded.embed.weight, first.embed.weight)
    assert mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}") is not None


@pytest.mark.slow
def test_lower_is_better_and_refusals(registry):
    c, name = registry, "mvp-pretrained"
    uri, _ = _log(0)
    v1 = register(uri, name, LINEAGE, "val_loss", 2.0, client=c)
    promote(name, v1, "val_loss", higher_is_better=False, client=c)
    v2 = register(uri, name, LINEAGE, "val_loss", 1.5, client=c)
    assert promote(name, v2, "val_loss", higher_is_better=False, client=c) == (
        True, "val_loss 1.5 beats champion v1's 2 (lower is better)")
    # a version judged on a metric the champion was never measured on is not promoted
    v3 = register(uri, name, LINEAGE, "rsum", 400.0, client=c)
    promoted, reason = promote(name, v3, "rsum", client=c)
    assert not promoted and "champion v2 has no rsum" in reason
    assert _aliases(c, name)[CHAMPION] == v2
    with pytest.raises(ValueError, match="missing: git_commit"):
        register(uri, name, {**LINEAGE, "git_commit": ""}, "rsum", 1.0, client=c)
    with pytest.raises(ValueError, match="has no itm_acc"):
        promote(name, v3, "itm_acc", client=c)


@pytest.mark.slow
def test_an_interrupted_promotion_finishes_on_the_next_call(registry, monkeypatch):
    """A run killed after recording its decision but before moving the aliases: calling
    promote again moves them; a finished old decision never takes the champion back."""
    c, name = registry, "mvp-pretrained"
    uri, _ = _log(0)
    v1 = register(uri, name, LINEAGE, "rsum", 10.0, client=c, tags={"pipeline_step": "s1"})
    assert c.get_model_version(name, v1).tags["pipeline_step"] == "s1"
    promote(name, v1, "rsum", client=c)
    v2 = register(uri, name, LINEAGE, "rsum", 20.0, client=c)
    real_alias = c.set_registered_model_alias

    def killed(*a, **k):
        raise KeyboardInterrupt("killed")
    monkeypatch.setattr(c, "set_registered_model_alias", killed)
    with pytest.raises(KeyboardInterrupt):
        promote(name, v2, "rsum", client=c)
    assert _aliases(c, name)[CHAMPION] == v1          # decision recorded, aliases not moved
    monkeypatch.setattr(c, "set_registered_model_alias", real_alias)
    promoted, reason = promote(name, v2, "rsum", client=c)
    assert promoted and reason == "rsum 20 beats champion v1's 10 (higher is better)"
    assert _aliases(c, name) == {CHAMPION: v2}
    assert c.get_model_version(name, v1).tags["superseded_by"] == v2
    v3 = register(uri, name, LINEAGE, "rsum", 30.0, client=c)
    assert promote(name, v3, "rsum", client=c)[0]
    assert promote(name, v2, "rsum", client=c)[0]     # repeating v2's old decision ...
    assert _aliases(c, name)[CHAMPION] == v3          # ... leaves the newer champion alone
