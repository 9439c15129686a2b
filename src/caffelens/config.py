"""Settings from `[tool.caffelens]` in pyproject.toml or a `caffelens.toml`, merged under the
command line's options (the command line wins)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from caffelens.engine import Config
from caffelens.prototxt import ProtoTextError, net_from_file, solver_from_file

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(Exception):
    """A configuration file or a prototxt given on the command line is unusable."""


@dataclass(frozen=True)
class Settings:
    select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    explode_threshold: float | None = None
    fail_on: str | None = None
    format: str | None = None

    def engine_config(self, select=None, ignore=None, explode_threshold=None,
                      solver_path=None, net_path=None) -> Config:
        """The engine's Config: command-line values over file values over defaults."""
        solver = net = None
        try:
            if solver_path:
                solver = solver_from_file(solver_path)
            if net_path:
                net = net_from_file(net_path)
        except OSError as exc:
            raise ConfigError(f"{exc.filename}: {exc.strerror}") from None
        except ProtoTextError as exc:
            raise ConfigError(f"{solver_path if solver is None else net_path}: {exc}") from None
        from caffelens.rules import all_rules, matches

        for key in (select or ()) + (ignore or ()) + self.select + self.ignore:
            if not any(matches(rule, key) for rule in all_rules()):
                raise ConfigError(f"no rule matches {key!r}; see `caffelens rules`")
        return Config(
            select=tuple(select) if select is not None else self.select,
            ignore=tuple(ignore) if ignore is not None else self.ignore,
            explode_threshold=explode_threshold or self.explode_threshold or 1e8,
            solver=solver,
            net=net,
        )


def load_config(directory: Path) -> Settings:
    """Read caffelens.toml, else pyproject.toml's [tool.caffelens], from ``directory``."""
    for name, section in (("caffelens.toml", ()), ("pyproject.toml", ("tool", "caffelens"))):
        path = directory / name
        if not path.is_file():
            continue
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
        for key in section:
            data = data.get(key, {})
        if not data and section:
            continue
        return _settings(data, path)
    return Settings()


def _settings(data: dict, path: Path) -> Settings:
    def codes(key: str) -> tuple[str, ...]:
        value = data.get(key, [])
        if isinstance(value, str):
            value = value.split(",")
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{path}: {key} must be a list of rule codes or names")
        return tuple(v.strip() for v in value if v.strip())

    threshold = data.get("explode-threshold", data.get("explode_threshold"))
    fail_on = data.get("fail-on", data.get("fail_on"))
    if fail_on is not None and fail_on not in ("error", "warning", "info", "never"):
        raise ConfigError(f"{path}: fail-on must be error, warning, info or never")
    try:
        threshold = float(threshold) if threshold is not None else None
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: explode-threshold must be a number") from None
    if threshold is not None and not threshold > 0:  # also rejects nan
        raise ConfigError(f"{path}: explode-threshold must be a positive number")
    fmt = data.get("format")
    if fmt is not None and fmt not in FORMAT_NAMES:
        raise ConfigError(f"{path}: format must be one of {', '.join(FORMAT_NAMES)}")
    return Settings(codes("select"), codes("ignore"), threshold, fail_on, fmt)


FORMAT_NAMES = ("table", "json", "markdown", "github", "junit", "sarif")
