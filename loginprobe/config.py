"""YAML config files validated by pydantic models; errors name the file, the line and the
problem, so nothing starts on a bad file."""

from __future__ import annotations

import ipaddress
import re
import ssl
from pathlib import Path
from typing import Annotated, Any, TypeVar

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
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            line = _line_of(node, loc)
            field = ".".join(str(p) for p in loc) or "(top level)"
            problems.append(f"{path}:{line or 1}: {field}: {err['msg']}")
        raise ConfigError("\n".join(problems)) from None
