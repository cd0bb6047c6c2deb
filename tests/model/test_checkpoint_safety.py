"""Checkpoints load weights-only (model/training/checkpoint.py): a crafted file whose unpickling would run
code is refused by every entry point that reads one, without the code running; a file that is
not an mvp checkpoint is a one-line error (exit 2 from `mvp`); our own checkpoints round-trip."""
import os
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from model.training.checkpoint import FORMAT, CheckpointError, load_checkpoint, save_checkpoint

BIN = Path(sys.executable).parent


class _Payload:
    """Unpickled with weights_only=False, this calls os.mkdir(marker): the marker appears iff
    the checkpoint's code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_feature_store):
    tmp = tmp_path_factory.mktemp("checkpoint-safety")
    wh, _, _ = tiny_feature_store(tmp)
    return wh


@pytest.fixture
def crafted(tmp_path):
    """(a checkpoint that looks like ours but carries a payload, the payload's marker)."""
    from model.config import load_config
    marker = tmp_path / "PAYLOAD-RAN"
    path = tmp_path / "runs" / "stage1" / "last.pt"   # where pretrain --resume looks
    path.parent.mkdir(parents=True)
    torch.save({"format": FORMAT, "model": {}, "model_config": load_config("tiny").to_dict(),
                "train_config": {"stage": "stage1"}, "data_position": _Payload(marker)}, path)
    return path, marker


def _pretrain(store, tmp_path, **kw):
    from model.training.pretrain import pretrain
    return pretrain(store, config="tiny", steps=1, out_dir=tmp_path / "runs",
                    tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", **kw)


def _evaluate(store, tmp_path, path):
    from model.downstream.evaluate import evaluate
    evaluate(path, store)           # what `mvp evaluate <file>` runs (flows/evaluate.py)


def _init_stage2(store, tmp_path, path):
    _pretrain(store, tmp_path, stage="stage2", init_from=path)


def _resume(store, tmp_path, path):
    _pretrain(store, tmp_path, stage="stage1", resume=True)    # reads runs/stage1/last.pt


def _finetune_retrieval(store, tmp_path, path):
    _pretrain(store, tmp_path, stage="retrieval", init_from=path)


def _finetune_vqa(store, tmp_path, path):
    from model.downstream.vqa.finetune import finetune_vqa
    finetune_vqa(store, path, config="tiny", steps=1, out_dir=tmp_path / "ft",
                 tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")


def _serving_loader(store, tmp_path, path):
    from model.serving.pyfunc import MVPServingModel
    MVPServingModel().load_context(SimpleNamespace(artifacts={"checkpoint": str(path)}))


def _serving_vqa_head(store, tmp_path, path):
    from model.downstream.tasks import TASKS
    from model.serving import heads
    heads.load(TASKS["vqa"], path)


def _log_serving_package(store, tmp_path, path):
    from model.serving.pyfunc import log_pyfunc
    log_pyfunc(path, store)


def _registry_lineage(store, tmp_path, path):
    from model.pipeline.report import lineage
    lineage(store, str(path))


ENTRY_POINTS = [_evaluate, _init_stage2, _resume, _finetune_retrieval, _finetune_vqa,
                _serving_loader, _serving_vqa_head, _log_serving_package, _registry_lineage]


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda f: f.__name__.strip("_"))
def test_a_crafted_checkpoint_is_refused_without_running_its_code(entry, crafted, store,
                                                                  tmp_path):
    path, marker = crafted
    with pytest.raises(CheckpointError, match="refused: contains objects that are not plain "
                                              r"weights \(posix\.mkdir\)") as err:
        entry(store, tmp_path, path)
    assert not marker.exists()
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def _garbage(tmp_path) -> Path:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"\x00\xffthis is not a checkpoint\n" * 20)
    return path


def _foreign(tmp_path) -> Path:
    path = tmp_path / "foo.pt"
    torch.save({"foo": 1}, path)
    return path


@pytest.mark.parametrize("make, message", [
    (_garbage, "unreadable: not a complete file written by torch.save"),
    (_foreign, "not an mvp checkpoint (missing 'model', 'model_config')")])
def test_a_file_that_is_not_ours_is_named_in_one_line(make, message, tmp_path):
    path = make(tmp_path)
    for entry in (_evaluate, _serving_loader):
        with pytest.raises(CheckpointError) as err:
            entry(None, tmp_path, path)
        assert str(err.value).startswith(f"{path}: {message}") and "\n" not in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize("argv", [
    ["evaluate", "{garbage}"],
    ["finetune", "vqa", "--init-from", "{foreign}"],
    ["pretrain", "--stage", "stage2", "--init-from", "{crafted}"]])
def test_cli_refuses_with_one_line_and_exit_2(argv, crafted, tmp_path):
    files = {"garbage": _garbage(tmp_path), "foreign": _foreign(tmp_path),
             "crafted": crafted[0]}
    argv = [a.format(**files) for a in argv]
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.run([str(BIN / "mvp"), *argv, "--warehouse", str(tmp_path / "wh")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mvp {argv[0]}: error: {argv[-1]}: "), lines
    assert not crafted[1].exists()


def test_other_formats_are_refused_and_unmarked_weights_are_read(tmp_path):
    torch.save({"format": "mvp-checkpoint/99", "model": {}, "model_config": {}},
               tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format 'mvp-checkpoint/99'"):
        load_checkpoint(tmp_path / "future.pt")
    # a weights file written with torch.save by hand (no format key) is read
    torch.save({"model": {"w": torch.ones(2)}, "model_config": {"hidden": 32}},
               tmp_path / "hand.pt")
    assert load_checkpoint(tmp_path / "hand.pt")["model_config"] == {"hidden": 32}
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")


def test_a_training_checkpoint_is_plain_and_round_trips(tmp_path):
    from model.config import load_config
    from model.mvp import MVP
    from model.training.checkpoint import load_mvp
    from model.training.config import load_train_config
    from model.training.task import PretrainTask
    from model.training.trainer import Trainer
    tcfg = load_train_config("tiny")
    torch.manual_seed(0)
    trainer = Trainer(PretrainTask(MVP(load_config("tiny")), tcfg), tcfg)
    random.seed(3)
    np.random.seed(4)
    np.random.standard_normal()            # a cached Gaussian is part of NumPy's state too
    py_state, np_state = random.getstate(), np.random.get_state()
    path = tmp_path / "last.pt"
    trainer.save(path, data_position={"epoch": 1, "index": 8})
    # nothing in the file needs a class or function outside torch's weights-only allowlist
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    assert load_checkpoint(path)["format"] == FORMAT

    random.seed(0)
    np.random.seed(0)
    fresh = Trainer(PretrainTask(MVP(load_config("tiny")), tcfg), tcfg)
    assert fresh.load(path) == {"epoch": 1, "index": 8}
    assert random.getstate() == py_state
    restored = np.random.get_state()
    assert restored[0] == np_state[0] and np.array_equal(restored[1], np_state[1])
    assert restored[2:] == np_state[2:]
    model, _ = load_mvp(path)
    assert all(torch.equal(v, trainer.task.model.state_dict()[k])
               for k, v in model.state_dict().items())
    save_checkpoint({"model": model.state_dict(), "model_config": model.cfg.to_dict()},
                    tmp_path / "slim.pt")
    assert load_mvp(tmp_path / "slim.pt")[0].cfg == model.cfg
