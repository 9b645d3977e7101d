"""YAML config files validated by pydantic models; errors name the file, the line and the
problem, so nothing starts on a bad file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


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
