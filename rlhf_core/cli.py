"""`python -m rlhf_core COMMAND`: a thin dispatcher over subcommands that live with their code.

To add a command, write `add_<name>_command(subparsers)` in its module (it adds a parser and sets
`run=<function taking the parsed args>` as a default) and list it in `COMMANDS`. Errors a user
can fix (`USER_ERRORS`) print one line and exit with status 1; bad options exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence

from rlhf_core.checkpoint import CheckpointError
from rlhf_core.commands import (
    CommandLineError,
    add_generate_command,
    add_import_checkpoint_command,
    add_pretrain_command,
)
from rlhf_core.corpus import DataError
from rlhf_core.data import add_prepare_data_command
from rlhf_core.demo import add_demo_command
from rlhf_core.diagnostics import LearningWarning
from rlhf_core.dpo import add_dpo_command
from rlhf_core.evaluation import add_best_of_n_command, add_evaluate_command
from rlhf_core.finetuning import FineTuneError
from rlhf_core.ppo import PPOError
from rlhf_core.ppo_command import add_ppo_command
from rlhf_core.pretrain import PretrainError
from rlhf_core.recipes import add_recipe_command
from rlhf_core.records import RecordError
from rlhf_core.rejection_sampling import add_rejection_sampling_command
from rlhf_core.reward_labels import RewardTrainingError
from rlhf_core.reward_training import add_train_reward_command
from rlhf_core.sft import add_sft_command
from rlhf_core.tokenizer import TokenizerError, add_train_tokenizer_command

COMMANDS: tuple[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None], ...] = (
    add_train_tokenizer_command,
    add_prepare_data_command,
    add_pretrain_command,
    add_generate_command,
    add_import_checkpoint_command,
    add_demo_command,
    add_sft_command,
    add_train_reward_command,
    add_dpo_command,
    add_ppo_command,
    add_rejection_sampling_command,
    add_evaluate_command,
    add_best_of_n_command,
    add_recipe_command,
)
# OSError covers what the file system says (permission denied, disk full, a file where a directory
# should be): the user's to fix, so a message rather than a traceback.
USER_ERRORS: tuple[type[Exception], ...] = (
    DataError,
    TokenizerError,
    CheckpointError,
    PretrainError,
    CommandLineError,
    FineTuneError,
    RecordError,
    RewardTrainingError,
    PPOError,
    OSError,
)
EXIT_USER_ERROR = 1
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rlhf_core", description="Train and use PaLM language models with RLHF."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            # The training commands print their trainers' warnings as "warning: ..." lines.
            warnings.simplefilter("ignore", LearningWarning)
            args.run(args)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
