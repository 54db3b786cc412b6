"""PPO iteration throughput: `ppo_trainer.ppo_step` (generate, score, 4 epochs of updates).

One JSON line per run: rollouts/s (prompts answered and learned from per second of a whole
iteration) and the iteration's split into generation, scoring and learning seconds, which are
`ppo_step`'s own metrics (means over the timed iterations).

    python benchmarks/ppo_iteration.py --preset palm_150m --compile-step
    python benchmarks/ppo_iteration.py --preset palm_150m
    python benchmarks/ppo_iteration.py --preset palm_150m --compile-step --precision fp32
    python benchmarks/ppo_iteration.py --preset palm_150m --compile-step --precision bf16
    python benchmarks/ppo_iteration.py --preset palm_150m --compile-step --minibatch-size 16
    python benchmarks/ppo_iteration.py --preset tiny --prompts 16 --prompt-len 32 \
        --new-tokens 32 --iterations 2 --threads 1  # a CPU

Defaults: 64 prompts of 64 tokens, 192 new tokens each, `PPOConfig`'s minibatches of 8 and 4
epochs; the issue's target is >= 50 rollouts/s on one H100 with palm_150m. Policy, reference
(a frozen copy) and reward model are random-initialised PaLMs of the preset: only the shapes
matter for throughput.

Texts are token ids written out ("17 4093 5"), so decoding and re-encoding are exact and the
reward model reads exactly prompt + response + EOS, as it would with a tokenizer that
re-encodes the policy's ids unchanged. Fixed response length: the policy's tokenizer names an
EOS id outside the vocabulary, which sampling can never produce, so every row runs to
--new-tokens (and `missing_eos_penalty` is off, so the reward model's scores are used); the
reward model's scorer has its own tokenizer, whose EOS is id 1.

--compile-step sets `PPOConfig.compile_step`: rollouts compile generation's decode step.
--precision (the "dtype" of the JSON line):
  autocast       what the trainer runs with `PPOConfig.mixed_precision="bf16"`: float32 weights
                 (policy, reference, reward model) and AdamW, bf16 autocast around generation
                 (without autocast's weight cache, as CUDA graphs need), the recomputation, the
                 scorer and the update's forward passes; backward, log-probs, values and
                 losses outside it or in float32.
  fp32           float32 weights, `mixed_precision="no"`: no autocast anywhere.
  bf16           "bf16-weights": every weight cast to bf16 and `mixed_precision="no"`
                 (generation, scoring and updates in bf16, AdamW on bf16 weights): the speed a
                 mixed-precision trainer could approach, not a recipe to train with.
  auto (default) autocast on CUDA (the trainer's default, "auto", there), fp32 on the CPU (where
                 the trainer's "auto" does not autocast).
Timing: the first --warmup iterations (compilation, CUDA graph set-up, allocator growth) are
untimed.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from typing import Any

import torch
from model_bench import (
    PRESETS,
    device_name,
    emit,
    peak_memory_gb,
    pick_device,
    reset_peak_memory,
    seconds,
    synchronize,
)

from rlhf_core.optim import build_adamw
from rlhf_core.palm import PaLM
from rlhf_core.ppo import PPOConfig, PPOPolicy
from rlhf_core.ppo_trainer import BETAS, new_state, ppo_step
from rlhf_core.reward import RewardModel
from rlhf_core.rollout import reward_model_scorer
from rlhf_core.tokenizer import Tokenizer

SPLIT = ("generation_seconds", "scoring_seconds", "learning_seconds")


class TokenIdText(Tokenizer):
    """A stand-in tokenizer whose texts are space-separated token ids: lossless both ways."""

    def __init__(self, eos_id: int, pad_id: int = 0) -> None:  # no backend: nothing to load
        self.eos_id, self.pad_id = eos_id, pad_id

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [[int(word) for word in text.split()] for text in texts]

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        return " ".join(str(token) for token in ids)


def parse_args() -> argparse.Namespace:
    defaults = PPOConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="palm_150m")
    parser.add_argument("--prompts", type=int, default=64, help="rollout batch (prompts)")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=192)
    parser.add_argument("--minibatch-size", type=int, default=defaults.minibatch_size)
    parser.add_argument("--grad-accum-steps", type=int, default=defaults.grad_accum_steps)
    parser.add_argument("--ppo-epochs", type=int, default=defaults.ppo_epochs)
    parser.add_argument("--compile-step", action="store_true", help="compiled decode step")
    parser.add_argument(
        "--precision",
        choices=("auto", "autocast", "fp32", "bf16"),
        default="auto",
        help="autocast: the trainer's bf16 autocast on float32 weights; bf16: bf16 weights; "
        "auto: autocast on CUDA, fp32 on the CPU",
    )
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    precision = args.precision
    if precision == "auto":
        precision = "autocast" if device.type == "cuda" else "fp32"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    torch.manual_seed(0)
    model_config = PRESETS[args.preset]()
    config = PPOConfig(
        rollout_batch_size=args.prompts,
        max_new_tokens=args.new_tokens,
        minibatch_size=args.minibatch_size,
        grad_accum_steps=args.grad_accum_steps,
        ppo_epochs=args.ppo_epochs,
        missing_eos_penalty=None,
        compile_step=args.compile_step,
        mixed_precision="bf16" if precision == "autocast" else "no",
    )
    # Cast before wrapping: the value head, reward heads and reference copy follow the backbone.
    policy = PPOPolicy(PaLM(model_config).to(device, dtype).train())
    reward_model = RewardModel(PaLM(model_config).to(device, dtype)).eval()
    scorer = reward_model_scorer(reward_model, TokenIdText(eos_id=1))
    tokenizer = TokenIdText(eos_id=model_config.num_tokens)  # never sampled: no row stops
    optimizer = build_adamw(policy, lr=config.lr, weight_decay=config.weight_decay, betas=BETAS)
    state = new_state(policy, config)
    # Random ids, never the padding id 0 nor EOS 1, all of --prompt-len tokens.
    ids = torch.randint(2, model_config.num_tokens, (args.prompts, args.prompt_len))
    prompts = [" ".join(map(str, row)) for row in ids.tolist()]

    def iteration() -> dict[str, float]:
        return ppo_step(policy, optimizer, scorer, tokenizer, prompts, config, state)

    for _ in range(args.warmup):
        iteration()
    synchronize(device)
    reset_peak_memory(device)
    metrics: list[dict[str, float]] = []
    walls = [seconds(lambda: metrics.append(iteration()), device) for _ in range(args.iterations)]
    label = "bf16-weights" if precision == "bf16" else precision
    emit(record(args, label, device, walls, metrics))


def record(
    args: argparse.Namespace,
    precision: str,
    device: torch.device,
    walls: list[float],
    metrics: list[dict[str, float]],
) -> dict[str, Any]:
    wall = statistics.mean(walls)
    return {
        "benchmark": "ppo_iteration",
        "preset": args.preset,
        "device": device_name(device),
        "dtype": precision,
        "prompts": args.prompts,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "minibatch_size": args.minibatch_size,
        "grad_accum_steps": args.grad_accum_steps,
        "ppo_epochs": args.ppo_epochs,
        "compile_step": args.compile_step,
        "iterations": args.iterations,
        "rollouts_per_s": round(args.prompts / wall, 2),
        "iteration_s": round(wall, 3),
        **{name: round(statistics.mean(m[name] for m in metrics), 3) for name in SPLIT},
        "response_length": statistics.mean(m["response_length"] for m in metrics),
        "optimizer_steps": metrics[-1]["optimizer_steps"],
        "peak_mem_gb": peak_memory_gb(device),
    }


if __name__ == "__main__":
    main()
