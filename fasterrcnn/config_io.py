"""Configs to and from plain dicts, and dotted-key overrides (``--set train.lr=0.01``).

Generic over frozen config dataclasses (the ones in :mod:`fasterrcnn.config`, which re-exports
everything here): unknown keys and values of the wrong type raise :class:`ConfigError` with the
dotted path of the offending key.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping


class ConfigError(ValueError):
    """A configuration value or key is invalid."""


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-JSON dict of a config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(cls: type, data: Mapping[str, Any], *, path: str = "") -> Any:
    """Build dataclass ``cls`` from a (nested) mapping; unknown keys raise ConfigError."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(_join(path, k) for k in unknown)}; "
            f"valid keys of {path or 'the config'}: {', '.join(sorted(fields))}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        f = fields[name]
        kwargs[name] = _coerce(f, value, _join(path, name))
    return cls(**kwargs)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _coerce(f: dataclasses.Field, value: Any, path: str) -> Any:
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if value is None and "None" in str(f.type):  # an optional field set to None (e.g. straddle_thresh)
        return None
    if dataclasses.is_dataclass(default):
        return from_dict(type(default), value, path=path)
    if isinstance(default, tuple) or (isinstance(value, list) and default is None):
        if isinstance(value, str):  # --set KEY=1,2,3
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        kind = type(default[0]) if isinstance(default, tuple) and default else None
        if kind in (int, float):
            try:
                value = [kind(v) for v in value]
            except (TypeError, ValueError):
                raise ConfigError(f"{path}: expected a list of {kind.__name__}s, got {value!r}") from None
        return tuple(value)
    if isinstance(default, bool):
        if isinstance(value, str):
            low = value.lower()
            if low in ("true", "1", "yes"):
                return True
            if low in ("false", "0", "no"):
                return False
            raise ConfigError(f"{path}: expected a boolean, got {value!r}")
        return bool(value)
    if isinstance(default, int) and not isinstance(value, bool):
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: expected an integer, got {value!r}") from None
    if isinstance(default, float):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: expected a number, got {value!r}") from None
    return value


def override(cfg: Any, overrides: Mapping[str, Any]) -> Any:
    """Return config ``cfg`` (a :class:`~fasterrcnn.config.Config`, or any config dataclass) with
    dotted-key overrides applied, e.g. ``{"train.lr": 0.01}``.

    String values are parsed as JSON when possible (``"[1, 2]"``, ``"0.5"``, ``"null"``).
    """
    data = to_dict(cfg)
    for key, value in overrides.items():
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"unknown config key {'.'.join(parts[: i + 1])!r} in {key!r}")
            if i == len(parts) - 1:
                node[part] = value
            else:
                node = node[part]
    return from_dict(type(cfg), data)


def parse_overrides(items: list[str] | None) -> dict[str, str]:
    """``["train.lr=0.01", ...]`` -> ``{"train.lr": "0.01"}`` (for ``--set``)."""
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out
