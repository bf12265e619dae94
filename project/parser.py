"""`ProjectArgumentParser`: command-line and config mistakes reported as one short message.

jsonargparse reports a typo inside a model's arguments as a page of union-type errors. This parser
boils each common mistake down to what is wrong and the closest valid keys:

    error: model.init_args.lrr is not an argument of project.model.ConvNet; did you mean lr?
    error: trainer.max_epoch is not an option of `fit`; did you mean trainer.max_epochs?
    error: data.init_args.batch_size: expected int, got 'abc'
    error: model.init_args.optimizer: expected one of 'adamw', 'sgd', got 'adam'

Anything else is printed as jsonargparse wrote it, after `error:`.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
import sys
from typing import Any, NoReturn

from pytorch_lightning.cli import LightningArgumentParser

UNKNOWN_OPTION = re.compile(r"does not accept option '([^']+)'|[Uu]nrecognized arguments: --?([^\s=]+)")
GROUP = re.compile(r'^Parser key "([^"]+)":')
CLASS_OPTION = re.compile(r"Problem with given class_path '([^']+)':\s*\n\s*Option '([^']+)' is not accepted")
CLASS_TYPE = re.compile(
    r"Problem with given class_path '([^']+)':\s*\n\s*Parser key \"([^\"]+)\":\s*\n"
    r"\s*Expected (?:a )?(.+?)\. Got value: (.*)"
)
PLAIN_TYPE = re.compile(r'Parser key "([^"]+)":\s*\n?\s*Expected (?:a )?(.+?)\. Got value: (.*)')
TYPE_NAME = re.compile(r"<class '(\w+)'>|typing\.Literal\[(.*)\]")


def _suggest(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=3, cutoff=0.5)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def _type_name(expected: str) -> str:
    """ "<class 'int'>" -> "int"; "typing.Literal['a', 'b']" -> "one of 'a', 'b'"; others as written."""
    match = TYPE_NAME.fullmatch(expected.strip())
    if match is None:
        return expected
    return match.group(1) or f"one of {match.group(2)}"


def init_arguments(class_path: str) -> list[str]:
    """Constructor arguments of a class, following **kwargs up to its parents (BaseModel's lr, ...)."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return []
    names: list[str] = []
    for klass in inspect.getmro(cls):
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(vars(klass)["__init__"]).parameters.values()
        names += [
            p.name for p in params if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        ]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names


def explain(message: str, parser: Any) -> str:
    """The one-line form of a jsonargparse error message (the message itself if it is not recognised)."""
    group = GROUP.match(message)
    prefix = f"{group.group(1)}.init_args." if group else ""
    if match := CLASS_OPTION.search(message):
        class_path, option = match.groups()
        hint = _suggest(option, init_arguments(class_path))
        return f"{prefix}{option} is not an argument of {class_path}{hint}"
    if match := CLASS_TYPE.search(message):
        class_path, key, expected, value = match.groups()
        return f"{prefix}{key}: expected {_type_name(expected)}, got {value!r} (an argument of {class_path})"
    if match := UNKNOWN_OPTION.search(message):
        option = match.group(1) or match.group(2)
        known = [action.dest for action in getattr(parser, "_actions", []) if "." in action.dest]
        command = parser.prog.rsplit(" ", 1)[-1]
        return f"{option} is not an option of `{command}`{_suggest(option, known)}"
    if match := PLAIN_TYPE.search(message):
        key, expected, value = match.groups()
        return f"{key}: expected {_type_name(expected)}, got {value!r}"
    return message.strip()


class ProjectArgumentParser(LightningArgumentParser):
    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        sys.stderr.write(f"error: {explain(message, parser)}\n")
        sys.stderr.write(f"All options: {parser.prog.replace(' [options]', '')} --help\n")
        raise SystemExit(2)
