"""`foundations task COMMAND`: the synthetic tasks' commands in one group (write a task's data,
measure a run on it). Each command's flags live with its package (prompting/cli.py, post/cli.py);
a new command joins the group with one `add_..._parser(group)` call in `add_task_parser`.
"""

from __future__ import annotations

from foundations.post.cli import add_addition_pairs_parser, add_answers_parser
from foundations.prompting.cli import (add_addition_data_parser, add_facts_commands,
                                       add_prompt_eval_parser)

# top-level verbs before the group existed: still parsed, for scripts, but not listed in --help
TOP_LEVEL_ALIASES = (add_addition_data_parser, add_addition_pairs_parser, add_prompt_eval_parser,
                     add_answers_parser)


def add_hidden(commands, add_parser) -> None:
    """The sub-commands `add_parser` defines on `commands`, left out of its --help listing."""
    listed = len(commands._choices_actions)
    add_parser(commands)
    del commands._choices_actions[listed:]


def add_task_parser(commands) -> None:
    p = commands.add_parser("task", help="the synthetic tasks: write their data, measure runs "
                                         "on them (addition-data, addition-pairs, prompt-eval, "
                                         "answers, facts-data, facts-eval)")
    group = p.add_subparsers(dest="task_command", required=True)
    add_addition_data_parser(group)
    add_addition_pairs_parser(group)
    add_prompt_eval_parser(group)
    add_answers_parser(group)
    add_facts_commands(group)
    for add_parser in TOP_LEVEL_ALIASES:
        add_hidden(commands, add_parser)
