"""Typed configuration (see sections.py): the package keeps every name `foundations.config` had."""

from foundations.config.sections import *  # noqa: F401,F403
from foundations.config.sections import (  # noqa: F401  (names `import *` leaves out)
    CheckpointError, ConfigError, Config, build_section, config_from_tree, describe_keys,
    flat_settings, knob, load_config, parse_override, replace, save_config, set_path, to_dict,
    validate)
