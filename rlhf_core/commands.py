"""The training and inference commands: `pretrain`, `generate` and `import-checkpoint`, and
what every command shares: the recipe of the model it loads and the trainers' warnings.

They only translate options into calls of `rlhf_core.pretrain`, `rlhf_core.generation` and
`rlhf_core.checkpoint`; see `rlhf_core.cli` for how commands register and report errors.
A command's options that set a recipe's setting default to None, and the settings it uses are
`dataclasses.replace(recipe.<section>, **given_options(args, names))`, the recipe being the one
for the size of the model it loads (`checkpoint_recipe`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import warnings
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import torch
from accelerate import PartialState

from rlhf_core.checkpoint import (
    UncheckedFileWarning,
    config_fields,
    import_reference_checkpoint,
    load_checkpoint,
    palm_config_from_dict,
)
from rlhf_core.data import read_split_metadata
from rlhf_core.generation import Sampler, generate
from rlhf_core.palm import PaLMConfig
from rlhf_core.pretrain import (
    MODEL_PRESETS,
    MixedPrecision,
    PretrainConfig,
    PretrainResult,
    pretrain,
)
from rlhf_core.reference_import import LayerNormConventionError
from rlhf_core.tokenizer import load_tokenizer

if TYPE_CHECKING:
    from rlhf_core.recipes import Recipe

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]
# The help of an option that defaults to the recipe's setting for the model a command loads.
FROM_RECIPE = "(default: the recipe's; see `python -m rlhf_core recipe --base CKPT`)"
# The options that set a field of the recipe's `sampling` of the same name.
SAMPLING_OPTIONS = ("temperature", "top_p", "max_new_tokens")
# The architecture flags of import-checkpoint, each a PaLMConfig field of the same name.
_ARCHITECTURE_FLAGS = ("num_tokens", "dim", "depth", "heads", "dim_head")


class CommandLineError(Exception):
    """An option that parses but cannot be used, e.g. a --config that PaLMConfig refuses."""


def checkpoint_recipe(directory: Path) -> Recipe:
    """The recipe (`rlhf_core.recipes`) for the size of the PaLM checkpoint at `directory`, read
    from its config alone: a command knows its settings, and refuses bad ones, before the
    (slow) load of the weights."""
    # Imported here rather than above: recipes imports the trainers, whose commands import this.
    from rlhf_core import recipes

    return recipes.recipe_for_checkpoint(directory)


def given_options(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The options among `names` that the command line set; those left out are None, and the
    settings they stand for keep the recipe's values."""
    values = {name: getattr(args, name) for name in names}
    return {name: value for name, value in values.items() if value is not None}


def print_warnings(messages: Iterable[str]) -> None:
    """A trainer's warnings (`rlhf_core.diagnostics`), one line each on stderr."""
    for message in messages:
        print(f"warning: {message}", file=sys.stderr)


def add_pretrain_command(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "pretrain",
        help="pretrain a PaLM on a prepared dataset",
        description="Pretrain a PaLM on a directory written by prepare-data. Runs on the CPU, a "
        "GPU, or several through `accelerate launch -m rlhf_core pretrain ...` (DDP or FSDP). "
        "Saves resumable state and a checkpoint every --checkpoint-every steps and final/ at the "
        "end; run the same command again to resume.",
    )
    parser.add_argument("--data", type=Path, required=True, metavar="DIR", help="prepared data")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="run directory")
    model = parser.add_mutually_exclusive_group()
    model.add_argument(
        "--preset", choices=sorted(MODEL_PRESETS), help="model preset (default: tiny)"
    )
    model.add_argument(
        "--config",
        type=_json_object,
        metavar="JSON",
        help="PaLMConfig fields: a JSON file (a checkpoint's config.json works) or an inline "
        "object; num_tokens defaults to the dataset's vocabulary size",
    )
    _add_training_options(parser)
    parser.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue from the latest state in --out; --no-resume starts over and deletes the "
        "earlier run's states, checkpoints and metrics there (default: resume)",
    )
    parser.set_defaults(run=_run_pretrain)


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    def option(flag: str, name: str, kind: type[int] | type[float], help_text: str) -> None:
        parser.add_argument(
            flag,
            dest=name,
            type=kind,
            default=_pretrain_default(name),
            metavar="N" if kind is int else "F",
            help=f"{help_text} (default: %(default)s)",
        )

    option("--steps", "max_steps", int, "optimizer steps in all")
    option("--batch-size", "batch_size", int, "blocks per optimizer step on each process")
    option("--grad-accum", "grad_accum_steps", int, "micro-batches per step")
    option("--lr", "lr", float, "peak learning rate")
    option("--min-lr-ratio", "min_lr_ratio", float, "final learning rate / peak")
    option("--warmup-steps", "warmup_steps", int, "steps of linear warm-up")
    option("--weight-decay", "weight_decay", float, "AdamW decay of weight matrices")
    option("--grad-clip", "grad_clip", float, "max gradient norm, 0 for none")
    option("--eval-every", "eval_every", int, "steps between validation losses")
    option("--eval-batches", "eval_batches", int, "validation micro-batches, 0 for none")
    option("--checkpoint-every", "checkpoint_every", int, "steps between checkpoints")
    option("--keep-last", "keep_last", int, "checkpoints kept, 0 for all")
    option("--seed", "seed", int, "random seed")
    parser.add_argument(
        "--betas",
        type=float,
        nargs=2,
        default=_pretrain_default("betas"),
        metavar=("B1", "B2"),
        help="AdamW betas (default: %(default)s)",
    )
    parser.add_argument(
        "--mixed-precision",
        choices=get_args(MixedPrecision),
        default=_pretrain_default("mixed_precision"),
        help="auto: bf16 on a GPU that supports it, none elsewhere (default: %(default)s)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument(
        "--log-file",
        type=Path,
        metavar="PATH",
        help="metrics as JSON lines (default: OUT/metrics.jsonl)",
    )


def _pretrain_default(name: str) -> Any:
    return next(item.default for item in fields(PretrainConfig) if item.name == name)


def _run_pretrain(args: argparse.Namespace) -> None:
    names = {item.name for item in fields(PretrainConfig)} - {"data_dir", "out_dir", "model"}
    options = {name: getattr(args, name) for name in names}
    options["grad_clip"] = options["grad_clip"] or None
    options["keep_last"] = options["keep_last"] or None
    config = PretrainConfig(
        data_dir=args.data, out_dir=args.out, model=_model_option(args), **options
    )
    result = pretrain(config, resume=args.resume)
    if PartialState().is_main_process:
        print(_summary(result, args.out))


def _model_option(args: argparse.Namespace) -> PaLMConfig | str:
    if args.config is None:
        preset: str = args.preset or _pretrain_default("model")
        return preset
    try:
        values = config_fields(args.config)
        if "num_tokens" not in values:
            values["num_tokens"] = read_split_metadata(args.data, "train").vocab_size
        return palm_config_from_dict(values)
    except ValueError as error:
        raise CommandLineError(f"--config: {error}") from error


def _summary(result: PretrainResult, out: Path) -> str:
    losses = ", ".join(
        f"{name} {value:.4f}"
        for name, value in {**result.metrics, **result.eval_metrics}.items()
        if name in ("loss", "val_loss")
    )
    if result.stopped_early:
        return f"stopped at step {result.step} ({losses}); run again to resume from {out}"
    return f"trained {result.step} steps ({losses}) -> {result.final_checkpoint}"


def add_generate_command(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="sample completions from a checkpoint",
        description="Load a checkpoint and print each prompt followed by its sampled completion.",
    )
    parser.add_argument("--checkpoint", type=Path, required=True, metavar="DIR")
    parser.add_argument(
        "--prompt", action="append", required=True, metavar="TEXT", help="repeat for a batch"
    )
    parser.add_argument("--max-new-tokens", type=int, metavar="N", help=FROM_RECIPE)
    parser.add_argument(
        "--temperature", type=float, metavar="T", help=f"0 for greedy decoding {FROM_RECIPE}"
    )
    parser.add_argument("--top-k", type=int, metavar="K")
    parser.add_argument("--top-p", type=float, metavar="P", help=FROM_RECIPE)
    parser.add_argument("--min-p", type=float, metavar="P")
    parser.add_argument("--repetition-penalty", type=float, metavar="F")
    parser.add_argument("--seed", type=int, metavar="N", help="for reproducible samples")
    parser.add_argument("--device", help="e.g. cpu, cuda:1 (default: cuda if there is one)")
    parser.set_defaults(run=_run_generate)


def _run_generate(args: argparse.Namespace) -> None:
    recipe = checkpoint_recipe(args.checkpoint)
    chosen = dataclasses.replace(recipe.sampling, **given_options(args, SAMPLING_OPTIONS))
    sampling = {
        "temperature": chosen.temperature,
        "top_k": args.top_k,
        "top_p": chosen.top_p,
        "min_p": args.min_p,
        "repetition_penalty": args.repetition_penalty,
    }
    try:
        Sampler(**sampling)  # checks the values before the (slow) checkpoint load
    except ValueError as error:
        raise CommandLineError(str(error)) from error
    if chosen.max_new_tokens < 1:
        raise CommandLineError("--max-new-tokens must be >= 1")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    checkpoint = load_checkpoint(args.checkpoint, device=device)
    tokenizer = checkpoint.tokenizer
    # An empty prompt starts a new document, as after the end-of-text of the previous one.
    prompts = [tokenizer.encode(prompt) or [tokenizer.eos_id] for prompt in args.prompt]
    generation = generate(
        checkpoint.model,
        prompts,
        max_new_tokens=chosen.max_new_tokens,
        eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id,
        seed=args.seed,
        **sampling,
    )
    for index, (prompt, tokens, length) in enumerate(
        zip(args.prompt, generation.tokens.tolist(), generation.lengths.tolist(), strict=True)
    ):
        if index:
            print("-" * 40)
        print(prompt + tokenizer.decode(tokens[:length], skip_special_tokens=True))


def add_import_checkpoint_command(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "import-checkpoint",
        help="convert a PaLM-rlhf-pytorch state dict into a checkpoint",
        description="Convert a state dict saved by lucidrains' PaLM-rlhf-pytorch (torch.save of "
        "model.state_dict()) into a checkpoint directory. The file's CRC-32 checksums are "
        "verified first: nothing is written for a corrupt one. The architecture is read from "
        "the tensor shapes; --config and the architecture flags state fields that must agree "
        "with them, or set those the shapes cannot tell (qk_norm_scale, xpos_scale_base, ...).",
    )
    parser.add_argument("source", type=Path, metavar="SRC.pt")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR")
    parser.add_argument(
        "--layernorm-convention",
        choices=("gamma", "offset_one"),
        required=True,
        help="gamma: 2023 releases and the public checkpoints (weight = gamma); offset_one: "
        "current releases (weight = gamma + 1). Refused where the stored weights clearly say "
        "the other",
    )
    parser.add_argument(
        "--force-layernorm-convention",
        action="store_true",
        help="import with --layernorm-convention even where the stored weights say the other",
    )
    parser.add_argument(
        "--tokenizer",
        default="bytes",
        metavar="SPEC",
        help="'bytes', a saved tokenizer directory or a tokenizer.json (default: %(default)s)",
    )
    parser.add_argument("--config", type=_json_object, metavar="JSON", help="PaLMConfig fields")
    for name in _ARCHITECTURE_FLAGS:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, metavar="N")
    parser.set_defaults(run=_run_import_checkpoint)


def _run_import_checkpoint(args: argparse.Namespace) -> None:
    flags = {name: getattr(args, name) for name in _ARCHITECTURE_FLAGS}
    tokenizer = load_tokenizer(args.tokenizer)
    try:
        values = config_fields(args.config or {})
        values.update({name: value for name, value in flags.items() if value is not None})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UncheckedFileWarning)
            metadata = import_reference_checkpoint(
                args.source,
                args.out,
                tokenizer,
                layernorm_convention=args.layernorm_convention,
                force_layernorm_convention=args.force_layernorm_convention,
                config_values=values,
            )
    except LayerNormConventionError as error:
        raise CommandLineError(
            f"--layernorm-convention {error.stated}: the weights of {args.source} say "
            f"{error.detected!r}; pass --layernorm-convention {error.detected}, or add "
            "--force-layernorm-convention to import them as stated"
        ) from error
    except ValueError as error:
        raise CommandLineError(f"--config: {error}") from error
    print_warnings(str(item.message) for item in caught)
    print(f"imported {args.source} -> {args.out} (weights sha256 {metadata.weights_sha256})")


def _json_object(value: str) -> dict[str, Any]:
    """A JSON object given inline or as the path of a file holding one."""
    try:
        text = value if value.lstrip().startswith("{") else Path(value).read_text(encoding="utf-8")
        parsed = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise argparse.ArgumentTypeError(f"not a JSON object or a JSON file ({error})") from error
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return parsed
