"""YAML config files validated by pydantic models; errors name the file, the line and the
problem, so nothing starts on a bad file."""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import ssl
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    FilePath,
    ValidationError,
)

from loginprobe.address import parse_resolver
from loginprobe.target import TargetError, parse_target


def _target_url(url: str) -> str:
    try:
        parse_target(url)
    except TargetError as exc:
        raise ValueError(str(exc)) from None
    return url


def _resolver(text: str) -> str:
    parse_resolver(text)  # its ValueError says what was expected
    return text


def check_ca_file(path: str | Path) -> str:
    """A CA bundle that holds at least one PEM certificate; ValueError saying what is wrong."""
    try:
        ssl.create_default_context(cafile=str(path))
    except ssl.SSLError:  # an OSError too: first
        raise ValueError(
            f"{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----): give the CA "
            "bundle that signed the server's certificate"
        ) from None
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror})") from None
    return str(path)


def _ca_file(path: Path) -> Path:
    check_ca_file(path)
    return path


# A CA bundle, refused at load time when it holds no certificate.
CAFile = Annotated[FilePath, AfterValidator(_ca_file)]

# A DNS resolver written IP[:PORT], refused at load time when it is not one.
Resolver = Annotated[str, AfterValidator(_resolver)]

# A check's URL, refused at load time (with its line) when it cannot be probed.
TargetURL = Annotated[str, AfterValidator(_target_url)]

M = TypeVar("M", bound=BaseModel)
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(value: object) -> object:
    """30, "30s", "5m", "1h", "7d", "500ms": what a Prometheus user would write."""
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", value)
        if not m:
            raise ValueError("expected a duration such as 30, 30s, 5m, 1h or 500ms")
        return float(m[1]) * _UNITS[m[2] or "s"]
    return value


# A positive duration in seconds, written as a number or with a unit.
Seconds = Annotated[float, BeforeValidator(_seconds), Field(gt=0)]


def is_loopback(host: str) -> bool:
    """Where plaintext is allowed: localhost, 127.0.0.0/8, ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ConfigError(Exception):
    """An invalid config file: the message reads FILE:LINE: what is wrong."""


class Strict(BaseModel):
    """Base for config models: unknown keys are refused (a typo must not be ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """Follow a pydantic error location through the YAML node tree to a line number."""
    line = node.start_mark.line + 1 if node is not None else None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == key:
                    node, line = v, k.start_mark.line + 1
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def load(path: str | Path, model: type[M]) -> M:
    """Parse and validate a YAML file into model, or raise ConfigError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    text = _expand(path, text)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    if data is None:
        required = _required(model)
        raise ConfigError(f"{path}: the file is empty" + (
            f": it needs at least {', '.join(required)}" if required else ""))
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        # A check across fields (such as "no credential") sits on a key the file may not
        # have; when another error explains it (a credential that failed), it only misleads.
        own = [e for e in errors if _in_file(node, tuple(e["loc"]))]
        problems = []
        for err in errors if not own or len(own) == len(errors) else own:
            loc = tuple(err["loc"])
            if not _in_file(node, loc):
                loc = loc[:-1]  # say it of the section the file has, not of a key it lacks
            line = _line_of(node, loc)
            field = ".".join(str(p) for p in loc) or "(top level)"
            problems.append(f"{path}:{line or 1}: {field}: {_words(err, model)}")
        raise ConfigError("\n".join(dict.fromkeys(problems))) from None


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(path: Path, text: str) -> str:
    """${NAME} and ${NAME:-default} from the environment, so one file (a ConfigMap, a
    packaged default) serves every site: what differs per site comes from its environment.
    $$ stands for a literal $. Comments are left alone."""
    lines = []
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        if line.lstrip().startswith("#"):
            lines.append(line)
            continue

        def value(m: re.Match[str], number: int = number) -> str:
            name, default = m[1], m[2]
            found = os.environ.get(name)
            if found is None or (found == "" and default is not None):
                if default is None:
                    raise ConfigError(f"{path}:{number}: ${{{name}}}: the environment variable "
                                      f"{name} is not set (or write ${{{name}:-default}})")
                return default
            return found

        lines.append(_VARIABLE.sub(value, line.replace("$$", "\0")).replace("\0", "$"))
    return "".join(lines)


def _in_file(node: yaml.Node | None, loc: tuple[int | str, ...]) -> bool:
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == key), None)
            if node is None:
                return False
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
            if key >= len(node.value):
                return False
            node = node.value[key]
        else:
            return False
    return True


def _model_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The config model that holds the keys at loc, following fields, lists and Optionals."""
    current: Any = model
    for key in loc:
        if isinstance(key, int):
            continue  # a list item: the list's item model was found with its field
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(key)
        if field is None:
            return None
        current = _inner_model(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _required(model: type[BaseModel]) -> list[str]:
    return [name for name, f in model.model_fields.items() if f.is_required()]


def _kind(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if value is None:
        return "nothing"
    return f"{value!r}"


def _words(err: Any, model: type[BaseModel]) -> str:
    """A pydantic error in the project's words: what was found and what is expected."""
    kind, found, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", err["msg"]))
    if kind == "extra_forbidden":
        key = str(err["loc"][-1])
        holder = _model_at(model, tuple(err["loc"][:-1]))
        known = sorted(holder.model_fields) if holder else []
        close = difflib.get_close_matches(key, known, n=1)
        if close:
            return f"unknown key {key!r}: did you mean {close[0]!r}?"
        return f"unknown key {key!r}" + (f"; the keys here are {', '.join(known)}" if known else "")
    if kind == "missing":
        return "required, and missing"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"expected a mapping (key: value lines), found {_kind(found)}"
    if kind in ("list_type", "tuple_type"):
        return f"expected a list (- item lines), found {_kind(found)}"
    if kind == "string_type":
        return f"expected text, found {_kind(found)}: put it in quotes"
    if kind in ("int_type", "int_parsing", "float_type", "float_parsing", "int_from_float"):
        return f"expected a number, found {_kind(found)}"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false, found {_kind(found)}"
    if kind == "literal_error":
        return f"{_kind(found)} is not one of {ctx.get('expected')}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        limit = next(iter(ctx.values()), "")
        words = {"greater_than": "above", "greater_than_equal": "at least",
                 "less_than": "below", "less_than_equal": "at most"}[kind]
        return f"expected a value {words} {limit}, found {_kind(found)}"
    if kind in ("string_too_short", "too_short"):
        return "must not be empty"
    if kind in ("string_too_long", "too_long"):
        return f"too long: at most {ctx.get('max_length')} characters"
    if kind == "path_not_file":
        return f"{found}: no such file"
    if kind == "string_pattern_mismatch":
        return f"{_kind(found)} is not in the expected form ({ctx.get('pattern')})"
    return str(err["msg"])
