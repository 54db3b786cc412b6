"""Training throughput of a PaLM preset: forward, backward and AdamW step of a next-token loss.

One JSON line per run: tokens/s, model FLOPs utilisation (MFU), step time, peak memory.

    python benchmarks/train_throughput.py --preset palm_150m --batch 8 --seq 2048 --compile
    python benchmarks/train_throughput.py --preset palm_150m --batch 8 --seq 2048 --compile \
        --sdpa-backends flash,efficient,math
    python benchmarks/train_throughput.py --preset palm_150m --batch 8 --seq 2048 --steps 10
    python benchmarks/train_throughput.py --preset tiny --batch 8 --seq 256 --steps 5  # a CPU

On CUDA the step runs under bf16 autocast with float32 weights and a fused AdamW, as a trainer
would; on the CPU in float32. With --compile the loss (model and cross-entropy) is one
`torch.compile`d function; the optimiser step stays eager.

FLOPs per token, as the PaLM paper (appendix B) counts them:
    6 N + 12 L T (h d)
N: every parameter, i.e. the non-embedding ones plus the tied embedding counted once as the
output head (its lookup costs nothing); L: depth; T: sequence length; h d: attention width
(heads x dim_head). The attention term is that of full, not causal, attention. MFU divides the
achieved FLOP/s by --peak-tflops (989: H100 SXM, dense bf16).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
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

from rlhf_core.palm import PaLM, PaLMConfig

H100_BF16_DENSE_TFLOPS = 989.0


def next_token_loss(model: PaLM, batch: Tensor) -> Tensor:
    """Mean cross-entropy of each token given the ones before it; `batch` is (b, seq + 1)."""
    logits = model(batch[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())


def flops_per_token(config: PaLMConfig, params: int, seq: int) -> float:
    return 6 * params + 12 * config.depth * seq * config.heads * config.dim_head


def make_step(
    model: PaLM, device: torch.device, compile_loss: bool, compile_mode: str | None = None
) -> Callable[[Tensor], Tensor]:
    loss_fn: Callable[[PaLM, Tensor], Tensor] = next_token_loss
    if compile_loss:
        loss_fn = torch.compile(next_token_loss, mode=compile_mode)
    cuda = device.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, fused=cuda)

    def step(batch: Tensor) -> Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = loss_fn(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def profile_steps(step: Callable[[Tensor], Tensor], batches: list[Tensor], rows: int) -> None:
    """Print the `rows` costliest kernels of two steps (to stderr), to see where time goes."""
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as profiler:
        for batch in batches[:2]:
            step(batch)
        synchronize(batches[0].device)
    table = profiler.key_averages().table(sort_by="self_device_time_total", row_limit=rows)
    print(table, file=sys.stderr)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="palm_150m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=2048, help="tokens per row the model sees")
    parser.add_argument("--compile", action="store_true", help="torch.compile the loss")
    parser.add_argument(
        "--compile-mode",
        help="torch.compile mode, e.g. max-autotune-no-cudagraphs (default: the default mode)",
    )
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compiles)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS)
    parser.add_argument("--profile", type=int, default=0, help="print the N costliest kernels")
    parser.add_argument(
        "--sdpa-backends",
        help="SDPA backends for the (unmasked, causal) training attention, comma-separated by "
        "priority; default: the config's sdpa_causal_backends (cudnn,flash,efficient,math)",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = pick_device(args.device)
    torch.manual_seed(0)
    config = PRESETS[args.preset]()
    if args.sdpa_backends:
        backends = tuple(args.sdpa_backends.split(","))
        config = dataclasses.replace(config, sdpa_causal_backends=backends)
    model = PaLM(config).to(device).train()
    step = make_step(model, device, args.compile, args.compile_mode)
    # Random tokens, never zeros, in a few batches that rotate.
    batches = [
        torch.randint(0, config.num_tokens, (args.batch, args.seq + 1), device=device)
        for _ in range(4)
    ]
    for index in range(args.warmup):
        step(batches[index % len(batches)])
    synchronize(device)
    reset_peak_memory(device)

    def timed() -> None:
        for index in range(args.steps):
            step(batches[index % len(batches)])

    params = sum(p.numel() for p in model.parameters())
    emit(record(args, config, params, seconds(timed, device), device))
    if args.profile:
        profile_steps(step, batches, args.profile)


def record(
    args: argparse.Namespace,
    config: PaLMConfig,
    params: int,
    elapsed: float,
    device: torch.device,
) -> dict[str, Any]:
    cuda = device.type == "cuda"
    tokens_per_s = args.batch * args.seq * args.steps / elapsed
    flops = flops_per_token(config, params, args.seq)
    return {
        "benchmark": "train_throughput",
        "preset": args.preset,
        "device": device_name(device),
        "dtype": "bf16-autocast" if cuda else "float32",
        "batch": args.batch,
        "seq": args.seq,
        "compile": args.compile,
        "compile_mode": args.compile_mode,
        # The CPU picks its own attention kernel; the list applies on CUDA only.
        "sdpa_backends": ",".join(config.sdpa_causal_backends) if cuda else None,
        "steps": args.steps,
        "params": params,
        "flops_per_token": flops,
        "tokens_per_s": round(tokens_per_s),
        "mfu": round(tokens_per_s * flops / (args.peak_tflops * 1e12), 4) if cuda else None,
        "step_ms": round(1000 * elapsed / args.steps, 2),
        "peak_mem_gb": peak_memory_gb(device),
    }


if __name__ == "__main__":
    main()
