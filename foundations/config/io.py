"""Config files: reading YAML with overrides, writing a run's config, dotted settings.

`load_config` is what every command calls: defaults, then the file, then `section.key=value`."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import yaml

from foundations.config.migrate import migrate, set_path
from foundations.config.parse import config_from_tree, parse_override, to_dict
from foundations.config.sections import Config, ConfigError


def read_tree(path: str | Path) -> dict:
    """A YAML config file as a (migrated) mapping of sections."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(tree).__name__}")
    return migrate(tree)


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Defaults, then the YAML file, then `section.key=value` overrides; checked and resolved."""
    tree = read_tree(path) if path is not None else {}
    for text in overrides:
        set_path(tree, *parse_override(text))
    return config_from_tree(tree)


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def flat_settings(config: Config) -> dict[str, Any]:
    """{'model.positions.kind': 'rope', ...}: every setting under its dotted name."""
    def walk(tree: dict, prefix: str):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value
    return dict(walk(to_dict(config), ""))
