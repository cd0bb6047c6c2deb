"""`mvp`'s flags come from the flows' signatures and docstrings, read from the source: every flag
has help, the reading agrees with the imported flows (and with Prefect's reading of the
docstrings), the flags' defaults are the flows', and `demo` is `pipeline`."""
import argparse
import ast
import importlib
import inspect

import pytest
from prefect.utilities.callables import parameter_docstrings

from flows import cli, cli_models
from flows.flags import Entrypoint, docstring_args

ENTRYPOINTS = [v for m in (cli, cli_models) for v in vars(m).values() if isinstance(v, Entrypoint)]


def commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def test_every_flag_of_every_command_has_help():
    parsers = commands(cli.build_parser())
    assert len(parsers) == 20   # the commands and the `demo` alias
    missing = [f"mvp {name} {'/'.join(a.option_strings) or a.dest}"
               for name, parser in parsers.items() for a in parser._actions
               if not (a.help or "").strip()]
    assert missing == []


def test_help_shows_the_defaults_of_the_flow():
    text = commands(cli.build_parser())["evaluate"].format_help()
    assert "captions re-ranked per image (default: 128)" in " ".join(text.split())
    assert "(default: runs/demo/warehouse)" in text


@pytest.mark.parametrize("entry", ENTRYPOINTS, ids=lambda e: e.function)
def test_the_source_reading_agrees_with_the_imported_function(entry):
    obj = getattr(importlib.import_module(entry.module), entry.function)
    fn = getattr(obj, "fn", obj)  # a Prefect flow wraps its function
    signature = inspect.signature(fn).parameters
    read = entry.params()
    assert [p.name for p in read] == list(signature)
    for p in read:
        assert p.default == signature[p.name].default, p.name
        assert p.hint is None or inspect.get_annotations(fn)[p.name] == ast.unparse(p.hint)
    prefect_reading = {k: " ".join(v.split()) for k, v in
                       parameter_docstrings(inspect.getdoc(fn)).items()}
    assert prefect_reading == {p.name: p.help for p in read}
    assert all(p.help for p in read)


def test_a_command_passes_the_flow_its_own_defaults():
    parser = cli.build_parser()
    for argv, entry in ((["compare"], cli_models.COMPARE), (["pipeline"], cli_models.PIPELINE),
                        (["evaluate", "m.pt"], cli_models.EVALUATE),
                        (["concepts"], cli.CONCEPTS)):
        kwargs = entry.kwargs(parser.parse_args(argv))
        assert set(kwargs) == {p.name for p in entry.params()}, argv
        defaults = {p.name: p.default for p in entry.params()
                    if p.default is not inspect.Parameter.empty}
        assert {name: kwargs[name] for name in defaults} == defaults, argv


def test_demo_is_the_pipeline():
    parser = cli.build_parser()
    demo, pipeline = vars(parser.parse_args(["demo"])), vars(parser.parse_args(["pipeline"]))
    assert (demo.pop("command"), pipeline.pop("command")) == ("demo", "pipeline")
    assert demo == pipeline


def test_docstring_args_reads_google_style_entries():
    doc = "Summary.\n\nArgs:\n    a: first\n    b_c: second,\n        continued\n\nReturns:\n    x"
    assert docstring_args(doc) == {"a": "first", "b_c": "second, continued"}
    assert docstring_args("no section") == {}
