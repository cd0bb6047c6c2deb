"""The runner every task head fine-tunes through (model/downstream/head_finetune.py): killed and
resumed, each task's fine-tune logs the same losses as an uninterrupted one, in the same MLflow
run, and ends with the same weights (its head's extra state included)."""
import mlflow
import pytest
import torch

from model.downstream.tasks import TASKS
from model.training.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory, tiny_feature_store):
    tmp = tmp_path_factory.mktemp("heads")
    return tiny_feature_store(tmp)[0], tmp


@pytest.mark.parametrize("task", sorted(TASKS))
def test_a_killed_finetune_resumes_exactly(warehouse, task, monkeypatch):
    """Killed right after its step-3 checkpoint, a 6-step fine-tune resumed with resume=True
    logs the same losses at steps 4-6 as an uninterrupted one and ends with the same weights."""
    from model.training.trainer import Trainer
    wh, tmp = warehouse
    finetune = TASKS[task].function("finetune")
    uri = f"sqlite:///{tmp}/mlflow-{task}.db"
    args = dict(config="tiny", steps=6, tracking_uri=uri, eval_split=None, checkpoint_every=3)
    full = finetune(wh, None, out_dir=tmp / f"{task}-full", **args)
    save = Trainer.save

    def save_then_die(self, path, data_position=None):
        save(self, path, data_position)
        if self.step == 3:
            raise KeyboardInterrupt("killed after the step-3 checkpoint")
    monkeypatch.setattr(Trainer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        finetune(wh, None, out_dir=tmp / f"{task}-killed", **args)
    monkeypatch.setattr(Trainer, "save", save)
    rest = finetune(wh, None, out_dir=tmp / f"{task}-killed", resume=True, **args)
    client = mlflow.MlflowClient(uri)

    def history(run_id):
        return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, "loss"),
                                                  key=lambda m: m.step)]
    assert rest["steps"] == 6
    assert [s for s, _ in history(rest["run_id"])] == [1, 2, 3, 4, 5, 6]
    assert history(rest["run_id"])[3:] == history(full["run_id"])[3:]
    a, b = (load_checkpoint(r["checkpoint"])["model"] for r in (full, rest))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)
