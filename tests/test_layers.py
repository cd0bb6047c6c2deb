"""Imports run one way: pipeline -> serving / downstream -> training -> network, and the data
packages (warehouse, features) never import the model or the flows. A module that imports
against that order fails here, with the line that does it."""
import ast
from pathlib import Path

from helpers import ROOT

# layer of a module path prefix -> the layers it may import (itself included)
DATA = {"features", "warehouse"}
LAYERS = {
    "model.pipeline": {"model.pipeline", "model.serving", "model.downstream", "model.training",
                       "model"} | DATA,
    "model.serving": {"model.serving", "model.downstream", "model.training", "model"} | DATA,
    "model.downstream": {"model.downstream", "model.training", "model"} | DATA,
    "model.training": {"model.training", "model"} | DATA,
    "model": {"model"},
    "features": DATA,
    "warehouse": {"warehouse"},
}
# the network reads no data; its one outside import is the word split the concepts were made with
NETWORK_MAY_IMPORT = ("features.text_concepts",)
OUR_PACKAGES = ("model", "features", "warehouse", "flows")
NEVER_IN_MODEL = ("prefect",)   # flows/ orchestrate; the packages run without Prefect


def layer_of(module: str) -> str | None:
    return next((name for name in sorted(LAYERS, key=len, reverse=True)
                 if module == name or module.startswith(name + ".")), None)


def imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
            for alias in node.names:   # `from model import text` names a module too
                yield node.lineno, f"{node.module}.{alias.name}"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def violations() -> list[str]:
    found = []
    for package in ("model", "features", "warehouse"):
        for path in sorted((ROOT / package).rglob("*.py")):
            me = module_name(path)
            allowed = LAYERS[layer_of(me)]
            for line, target in imports(path):
                top = target.split(".")[0]
                if me.startswith("model") and top in NEVER_IN_MODEL:
                    found.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
                if top not in OUR_PACKAGES:
                    continue
                # `from model import losses` resolves to model.losses; a name that is not a
                # module (from model.text import bpe) resolves to its module's layer
                layer = layer_of(target) if top != "flows" else "flows"
                if layer not in allowed and not (
                        layer_of(me) == "model" and target.startswith(NETWORK_MAY_IMPORT)):
                    found.append(f"{path.relative_to(ROOT)}:{line} ({layer_of(me)}) imports "
                                 f"{target} ({layer})")
    return found


def test_imports_follow_the_layer_order():
    assert violations() == []


def test_no_module_imports_another_modules_private_names():
    """A leading underscore means "only this module": what others need is public."""
    found = []
    for package in OUR_PACKAGES + ("tests", "benchmarks"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (isinstance(node, ast.ImportFrom) and node.module
                        and node.module.split(".")[0] in OUR_PACKAGES):
                    found += [f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{a.name}"
                              for a in node.names if a.name.startswith("_")
                              and not a.name.startswith("__")]
    assert found == []


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The rule itself: a training module importing serving is reported."""
    fake = tmp_path / "model" / "training" / "bad.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from model.serving.pyfunc import log_pyfunc\nimport prefect\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    found = violations()
    assert any("bad.py:1" in v and "model.serving" in v for v in found), found
    assert any("bad.py:2 imports prefect" in v for v in found), found
