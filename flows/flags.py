"""Command-line flags made from a function's signature and docstring, so each default and help text
is written once, beside its parameter in the flow (which Prefect reads too). Usage:
    PRETRAIN = Entrypoint("flows.pretrain", "pretrain_flow")
    PRETRAIN.add_flags(parser, options={"stage": {"choices": STAGES}})
    PRETRAIN(**PRETRAIN.kwargs(args))             # imports flows.pretrain and runs the flow"""
from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import inspect
from dataclasses import dataclass
from functools import cache
from pathlib import Path

SCALARS = {"str": str, "int": int, "float": float}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every flag's default after its help, but None (there the help says what none means) and
    a required flag's."""

    def _get_help_string(self, action):
        if action.default is None or action.required:
            return action.help
        return super()._get_help_string(action)


@dataclass(frozen=True)
class Param:
    name: str
    hint: ast.expr | None
    default: object     # inspect.Parameter.empty when there is none
    help: str


@dataclass(frozen=True)
class Entrypoint:
    """A function named by module and name, like prefect.yaml's entrypoints."""
    module: str
    function: str

    def params(self) -> tuple[Param, ...]:
        return read_signature(self.module, self.function)

    def add_flags(self, parser: argparse.ArgumentParser, positional: tuple[str, ...] = (),
                  skip: tuple[str, ...] = (), options: dict[str, dict] | None = None) -> None:
        """A flag per parameter, but those in `skip`; `options[name]` adds to or replaces the
        argparse options made from the signature (choices, required)."""
        for p in self.params():
            if p.name in skip:
                continue
            kw = {"help": p.help, **flag_options(p, p.name in positional),
                  **(options or {}).get(p.name, {})}
            if p.name in positional:
                parser.add_argument(p.name, **kw)
            else:
                parser.add_argument("--" + p.name.replace("_", "-"), **kw)

    def kwargs(self, args: argparse.Namespace) -> dict:
        """The parsed values of the parameters that have flags."""
        return {p.name: getattr(args, p.name) for p in self.params() if hasattr(args, p.name)}

    def __call__(self, **kwargs):
        return getattr(importlib.import_module(self.module), self.function)(**kwargs)


def add_command(sub, name: str, help: str, entry: Entrypoint | None = None,
                aliases: tuple[str, ...] = (), **flags) -> argparse.ArgumentParser:
    """A subcommand whose help shows every default, with a flag per parameter of `entry`
    (`flags`: Entrypoint.add_flags's options)."""
    parser = sub.add_parser(name, help=help, description=help, aliases=list(aliases),
                            formatter_class=HelpFormatter)
    if entry is not None:
        entry.add_flags(parser, **flags)
    return parser


def flag_options(p: Param, positional: bool) -> dict:
    """argparse options of one parameter: `--dashed-name` with its type hint's type (`T | None`:
    T; `list[T]`: one or more; `Literal[...]`: choices; `bool`: --name/--no-name, or a plain switch
    when False), its default, and its `Args:` entry (Google style, as Prefect reads it for the UI)
    as help. Without a default it is a required flag, or positional where the command names it so."""
    if isinstance(p.hint, ast.Name) and p.hint.id == "bool":
        if p.default is False:
            return {"action": "store_true"}
        return {"action": argparse.BooleanOptionalAction, "default": p.default}
    kw = type_options(p.hint)
    if p.default is not inspect.Parameter.empty:
        kw["default"] = p.default
    elif not positional:
        kw["required"] = True
    return kw


def type_options(hint: ast.expr | None) -> dict:
    """argparse's type (and nargs or choices) for a type hint."""
    if isinstance(hint, ast.BinOp) and isinstance(hint.op, ast.BitOr):
        sides = [h for h in (hint.left, hint.right)
                 if not (isinstance(h, ast.Constant) and h.value is None)]
        if len(sides) == 1:
            return type_options(sides[0])
    elif isinstance(hint, ast.Subscript) and ast.unparse(hint.value) == "list":
        return {"nargs": "+", **type_options(hint.slice)}
    elif isinstance(hint, ast.Subscript) and ast.unparse(hint.value) == "Literal":
        choices = ast.literal_eval(hint.slice)
        choices = choices if isinstance(choices, tuple) else (choices,)
        return {"type": type(choices[0]), "choices": choices}
    elif isinstance(hint, ast.Name) and hint.id in SCALARS:
        return {"type": SCALARS[hint.id]}
    raise TypeError(f"no flag for a parameter of type {ast.unparse(hint) if hint else None}: "
                    "skip it and declare its flag by hand")


@cache
def read_signature(module: str, function: str) -> tuple[Param, ...]:
    """The parameters of `module.function`, read from its source (ast), not by importing it: a flow
    module imports Prefect and the model, seconds that `mvp --help` should not wait for. So a
    default is a literal or a constant the module imports by name (`from flows.defaults import
    WAREHOUSE`); tests/flows/test_cli_flags.py checks this against inspect.signature."""
    tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text())
    fn = next(node for node in tree.body
              if isinstance(node, ast.FunctionDef) and node.name == function)
    imported = {alias.asname or alias.name: (node.module, alias.name) for node in tree.body
                if isinstance(node, ast.ImportFrom) for alias in node.names}

    def value(node: ast.expr):
        if isinstance(node, ast.Name) and node.id in imported:
            source, name = imported[node.id]
            return getattr(importlib.import_module(source), name)
        return ast.literal_eval(node)

    args = fn.args.posonlyargs + fn.args.args
    defaults = [None] * (len(args) - len(fn.args.defaults)) + fn.args.defaults
    pairs = list(zip(args, defaults)) + list(zip(fn.args.kwonlyargs, fn.args.kw_defaults))
    helps = docstring_args(ast.get_docstring(fn) or "")
    return tuple(Param(arg.arg, arg.annotation,
                       inspect.Parameter.empty if default is None else value(default),
                       helps.get(arg.arg, "")) for arg, default in pairs)


def docstring_args(doc: str) -> dict[str, str]:
    """The `name: text` entries of a Google-style `Args:` section (deeper-indented lines continue
    the text; the section ends at a blank line)."""
    lines = doc.splitlines()
    if "Args:" not in lines:
        return {}
    helps, name, indent = {}, None, None
    for line in lines[lines.index("Args:") + 1:]:
        if not line.strip():
            break
        depth = len(line) - len(line.lstrip())
        indent = depth if indent is None else indent
        if depth == indent:
            name, _, text = line.strip().partition(":")
            helps[name] = text.strip()
        else:
            helps[name] += " " + line.strip()
    return helps
