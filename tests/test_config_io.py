"""Tests of config_io: generic over config dataclasses, exact error paths, re-exported by config."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

import fasterrcnn.config as config
from fasterrcnn import config_io
from fasterrcnn.config_io import ConfigError, from_dict, override, parse_overrides, to_dict


@dataclass(frozen=True)
class _Inner:
    size: int = 3
    ratios: tuple[float, ...] = (0.5, 1.0)
    flip: bool = False


@dataclass(frozen=True)
class _Outer:
    name: str = "a"
    inner: _Inner = field(default_factory=_Inner)


def test_any_config_dataclass_round_trips_and_overrides():
    cfg = _Outer()
    assert to_dict(cfg) == {"name": "a", "inner": {"size": 3, "ratios": [0.5, 1.0], "flip": False}}
    assert from_dict(_Outer, to_dict(cfg)) == cfg
    new = override(cfg, parse_overrides(["inner.size=7", "inner.ratios=1,2,4", "inner.flip=yes"]))
    assert new == _Outer("a", _Inner(7, (1.0, 2.0, 4.0), True))
    assert type(new) is _Outer and cfg.inner.size == 3  # the original is untouched


def test_errors_name_the_dotted_key():
    with pytest.raises(ConfigError, match=r"unknown config key 'inner.sise' in 'inner.sise'"):
        override(_Outer(), {"inner.sise": 1})
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) inner.x; valid keys of inner: flip, ratios, size"):
        from_dict(_Outer, {"inner": {"x": 1}})
    with pytest.raises(ConfigError, match=r"inner.size: expected an integer, got 2.5"):
        from_dict(_Outer, {"inner": {"size": 2.5}})
    with pytest.raises(ConfigError, match=r"inner: expected a mapping, got int"):
        from_dict(_Outer, {"inner": 4})
    with pytest.raises(ConfigError, match="--set expects KEY=VALUE"):
        parse_overrides(["train.lr"])


def test_config_re_exports_the_same_objects():
    for name in ("ConfigError", "from_dict", "override", "parse_overrides", "to_dict"):
        assert getattr(config, name) is getattr(config_io, name)
        assert name in config.__all__
