"""Parsing: a mapping of sections (YAML, overrides) to the checked, resolved, frozen Config.

Every key, type, choice and range is checked here against the `knob` fields of sections.py,
with one-line errors naming the key; `describe_keys` prints the same fields' docs."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import typing
from typing import Any, Literal

import yaml

from foundations.config.migrate import migrate, migrate_eval_windows, set_path
from foundations.config.sections import GATED_MLPS, Config, ConfigError
from foundations.config.validate import validate


def close_matches(name: str, options) -> str:
    matches = difflib.get_close_matches(name, list(options), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(repr(m) for m in matches)}?)" if matches else ""


def type_name(annotation) -> str:
    """How `foundations config --keys` and the errors spell a field's type."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " | ".join(args)
    if origin is typing.Union:
        return " or ".join("None" if a is type(None) else type_name(a) for a in args)
    if origin is tuple:
        return f"list of {type_name(args[0])}"
    return getattr(annotation, "__name__", str(annotation))


def coerce(key: str, value: Any, annotation) -> Any:
    """Checks `value` against a field's type; ints are accepted where floats are expected."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:  # Optional[X]
        return None if value is None else coerce(key, value, args[0])
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(args)}")
    if origin is tuple:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # a single path where a list is expected
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if dataclasses.is_dataclass(args[0]):  # a list of sections (data.mixture)
            return tuple(build_section(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        return tuple(coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{key}: expected {type_name(annotation)}, got {value!r} "
                      f"({type(value).__name__})")


def in_range(value, check: str) -> bool:
    """Whether `value` passes a knob's check ('> 0', '[0, 1)', '-1 or > 0', ...)."""
    if check == "-1 or > 0":
        return value == -1 or value > 0
    if check[0] in "[(":
        low, high = (float(x) for x in check[1:-1].split(","))
        return ((low <= value if check[0] == "[" else low < value)
                and (value <= high if check[-1] == "]" else value < high))
    op, bound = check.split()
    return value > float(bound) if op == ">" else value >= float(bound)


def build_section(cls, tree: Any, name: str):
    """A section dataclass from a mapping of its keys: unknown keys, types, choices and ranges
    are checked here, nested sections recursively."""
    where = f"'{name}'" if name else "the config"
    if not isinstance(tree, dict):
        raise ConfigError(f"{where} must be a mapping of keys, got {tree!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in tree.items():
        full = f"{name}.{key}" if name else str(key)
        if key not in hints:
            kind = "key" if name else "section"
            raise ConfigError(f"unknown {kind} '{full}'" + close_matches(str(key), hints)
                              + f"; {'keys of ' + where if name else 'sections'}: "
                              + ", ".join(hints))
        if dataclasses.is_dataclass(hints[key]):
            values[key] = build_section(hints[key], value, full)
            continue
        values[key] = checked(full, value, hints[key], fields[key].metadata.get("check"))
    return cls(**values)


def checked(full: str, value: Any, annotation, check: str | None) -> Any:
    """One knob's value, coerced to its type and range-checked; errors name it `full`."""
    value = coerce(full, value, annotation)
    if check and value is not None and not in_range(value, check):
        raise ConfigError(f"{full}={value!r} must be {'in ' if check[0] in '[(' else ''}{check}")
    return value


def section_from_flags(cls, values: dict[str, Any]):
    """A section from command-line flags (`foundations prepare`): checked as a config's keys
    are, each error naming the flag (--min-chars for min_chars)."""
    hints, fields = typing.get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls)}
    return cls(**{key: checked("--" + key.replace("_", "-"), value, hints[key],
                               fields[key].metadata.get("check"))
                  for key, value in values.items()})


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """'model.moe.num_experts=8' -> (('model', 'moe', 'num_experts'), 8); the value is YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    dotted, raw = text.split("=", 1)
    path = tuple(dotted.split("."))
    if len(path) < 2 or not all(path):
        raise ConfigError(f"override {text!r}: expected section.key=value, e.g. train.steps=80")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def config_from_tree(tree: dict) -> Config:
    """The checked, resolved, frozen Config of a mapping of sections."""
    config = build_section(Config, migrate_eval_windows(migrate(copy.deepcopy(tree))), "")
    validate(config)
    return resolve(config)


def tokenizer_vocab_size(spec: str) -> int:
    from foundations.tokenizers import configured_tokenizer  # no JAX: `compile` sets it up later
    return configured_tokenizer(spec).vocab_size


def resolve(config: Config) -> Config:
    """Fills the derived model fields (vocabulary, key/value heads, head size, MLP width,
    decoder depth) from the others and the tokenizer."""
    m = config.model
    vocab = m.vocab_size
    if vocab is None:
        vocab = -(-tokenizer_vocab_size(config.data.tokenizer) // m.vocab_multiple) \
            * m.vocab_multiple
    d_ff = m.d_ff or (4 * m.d_model if m.mlp not in GATED_MLPS
                      else -(-(8 * m.d_model // 3) // 64) * 64)
    model = dataclasses.replace(
        m, vocab_size=vocab, num_kv_heads=m.num_kv_heads or m.num_heads,
        head_dim=m.head_dim or m.d_model // m.num_heads, d_ff=d_ff,
        num_decoder_layers=(m.num_decoder_layers or m.num_layers) if m.family == "encdec"
        else None)
    return dataclasses.replace(config, model=model)


def to_dict(section) -> dict:
    """A config (or section) as nested plain mappings, lists for tuples: what YAML stores."""
    return {f.name: (to_dict(v) if dataclasses.is_dataclass(v) else
                     [to_dict(x) if dataclasses.is_dataclass(x) else x for x in v]
                     if isinstance(v, tuple) else v)
            for f in dataclasses.fields(section) for v in [getattr(section, f.name)]}


def replace(config: Config, changes: dict[str, Any]) -> Config:
    """A copy with some settings changed by dotted name (e.g. {"train.steps": 5}), checked
    again. Derived model values stay as they were: to derive them anew (a new d_model, say),
    build the config from its settings instead (load_config, config_from_tree)."""
    tree = to_dict(config)
    for name, value in changes.items():
        set_path(tree, name.split("."), list(value) if isinstance(value, tuple) else value)
    return config_from_tree(tree)


def describe_keys() -> str:
    """Every key with its type, default and doc: what `foundations config --keys` prints."""
    lines = []

    def walk(cls, prefix: str):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}{f.name}.")
                continue
            default = f.default
            check = f" ({f.metadata['check']})" if f.metadata.get("check") else ""
            lines.append(f"{prefix}{f.name}: {type_name(hints[f.name])} = "
                         f"{list(default) if isinstance(default, tuple) else default!r}"
                         f"{check}\n    {f.metadata.get('doc', '')}")
    walk(Config, "")
    return "\n".join(lines)
