"""The optional VQA head of a served model: a packaged VQA checkpoint answered by model/vqa.py.

    answerer = load(path_or_None)          # None: the package has no VQA head
    answerer.answer(questions, images, tags) -> list[str]

Serving must not depend on the VQA code being present, so the module is looked up at load time.
The contract with model/vqa.py: it defines `load_serving(checkpoint_path)` returning an object
with `answer(questions: list[str], images: list[features.extract.EncodedImage],
tags: list[list[str]]) -> list[str]` (it owns how questions and tags become its batch).
"""
from __future__ import annotations

import importlib
import importlib.util

MODULE = "model.vqa"
ENTRY = "load_serving"


def available() -> bool:
    """Whether model/vqa.py exists and offers the serving entry point."""
    if importlib.util.find_spec(MODULE) is None:
        return False
    return hasattr(importlib.import_module(MODULE), ENTRY)


def require() -> None:
    if not available():
        raise ModuleNotFoundError(
            f"a VQA checkpoint can be served only when {MODULE} defines {ENTRY}(checkpoint_path)"
            " (see model/vqa_hook.py)")


def load(checkpoint_path):
    """The answerer of a packaged VQA checkpoint, or None when none is packaged. A package
    that holds one but cannot answer is an error, never a silent 'no answer'."""
    if checkpoint_path is None:
        return None
    require()
    return getattr(importlib.import_module(MODULE), ENTRY)(checkpoint_path)
