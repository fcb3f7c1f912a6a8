"""Parser for the original project's plain-text experiment config files.

File format (one statement per logical line)::

    use ../base                      # parse that file first, then override/extend it
    constrain optimizer :: ADAM, SGD # the final value of `optimizer` must be one of these
    optimizer = ADAM                 # bare word allowed because it is in the constraint
    crop_size = (160, 160)
    num_chan_bn = 3*8*8
    data_dir = '$DATA$/train'        # $VAR$ is replaced by an environment variable

Values are evaluated by a small whitelist evaluator over Python's ``ast`` (literals, tuples,
lists, dicts, unary +/-, arithmetic and previously defined names); nothing is ever executed.

Given a schema (imgcomp.config.schema: AE_SCHEMA, PC_SCHEMA), every name assigned must be a
declared key of the right type; the original's keys that the port ignores are noted.
"""

from __future__ import annotations

import ast
import copy
import difflib
import keyword
import math
import operator
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgcomp.config.schema import ConfigSchema

__all__ = ["Config", "ConfigError", "config_job_name", "config_to_text", "load_config",
           "load_config_with_notes"]

_CONFIG_ROOT_DIRS = ("ae_configs", "pc_configs")

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_ASSIGN_RE = re.compile(rf"({_NAME})\s*=(?!=)(.*)", re.DOTALL)
_USE_RE = re.compile(r"use\s+(\S.*)", re.DOTALL)
_CONSTRAIN_RE = re.compile(rf"constrain\s+({_NAME})\s*::(.*)", re.DOTALL)
_ENV_RE = re.compile(rf"\$({_NAME})\$")

_BIN_OPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY_OPS: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}
_CONSTANT_TYPES = (bool, int, float, str, type(None))


class ConfigError(ValueError):
    """A config file is malformed; the message starts with ``path:line:``."""


class Config(Mapping[str, Any]):
    """Read-only view of a parsed config: ``cfg.name``, ``cfg["name"]``, ``"name" in cfg``.

    Names that collide with Mapping methods (``get``, ``keys``, ...) or ``source_path`` are
    only reachable through ``cfg["name"]``.
    """

    def __init__(
        self, values: Mapping[str, Any], source_path: str | os.PathLike | None = None
    ) -> None:
        # object.__setattr__ because __setattr__ is blocked to keep configs read-only.
        object.__setattr__(self, "_values", dict(values))
        object.__setattr__(self, "_source_path", None if source_path is None else Path(source_path))

    @property
    def source_path(self) -> Path | None:
        """The file the config was loaded from (None for configs built in code)."""
        return self._source_path

    def __getattr__(self, name: str) -> Any:
        # Read through __dict__: copy/pickle probe attributes before __init__ has run.
        values = self.__dict__.get("_values")
        if values is None or name not in values:
            origin = self.__dict__.get("_source_path") or "<config built in code>"
            raise AttributeError(f"config {origin} has no entry {name!r}")
        return values[name]

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Config is read-only; cannot set {name!r}")

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def to_dict(self) -> dict[str, Any]:
        """A deep copy of all entries, in definition order."""
        return copy.deepcopy(self._values)

    def __repr__(self) -> str:
        return f"Config({self._values!r}, source_path={str(self._source_path)!r})"


# ---------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class _Statement:
    """One logical line: an assignment or a constraint, with where it came from."""

    kind: str  # "assign" or "constrain"
    path: Path
    lineno: int
    name: str
    text: str  # expression text (assignment) or value list (constraint)


def _err(path: Path, lineno: int, problem: str) -> ConfigError:
    return ConfigError(f"{path}:{lineno}: {problem}")


def _scan(line: str) -> tuple[str, int]:
    """Split off a ``# comment`` and count net opened ( [ { brackets, skipping strings."""
    depth = 0
    quote = None
    escaped = False
    for i, c in enumerate(line):
        if quote:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "#":
            return line[:i], depth
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
    return line, depth


def _substitute_env(code: str, path: Path, lineno: int) -> str:
    def replace(match: re.Match[str]) -> str:
        var = match.group(1)
        if var not in os.environ:
            raise _err(path, lineno, f"environment variable ${var}$ is not set")
        return os.environ[var]

    return _ENV_RE.sub(replace, code)


def _logical_lines(path: Path, text: str) -> Iterator[tuple[int, str]]:
    """Yield (first line number, code) with comments removed and bracketed values joined."""
    start = 0
    parts: list[str] = []
    depth = 0
    for lineno, raw in enumerate(text.splitlines(), start=1):
        code, depth_change = _scan(raw)
        # Substitute after dropping the comment: a $VAR$ in a comment needs no variable.
        code = _substitute_env(code, path, lineno)
        if not parts:
            if not code.strip():
                continue
            start = lineno
        parts.append(code)
        depth += depth_change
        if depth <= 0:  # negative depth is left for the parser to report
            yield start, "\n".join(parts).strip()
            parts, depth = [], 0
    if parts:
        raise _err(path, start, "unclosed bracket: value continues to the end of the file")


def _read_statements(path: Path, chain: tuple[Path, ...] = ()) -> list[_Statement]:
    """All statements of ``path`` with ``use`` targets inlined where they appear."""
    text = path.read_text(encoding="utf-8")
    statements: list[_Statement] = []
    for lineno, code in _logical_lines(path, text):
        if m := _ASSIGN_RE.fullmatch(code):
            statements.append(_Statement("assign", path, lineno, m.group(1), m.group(2).strip()))
        elif m := _CONSTRAIN_RE.fullmatch(code):
            statements.append(_Statement("constrain", path, lineno, m.group(1), m.group(2).strip()))
        elif m := _USE_RE.fullmatch(code):
            target = Path(os.path.normpath(path.parent / m.group(1).strip()))
            if not target.is_file():
                raise _err(path, lineno, f"'use' target {target} does not exist")
            if target.resolve() in chain:
                raise _err(path, lineno, f"'use {m.group(1).strip()}' creates a cycle")
            statements += _read_statements(target, (*chain, target.resolve()))
        else:
            first = code.splitlines()[0]
            raise _err(path, lineno, f"unknown directive or malformed line: {first!r}")
    return statements


# ---------------------------------------------------------------------------- evaluation


class _Evaluator:
    """Evaluates one expression AST against the names defined so far, whitelisting nodes."""

    def __init__(
        self, path: Path, lineno: int, names: Mapping[str, Any], words: frozenset[str]
    ) -> None:
        self.path = path
        self.lineno = lineno  # line of the expression's first line
        self.names = names
        self.words = words  # bare words accepted as strings (from the name's constraint)

    def error(self, node: ast.AST, problem: str) -> ConfigError:
        return _err(self.path, self.lineno + getattr(node, "lineno", 1) - 1, problem)

    def eval(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            if not isinstance(node.value, _CONSTANT_TYPES):
                raise self.error(node, f"unsupported literal {node.value!r}")
            return node.value
        if isinstance(node, ast.Tuple):
            return tuple(self.eval(e) for e in node.elts)
        if isinstance(node, ast.List):
            return [self.eval(e) for e in node.elts]
        if isinstance(node, ast.Dict):
            if any(k is None for k in node.keys):
                raise self.error(node, "'**' unpacking is not allowed in configs")
            pairs = [
                (self.eval(k), self.eval(v)) for k, v in zip(node.keys, node.values, strict=True)
            ]
            return self.apply(node, dict, pairs)  # an unhashable key is a TypeError
        if isinstance(node, ast.Name):
            return self.eval_name(node)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY_OPS:
            return self.apply(node, _UNARY_OPS[type(node.op)], self.eval(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _BIN_OPS:
            left, right = self.eval(node.left), self.eval(node.right)
            return self.apply(node, _BIN_OPS[type(node.op)], left, right)
        raise self.error(node, f"{type(node).__name__} expressions are not allowed in configs")

    def eval_name(self, node: ast.Name) -> Any:
        if node.id in self.names:
            # Copy so that two names never share one mutable list/dict.
            return copy.deepcopy(self.names[node.id])
        if node.id in self.words:
            return node.id
        known = [*self.names, *self.words]
        close = difflib.get_close_matches(node.id, known, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise self.error(node, f"unknown name {node.id!r}{hint}")

    def apply(self, node: ast.AST, op: Callable[..., Any], *args: Any) -> Any:
        try:
            return op(*args)
        except (ArithmeticError, TypeError, ValueError) as e:
            raise self.error(node, f"cannot evaluate: {e}") from None


def _parse_expression(text: str, path: Path, lineno: int) -> ast.expr:
    if not text:
        raise _err(path, lineno, "missing value")
    try:
        return ast.parse(text, mode="eval").body
    except SyntaxError as e:
        raise _err(path, lineno + (e.lineno or 1) - 1, f"syntax error: {e.msg}") from None


def _parse_constraint(stmt: _Statement) -> list[Any]:
    """Allowed values of a ``constrain`` line; bare words stand for their own string."""
    body = _parse_expression(stmt.text, stmt.path, stmt.lineno)
    items = body.elts if isinstance(body, ast.Tuple) else [body]
    evaluator = _Evaluator(stmt.path, stmt.lineno, {}, frozenset())
    return [item.id if isinstance(item, ast.Name) else evaluator.eval(item) for item in items]


def _same_value(a: Any, b: Any) -> bool:
    # Keep True from satisfying a constraint that lists 1 (and vice versa).
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def load_config(path: str | os.PathLike, schema: ConfigSchema | None = None, *,
                note_unused: bool = True) -> Config:
    """Parse a config file and everything it ``use``s into a :class:`Config`.

    With a schema: a name it does not declare is an error at its first assignment, a value of
    the wrong type one at its last; the original's keys the port does not use are accepted
    and, with `note_unused`, named in one console line, as train.py's ignored flags (printed;
    load_config_with_notes returns the notes instead)."""
    config, notes = load_config_with_notes(path, schema)
    if note_unused:
        for note in notes:
            print(f"note: {note}")
    return config


def load_config_with_notes(path: str | os.PathLike, schema: ConfigSchema | None = None
                           ) -> tuple[Config, list[str]]:
    """load_config, printing nothing: the config and its notes (console lines without the
    `note: ` prefix; with a schema, the original's keys the port does not use)."""
    path = Path(os.path.abspath(path))
    if not path.is_file():
        raise ConfigError(f"{path}: config file does not exist")
    statements = _read_statements(path, (path.resolve(),))

    # Constraints of the whole chain are known up front, so an assignment may use a
    # constraint's bare words no matter where the constrain line is; the last one wins.
    constraints = {s.name: (s, _parse_constraint(s)) for s in statements if s.kind == "constrain"}

    values: dict[str, Any] = {}
    assigned_at: dict[str, _Statement] = {}
    for stmt in statements:
        if stmt.kind != "assign":
            continue
        if keyword.iskeyword(stmt.name):
            raise _err(stmt.path, stmt.lineno, f"{stmt.name!r} is a reserved word")
        allowed = constraints.get(stmt.name, (None, []))[1]
        words = frozenset(v for v in allowed if isinstance(v, str))
        tree = _parse_expression(stmt.text, stmt.path, stmt.lineno)
        values[stmt.name] = _Evaluator(stmt.path, stmt.lineno, values, words).eval(tree)
        assigned_at[stmt.name] = stmt

    for name, (cstmt, allowed) in constraints.items():
        where = f"{cstmt.path}:{cstmt.lineno}"
        if name not in values:
            raise _err(cstmt.path, cstmt.lineno, f"constrained name {name!r} is never assigned")
        if not any(_same_value(values[name], a) for a in allowed):
            stmt = assigned_at[name]
            raise _err(
                stmt.path,
                stmt.lineno,
                f"{name} = {values[name]!r} violates 'constrain {name} :: {cstmt.text}' ({where})",
            )
    notes = [] if schema is None else _check_schema(schema, path, statements, values,
                                                    assigned_at)
    return Config(values, path), notes


def _check_schema(schema: ConfigSchema, path: Path, statements: list[_Statement],
                  values: dict[str, Any], assigned_at: dict[str, _Statement]) -> list[str]:
    """Raise ConfigError for an undeclared key or a wrong type; the notes on unused keys."""
    for stmt in statements:
        if stmt.kind == "assign" and (problem := schema.unknown_key_problem(stmt.name)):
            raise _err(stmt.path, stmt.lineno, problem)
    for name, value in values.items():
        if problem := schema.type_problem(name, value):
            raise _err(assigned_at[name].path, assigned_at[name].lineno, problem)
    unused = [name for name in values if name in schema.unused_original_keys]
    return [f"{path}: {', '.join(unused)}: keys of the original's {schema.kind} configs that "
            "the port does not use; ignored"] if unused else []


# ---------------------------------------------------------------------------- writing


def _format_value(value: Any) -> str:
    """Literal syntax that :func:`load_config` parses back to ``value``."""
    if isinstance(value, str):
        if "$" not in value:
            return repr(value)
        # Adjacent literals so that no `$NAME$` appears in the text to be substituted again.
        return " ".join(repr(part) for part in re.split(r"(\$)", value) if part)
    if isinstance(value, float) and not math.isfinite(value):
        # inf/nan have no literal; 1e999 overflows to inf when parsed.
        return "(1e999 - 1e999)" if math.isnan(value) else ("-1e999" if value < 0 else "1e999")
    if isinstance(value, tuple):
        inner = ", ".join(_format_value(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, list):
        return "[" + ", ".join(_format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{_format_value(k)}: {_format_value(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, _CONSTANT_TYPES):
        return repr(value)
    raise TypeError(f"cannot write {type(value).__name__} value {value!r} to a config file")


def config_to_text(cfg: Config) -> str:
    """A flattened config file (no ``use``) that :func:`load_config` reads back equal."""
    lines = [
        # Where it came from, relative to the config root: no path of the machine it ran on.
        "# Flattened from " + ("/".join(config_root_parts(cfg.source_path)) if cfg.source_path
                               else "<config built in code>"),
        "# (all `use`d files merged; bare enum words are written as strings)",
    ]
    lines += [f"{name} = {_format_value(value)}" for name, value in cfg.items()]
    return "\n".join(lines) + "\n"


# In a log dir's name, the part naming the log dir it was restored from (the original's and ours).
RESTORE_PREFIX = "RESTORE@"


def config_root_parts(path: str | os.PathLike) -> tuple[str, ...]:
    """A config path from its nearest ancestor directory named ``ae_configs`` or
    ``pc_configs`` on (``('ae_configs', 'cvpr', 'low')``); without such an ancestor, the file
    name alone."""
    parts = Path(os.path.normpath(os.path.abspath(path))).parts
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] in _CONFIG_ROOT_DIRS:
            return parts[i:]
    return parts[-1:]


def config_job_name(path: str | os.PathLike) -> str:
    """Job name from a config path: ``ae_configs/cvpr/low`` -> ``cvpr@low``; without an
    ``ae_configs`` or ``pc_configs`` ancestor, the file name alone."""
    parts = config_root_parts(path)
    return "@".join(parts[1:] if len(parts) > 1 else parts)
