"""Reward-model training throughput: forward, pairwise loss, backward, clipped AdamW step.

One JSON line per run: sequences/s, step time, peak memory.

    python benchmarks/reward_throughput.py --preset palm_150m --batch 8 --seq 1024 --compile
    python benchmarks/reward_throughput.py --preset palm_150m --batch 8 --seq 1024
    python benchmarks/reward_throughput.py --preset palm_150m --batch 8 --seq 1024 --compile \
        --lora-rank 16
    python benchmarks/reward_throughput.py --preset tiny --batch 8 --seq 256 --steps 5 \
        --threads 1  # a CPU

Convention: --batch counts sequences, the rows the model reads; a preference pair is two of them
(chosen and rejected), so a step trains on batch / 2 pairs and sequences/s = batch x steps / time
(pairs/s is half that). The issue's target: >= 400 sequences/s at 8 x 1024 on one H100, palm_150m,
bf16.

What runs is the reward trainer's path (`rlhf_core.reward_training`) minus text encoding:
`RewardModel` over random token rows with an all-True attention mask (the trainer always passes a
mask, which selects the masked SDPA kernels), then `reward_labels.label_losses` and `total_loss`
on the two halves of the rewards (Bradley-Terry with the default margin), then gradient clipping
at 1.0 and `build_adamw` with the trainer's settings, over the trainable parameters only (with
--lora-rank: adapters and heads). `score_items` is skipped because it tokenises text on the host.
On CUDA the step runs under bf16 autocast with float32 weights; on the CPU in float32. With
--compile the reward model's forward is `torch.compile`d; the loss and optimiser stay eager.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
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
from torch import Tensor

from rlhf_core.optim import build_adamw
from rlhf_core.palm import PaLM
from rlhf_core.reward import RewardHeadConfig, RewardModel
from rlhf_core.reward_labels import LabelLossConfig, PairItem, Scores, label_losses, total_loss
from rlhf_core.reward_training import RewardTrainingConfig

Batch = tuple[Tensor, Tensor]  # tokens (b n), attention mask (b n)


def pair_items(pairs: int, config: LabelLossConfig) -> list[PairItem]:
    """Plain strict preferences of grade 1: what `to_items` makes of an ordinary pairwise label.

    `label_losses` reads only their kind, margin and weight; the texts are never encoded here.
    """
    return [
        PairItem("", "", "", "pairwise", config.tie_threshold, False, False, 1.0)
        for _ in range(pairs)
    ]


def make_step(
    model: RewardModel, device: torch.device, compile_forward: bool, pairs: int
) -> Callable[[Batch], Tensor]:
    training = RewardTrainingConfig()
    losses_config = training.losses
    items = pair_items(pairs, losses_config)
    forward: Callable[[Tensor, Tensor], Any] = torch.compile(model) if compile_forward else model
    # build_adamw keeps only parameters that need gradients: with LoRA, adapters and heads.
    optimizer = build_adamw(
        model, lr=training.lr, weight_decay=training.weight_decay, betas=(0.9, 0.95)
    )
    trainable = model.trainable_parameters()
    cuda = device.type == "cuda"

    def step(batch: Batch) -> Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            rewards = forward(*batch).rewards
        # score_items' layout: the first half of the rows are the chosen texts, then the rejected.
        scores = Scores(rewards[:pairs], rewards[pairs:], None)
        loss = total_loss(label_losses(scores, items, losses_config), losses_config)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, training.grad_clip or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="palm_150m")
    parser.add_argument(
        "--batch", type=int, default=8, help="sequences per step (even: chosen + rejected)"
    )
    parser.add_argument("--seq", type=int, default=1024, help="tokens per sequence")
    parser.add_argument("--compile", action="store_true", help="torch.compile the forward")
    parser.add_argument("--lora-rank", type=int, help="train LoRA adapters of this rank only")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compiles)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    args = parser.parse_args()
    if args.batch < 2 or args.batch % 2:
        parser.error("--batch must be an even number of sequences (pairs of chosen, rejected)")
    return args


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    torch.manual_seed(0)
    config = PRESETS[args.preset]()
    model = RewardModel(PaLM(config), RewardHeadConfig(lora_rank=args.lora_rank))
    model = model.to(device).train()
    step = make_step(model, device, args.compile, args.batch // 2)
    # Random tokens, never the padding id 0, in a few batches that rotate.
    batches = [
        (
            torch.randint(1, config.num_tokens, (args.batch, args.seq), device=device),
            torch.ones(args.batch, args.seq, dtype=torch.bool, device=device),
        )
        for _ in range(4)
    ]
    for index in range(args.warmup):
        step(batches[index % len(batches)])
    synchronize(device)
    reset_peak_memory(device)

    def timed() -> None:
        for index in range(args.steps):
            step(batches[index % len(batches)])

    emit(record(args, model, seconds(timed, device), device))


def record(
    args: argparse.Namespace, model: RewardModel, elapsed: float, device: torch.device
) -> dict[str, Any]:
    return {
        "benchmark": "reward_throughput",
        "preset": args.preset,
        "device": device_name(device),
        "dtype": "bf16-autocast" if device.type == "cuda" else "float32",
        "batch": args.batch,
        "seq": args.seq,
        "compile": args.compile,
        "lora_rank": args.lora_rank,
        "steps": args.steps,
        "trainable_params": sum(p.numel() for p in model.trainable_parameters()),
        "sequences_per_s": round(args.batch * args.steps / elapsed, 1),
        "step_ms": round(1000 * elapsed / args.steps, 2),
        "peak_mem_gb": peak_memory_gb(device),
    }


if __name__ == "__main__":
    main()
