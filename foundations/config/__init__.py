"""Typed configuration: one frozen, fully resolved `Config` of nested sections.

`load_config(path, overrides)` reads a YAML file, applies `section.key=value` overrides (nested:
`model.moe.num_experts=8`), checks every key, type, choice and range, derives what was left to
derive (vocabulary size, key/value heads, head size, MLP width, decoder depth) and returns a frozen
`Config`: the one object the rest of the code reads, saves in a run directory and compares on
resume. Problems raise `ConfigError` with a one-line message naming the key. The modules:
sections (the typed sections), parse (mapping -> Config), migrate (old keys), validate (checks
that need only the config), io (files). This module re-exports their public names (`__all__`) (the
functions validate and migrate shadow the submodules of the same name here, as before the split).
"""

from foundations.config.io import flat_settings, load_config, read_tree, save_config
from foundations.config.migrate import (OLD_DERIVED_ZERO, OLD_KEYS, migrate, migrate_eval_windows,
                                        new_path, set_path)
from foundations.config.parse import (build_section, close_matches, coerce, config_from_tree,
                                      checked, describe_keys, in_range, parse_override, replace,
                                      resolve, section_from_flags, to_dict, tokenizer_vocab_size,
                                      type_name)
from foundations.config.sections import (AttentionImpl, CheckpointConfig, CheckpointError, Config,
                                         ConfigError, DType, DataConfig, DistributedConfig,
                                         DpoConfig, Family, GATED_MLPS, LoraConfig, LossKind,
                                         MeshConfig, MixtureSource, Mlp, ModelConfig, MoeConfig,
                                         MoeDispatch, Newlines, Norm, NormPosition,
                                         ObjectiveConfig, ObjectiveKind, OptimizerConfig,
                                         PositionKind, PositionsConfig, PpoAdvantage, PpoConfig,
                                         PpoReward, PrefixTuningConfig, PrepareConfig,
                                         PromptTuningConfig, Remat, RewardConfig, RopeScaling,
                                         ScheduleConfig, ScheduleKind, SftConfig, TrainConfig,
                                         UNROLL_ALL_LAYERS, knob, scan_unroll_for)
from foundations.config.validate import (ADAPTER_KEYS, COMMAND_CHECKS, FAMILY_OBJECTIVES,
                                         adapter_settings, validate, validate_adapters,
                                         validate_family, validate_for, validate_pipeline,
                                         validate_post, validate_ppo, validate_shards,
                                         validate_stages)

__all__ = ['flat_settings', 'load_config', 'read_tree', 'save_config', 'OLD_DERIVED_ZERO',
           'OLD_KEYS', 'migrate', 'migrate_eval_windows', 'new_path', 'set_path', 'build_section',
           'close_matches', 'coerce', 'config_from_tree', 'checked', 'describe_keys', 'in_range',
           'parse_override', 'replace', 'resolve', 'section_from_flags', 'to_dict',
           'tokenizer_vocab_size', 'type_name', 'AttentionImpl', 'CheckpointConfig',
           'CheckpointError', 'Config', 'ConfigError', 'DType', 'DataConfig', 'DistributedConfig',
           'DpoConfig', 'Family', 'GATED_MLPS', 'LoraConfig', 'LossKind', 'MeshConfig',
           'MixtureSource', 'Mlp', 'ModelConfig', 'MoeConfig', 'MoeDispatch', 'Newlines', 'Norm',
           'NormPosition', 'ObjectiveConfig', 'ObjectiveKind', 'OptimizerConfig', 'PositionKind',
           'PositionsConfig', 'PpoAdvantage', 'PpoConfig', 'PpoReward', 'PrefixTuningConfig',
           'PrepareConfig', 'PromptTuningConfig', 'Remat', 'RewardConfig', 'RopeScaling',
           'ScheduleConfig', 'ScheduleKind', 'SftConfig', 'TrainConfig', 'UNROLL_ALL_LAYERS',
           'knob', 'scan_unroll_for', 'ADAPTER_KEYS', 'COMMAND_CHECKS', 'FAMILY_OBJECTIVES',
           'adapter_settings', 'validate', 'validate_adapters', 'validate_family', 'validate_for',
           'validate_pipeline', 'validate_post', 'validate_ppo', 'validate_shards',
           'validate_stages']
