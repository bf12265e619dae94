"""`ProjectArgumentParser`: command-line and config mistakes reported as one short message.

jsonargparse reports a typo inside a model's arguments as a page of union-type errors. This parser
boils each common mistake down to what is wrong and the closest valid keys:

    error: model.init_args.dropoutt is not an argument of project.model.ConvNet; did you mean dropout?
    error: trainer.max_epoch is not an option of `fit`; did you mean trainer.max_epochs?
    error: data.init_args.batch_size: expected int, got 'abc'
    error: trainer.precision: expected one of 64, 32, 16, '16-mixed', 'bf16-mixed', ... or null, got 'x'
    error: model class project.model.ConvNett not found; did you mean project.model.ConvNet?
    error: config file my.yaml is not valid YAML: did not find expected ',' or ']' (line 3)

Anything else is printed as jsonargparse wrote it, after `error:`.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
import re
import sys
import typing
from collections.abc import Callable
from typing import Any, Literal, NoReturn

import yaml
from jsonargparse import DefaultHelpFormatter, Namespace
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning import Trainer
from pytorch_lightning.cli import LightningArgumentParser

from project.errors import UserError, found_behind

# Titles of the --help sections (jsonargparse's defaults: a class's docstring, or `<class '...'>`).
TITLES = {
    "model": "Model: what is trained (--model.help CLASS lists one model's arguments)",
    "data": "Data: what it is trained on (--data.help CLASS lists one DataModule's arguments)",
    "trainer": "Trainer: how it is trained (pytorch_lightning.Trainer)",
}

# Options whose default, a list of classes with all their arguments, would fill a page of --help.
LIST_HELP = {
    "trainer.callbacks": "In a config, `callbacks+:` adds to the default callbacks (--trainer.callbacks+ "
    "on the command line); `callbacks:` replaces them all.",
    "trainer.logger": "`logger+:` adds to the default loggers; `logger:` replaces them.",
    "trainer.plugins": "`plugins+:` adds to the default plugins; `plugins:` replaces them.",
}

# jsonargparse nests the error of an argument inside the errors of the classes that hold it
# (model > its optimizer > lr), each level naming its key and each nested value ending in "Got value:".
KEY = re.compile(r'Parser key "([^"]+)"')
UNKNOWN_OPTION = re.compile(r"does not accept option '([^']+)'|[Uu]nrecognized arguments: --?([^\s=]+)")
CLASS_OPTION = re.compile(
    r"Problem with given class_path '(?P<cls>[^']+)':\s*\n\s*Option '(?P<opt>[^']+)' is not accepted"
    r"|Option '(?P<opt2>[^']+)' is not accepted\. Got value: Namespace\(class_path='(?P<cls2>[^']+)'"
)
CLASS_TYPE = re.compile(
    r"Problem with given class_path '([^']+)':\s*\n\s*Parser key \"[^\"]+\":\s*\n"
    r"\s*Expected (?:a )?(.+?)\. Got value: (.*)"
)
PLAIN_TYPE = re.compile(r'Parser key "[^"]+":\s*\n?\s*Expected (?:a )?(.+?)\. Got value: (.*)')
TYPE_NAME = re.compile(r"<class '([\w.]+)'>|typing\.Literal\[(.*)\]")
UNION = re.compile(r"Does not validate against any of the Union subtypes\s*Subtypes: \[(.*)\]")
GIVEN = re.compile(r"^\s*Given value: (.*)$", re.MULTILINE)
PLAIN_VALUE = re.compile(r"<class '(int|float|str|bool)'>|Literal\[")
# Where jsonargparse names a class it was asked for (on the command line, in YAML, as a bare name).
CLASS_NAMED = re.compile(
    r"given class_path '([^']+)'|Expected a path but (\S+) either not accessible|import path string: (\S+)"
    r"|module '([\w.]+)' has no attribute '(\w+)'"
)
BASE_CLASS = re.compile(r"<class '([\w.]+)'>|Callable\[\[[^\]]*\], ([\w.]+)\]")
NOT_SUBCLASS = re.compile(r"does not correspond to a subclass of (\w+)")


def _suggest(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=3, cutoff=0.5)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def _type_name(expected: str) -> str:
    """ "<class 'int'>" -> "int"; "typing.Literal['a', 'b']" -> "one of 'a', 'b'"; others as written."""
    match = TYPE_NAME.fullmatch(expected.strip())
    if match is None:
        return expected
    return match.group(1) or f"one of {match.group(2)}"


def _value(text: str) -> str:
    """A value as the message quotes it, without what an enclosing level appended."""
    return text.split(". Got value: ", 1)[0]


def init_arguments(class_path: str) -> list[str]:
    """Constructor arguments of a class, following **kwargs up to its parents (BaseModel's lr, ...)."""
    cls = located_class(class_path)
    if cls is None:
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


def located_class(path: str) -> type | None:
    """The class a whole dotted path names; None when any part of it is missing or it is no class."""
    found, depth = _locate(path)
    return found if depth == path.count(".") + 1 and isinstance(found, type) else None


def _locate(path: str) -> tuple[Any, int]:
    """The deepest object a dotted path reaches (a module, then attributes) and how many of its
    parts that took; (None, 0) when not even its first part is a module."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for j in range(i, len(parts)):
            if not hasattr(found, parts[j]):
                return found, j
            found = getattr(found, parts[j])
        return found, len(parts)
    return None, 0


def _public_names(namespace: Any, modules: bool) -> list[str]:
    """What a module exports, and with `modules` its submodules too (loaded or not)."""
    names = list(getattr(namespace, "__all__", None) or [n for n in dir(namespace) if not n.startswith("_")])
    if modules:
        names += [m.name for m in pkgutil.iter_modules(getattr(namespace, "__path__", []))]
    return list(dict.fromkeys(names))


def _argument_classes(class_path: str, argument: str) -> list[type]:
    """The classes an argument's type names (for a callable, what it returns), following **kwargs up
    to the parent that declares it: BaseModel's `optimizer` -> [Optimizer]."""
    cls, _ = _locate(class_path)
    for klass in inspect.getmro(cls) if isinstance(cls, type) else []:
        init: Any = vars(klass).get("__init__")
        if init is None or argument not in inspect.signature(init).parameters:
            continue
        todo: list[Any] = [_type_hints(init).get(argument)]
        found: list[type] = []
        while todo:
            hint = todo.pop()
            if getattr(hint, "_is_protocol", False):  # a callable described by its __call__
                todo.append(_type_hints(hint.__call__).get("return"))
            elif isinstance(hint, type):
                found.append(hint)
            else:
                args = typing.get_args(hint)
                todo += args[-1:] if typing.get_origin(hint) is Callable else args
        return found
    return []


def _type_hints(function: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(function)
    except (NameError, TypeError):  # annotations that name what is not importable at run time
        return {}


def _subclass_names(bases: list[Any]) -> list[str]:
    """Names of the loaded subclasses of `bases`: what jsonargparse accepts as a bare class name."""
    todo: list[type] = [base for base in bases if isinstance(base, type) and base is not type(None)]
    seen: set[type] = set()
    while todo:
        subclasses: list[type] = todo.pop().__subclasses__()
        for sub in subclasses:
            if sub not in seen:
                seen.add(sub)
                todo.append(sub)
    return sorted({cls.__name__ for cls in seen if not cls.__name__.startswith("_")})


def _innermost_union(message: str) -> tuple[str, str] | None:
    """The subtypes and the given value of the most deeply nested union-type error in a message."""
    unions = list(UNION.finditer(message))
    given = GIVEN.search(message, unions[-1].end()) if unions else None
    return (unions[-1].group(1), _value(given.group(1))) if unions and given else None


def missing_class(message: str, key: str) -> str | None:
    """`<key> class <path> not found; did you mean <closest>?` when a message is about a class_path
    (model, data, callbacks, a model's optimizer, ...) that names no class."""
    union = _innermost_union(message)
    # A plain word for an argument that takes a plain value or a class (lr: float | Tensor) is no class.
    plain = (
        union[1] if union and PLAIN_VALUE.search(union[0]) and re.fullmatch(r"[a-z_]\w*", union[1]) else None
    )
    named = [
        ".".join(g for g in groups[3:] if g) or "".join(groups[:3]) for groups in CLASS_NAMED.findall(message)
    ]
    unresolved = [
        p
        for p in named
        if p != plain and re.fullmatch(r"[A-Za-z_][\w.]*", p) and _locate(p)[1] < p.count(".") + 1
    ]
    if not unresolved:
        return None
    missing, parts = unresolved[0], unresolved[0].split(".")
    if len(parts) == 1:  # a bare name: jsonargparse looks among the loaded subclasses of the type
        # An argument of a class (a model's optimizer) has its type looked up: the message names the
        # outer types only. Otherwise the message names the types expected.
        holders = [h for h in re.findall(r"given class_path '([^']+)'", message) if h != missing]
        bases = [_locate(a or b)[0] for a, b in BASE_CLASS.findall(message)]
        bases = _argument_classes(holders[-1], key.rsplit(".", 1)[-1]) if holders else bases
        names = {name.lower(): name for name in _subclass_names(bases)}  # adam -> Adam
        close = [names[n] for n in difflib.get_close_matches(missing.lower(), list(names), n=3, cutoff=0.5)]
        hint = (
            f"; did you mean {' or '.join(close)}?"
            if close
            else "; give its import path, e.g. package.module.Class"
        )
        return f"{key} class {missing} not found{hint}"
    found, depth = _locate(missing)
    if depth == 0:
        return f"{key} class {missing} not found: there is no module {parts[0]}"
    close = difflib.get_close_matches(
        parts[depth], _public_names(found, depth < len(parts) - 1), n=3, cutoff=0.5
    )
    alternatives = [".".join([*parts[:depth], name, *parts[depth + 1 :]]) for name in close]
    hint = f"; did you mean {' or '.join(alternatives)}?" if alternatives else ""
    return f"{key} class {missing} not found{hint}"


def _union_types(subtypes: str) -> str:
    """ "typing.Literal[1, 2], <class 'int'>, <class 'NoneType'>" -> "one of 1, 2 or int or null"."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(subtypes + ","):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(_type_name(subtypes[start:i].strip()))
            start = i + 1
    literals: dict[str, str] = {}  # 16 and '16' both mean 16 to the user: listed once
    for item in items:
        if item.startswith("one of "):
            for value in item.removeprefix("one of ").split(", "):
                literals.setdefault(value.strip("'"), value)
    others = ["null" if item == "NoneType" else item for item in items if not item.startswith("one of ")]
    return " or ".join(([f"one of {', '.join(literals.values())}"] if literals else []) + others)


def explain(
    message: str, parser: Any, config_file: str | None = None, ex: BaseException | None = None
) -> str:
    """The one-line form of a jsonargparse error message (the message itself if it is not recognised).
    `config_file`: the --config file being read when the error happened; `ex`: the exception behind it."""
    # e.g. model.init_args.optimizer.init_args.lr (the alternatives of a union may repeat a level)
    key = ".init_args.".join(dict.fromkeys(KEY.findall(message)))
    source = f"config file {config_file}" if config_file else "the --config value"
    cause = ex.__cause__ if ex is not None else None
    if isinstance(cause, yaml.MarkedYAMLError):
        where = f" (line {cause.problem_mark.line + 1})" if cause.problem_mark else ""
        return f"{source} is not valid YAML: {cause.problem}{where}"
    if message.startswith("Unexpected config:"):
        return f"{source} holds no options: it must be a YAML mapping, e.g. `trainer: {{max_epochs: 5}}`"
    if not_found := missing_class(message, key or "a class_path"):
        return not_found
    if match := CLASS_OPTION.search(message):
        class_path, option = match["cls"] or match["cls2"], match["opt"] or match["opt2"]
        hint = _suggest(option, init_arguments(class_path))
        return f"{key + '.init_args.' if key else ''}{option} is not an argument of {class_path}{hint}"
    if match := CLASS_TYPE.search(message):
        class_path, expected, value = match.groups()
        return f"{key}: expected {_type_name(expected)}, got {_value(value)!r} (an argument of {class_path})"
    if match := UNKNOWN_OPTION.search(message):
        option = match.group(1) or match.group(2)
        known = [action.dest for action in getattr(parser, "_actions", []) if "." in action.dest]
        command = command_line(parser).rsplit(" ", 1)[-1]
        return f"{option} is not an option of `{command}`{_suggest(option, known)}"
    if match := PLAIN_TYPE.search(message):
        expected, value = match.groups()
        return f"{key}: expected {_type_name(expected)}, got {_value(value)!r}"
    if union := _innermost_union(message):
        subtypes, value = union
        if match := NOT_SUBCLASS.search(message):
            return f"{key}: {value} is not a subclass of {match.group(1)}"
        return f"{key}: expected {_union_types(subtypes)}, got {value!r}"
    return message.strip()


def user_problem(error: BaseException) -> BaseException | None:
    """The UserError (or Lightning MisconfigurationException) behind `error`. jsonargparse wraps
    errors raised in constructors in a union-type error whose message buries the real one."""
    return found_behind(error, (UserError, MisconfigurationException))


def without_default_nulls(config: Any) -> Any:
    """A copy of a command's config without the trainer's null settings that are nulls by default
    (the Trainer's own, and those of its loggers, callbacks, plugins): ~70 lines of --print_config
    and of every saved config.yaml that read back as they were."""
    trainer = config.get("trainer") if isinstance(config, Namespace) else None
    if trainer is None:
        return config
    config = config.clone()
    _drop_default_nulls(config.trainer, inspect.signature(Trainer.__init__).parameters)
    for value in config.trainer.values():
        for spec in value if isinstance(value, list) else [value]:
            if isinstance(spec, Namespace) and isinstance(spec.get("init_args"), Namespace):
                cls = located_class(str(spec.class_path))
                if cls is not None:
                    _drop_default_nulls(spec.init_args, inspect.signature(cls).parameters)
    return config


def _drop_default_nulls(values: Namespace, parameters: Any) -> None:
    # Keys beyond the signature are what jsonargparse found behind **kwargs (WandbLogger's wandb.init
    # arguments), shown with the defaults it read there.
    kwargs = any(p.kind == p.VAR_KEYWORD for p in parameters.values())
    for key in [k for k, v in values.items(branches=False) if v is None]:
        if parameters[key].default is None if key in parameters else kwargs:
            del values[key]


class HelpFormatter(DefaultHelpFormatter):
    def _get_help_string(self, action: Any) -> str:
        text: str = super()._get_help_string(action)
        if action.dest in LIST_HELP:  # the default, whole classes and all their arguments: a page each
            text = text.replace("default: %(default)s", "default: see --print_config")
        return text


def command_line(parser: Any) -> str:
    """The command whose --help shows `parser`: its prog without jsonargparse's " [options]" (`python -m
    project fit`), or what a parser parsed as another command says it is (finders.py: `... lr_find`)."""
    return getattr(parser, "command", None) or str(parser.prog).replace(" [options]", "")


class ProjectArgumentParser(LightningArgumentParser):
    def __init__(self, *args: Any, formatter_class: Any = HelpFormatter, **kwargs: Any) -> None:
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def dump(self, namespace: Any, *args: Any, **kwargs: Any) -> str:
        # What is dumped here was checked when it was parsed (Lightning's copy of the hyperparameters,
        # config.yaml, --print_config): checking it again took ~0.1 s of every run.
        kwargs.setdefault("skip_validation", True)
        return str(super().dump(without_default_nulls(namespace), *args, **kwargs))

    reading: str | None = None  # the --config file being parsed: its YAML errors only say "<unicode string>"
    command: str | None = None  # the command line that shows this parser's --help, where prog is not it

    def parse_path(self, path: Any, *args: Any, **kwargs: Any) -> Any:
        self.reading = str(path)
        try:
            return super().parse_path(path, *args, **kwargs)
        finally:
            self.reading = None

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        sys.stderr.write(f"error: {explain(message, parser, self.reading, ex)}\n")
        sys.stderr.write(f"All options: {command_line(parser)} --help\n")
        raise SystemExit(2)


def add_core_arguments(parser: LightningArgumentParser, trainer: Any, model: Any, data: Any) -> None:
    """LightningCLI's model, data and trainer arguments, in the order a reader wants them in --help,
    --print_config and saved configs: what is trained, on what, then how (Trainer, loggers, callbacks)."""
    parser.add_lightning_class_args(model, "model", subclass_mode=True)
    parser.add_lightning_class_args(data, "data", subclass_mode=True)
    parser.add_lightning_class_args(trainer, "trainer")
    for key, title in TITLES.items():
        (parser.groups or {})[key].title = title
    # Lightning's docs run to whole paragraphs per Trainer option (~430 lines of --help): the first
    # sentence says what each does; the rest is at lightning.ai/docs.
    for action in parser._actions:
        if action.dest.startswith("trainer.") and isinstance(action.help, str):
            action.help = re.split(r"(?<=\.)\s", action.help, maxsplit=1)[0]
        if action.dest in LIST_HELP:
            action.help = f"{action.help} {LIST_HELP[action.dest]}"
    # The usage line would list all ~50 options again.
    parser.usage = "%(prog)s [--config FILE]... [--KEY VALUE]... [--print_config]"


def add_run_arguments(parser: LightningArgumentParser) -> None:
    """The project's own options: which run directory, resuming, testing after fit."""
    parser.add_argument(
        "--experiment",
        type=str | None,
        default=None,
        help="The experiment's name in run names, <time>-<experiment>-<model> (default: the stem of the "
        "last --config that sets model or data, e.g. digits).",
    )
    parser.add_argument(
        "--run_name",
        type=str | None,
        default=None,
        help="Folder under runs/ (default: <time>-<experiment>-<model>). With --ckpt_path last or "
        "--resume auto: the run to continue.",
    )
    parser.add_argument(
        "--resume",
        type=Literal["never", "auto"],
        default="never",
        help="auto: continue run --run_name from its last.ckpt if it has one, else start it "
        "(the same command for a first start and for every restart of a preempted job).",
    )
    parser.add_argument(
        "--log_model",
        type=bool | Literal["all"],
        default=False,
        help="Upload checkpoints to W&B as artifacts: true = the best and last.ckpt once fit ends, all = "
        "each checkpoint as it is written. An offline run keeps them for `wandb sync`.",
    )
    parser.add_argument(
        "--test_after_fit",
        type=bool,
        default=True,
        help="After fit, test the best checkpoint when the dataset has a test split.",
    )
