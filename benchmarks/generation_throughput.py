"""Generation throughput of a PaLM preset: `generate` eager, compiled and with CUDA graphs.

One JSON line per (batch, decoding mode): new tokens/s and time per new token. Each call decodes
`--new-tokens` after random prompts of `--prompt-len` tokens, sampling at temperature 1 with no
EOS, so every row makes every token. The time is that of the whole `generate` call: prefill,
graph capture and sampling included. One untimed call first (it also compiles), then the median
of --repeats.

    python benchmarks/generation_throughput.py --preset palm_150m --batch 64 \
        --modes cuda_graph_compiled cuda_graph
    python benchmarks/generation_throughput.py --preset palm_150m --batch 8 \
        --modes cuda_graph_compiled cuda_graph
    python benchmarks/generation_throughput.py --preset palm_150m --batch 8 64 --modes eager \
        --repeats 1
    python benchmarks/generation_throughput.py --preset tiny --batch 8 64 --modes eager \
        compiled --repeats 2  # on a CPU

The compiled modes run one batch size per process, as an RLHF loop with a fixed batch would:
a second batch size in the same process makes torch.compile recompile with a dynamic batch axis.

On CUDA the weights are cast to bf16; on the CPU the model stays float32 and the CUDA-graph
modes are skipped.
"""

from __future__ import annotations

import argparse
import statistics
from functools import partial
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
)
from torch import Tensor

from rlhf_core.generation import generate
from rlhf_core.palm import PaLM

# The `generate` options of each decoding mode.
MODES: dict[str, dict[str, bool]] = {
    "eager": {"use_cuda_graph": False, "compile_step": False},
    "compiled": {"use_cuda_graph": False, "compile_step": True},
    "cuda_graph": {"use_cuda_graph": True, "compile_step": False},
    "cuda_graph_compiled": {"use_cuda_graph": True, "compile_step": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="palm_150m")
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 64], help="prompts per call")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per configuration")
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=sorted(MODES),
        default=["eager", "cuda_graph"],
        help="decoding modes to time (the CPU runs eager and compiled only)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    args = parser.parse_args()

    device = pick_device(args.device)
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    config = PRESETS[args.preset]()
    model = PaLM(config).to(device, torch.bfloat16 if cuda else torch.float32).eval()
    modes = [mode for mode in args.modes if cuda or not MODES[mode]["use_cuda_graph"]]
    for batch in args.batch:
        # Random tokens, never zeros; token 0 is the padding id and would be skipped as such.
        prompts = torch.randint(1, config.num_tokens, (batch, args.prompt_len))
        for mode in modes:
            emit(measure(model, prompts, MODES[mode], args))


def measure(
    model: PaLM, prompts: Tensor, mode: dict[str, bool], args: argparse.Namespace
) -> dict[str, Any]:
    device = model.token_emb.weight.device
    call = partial(
        generate,
        model,
        list(prompts),
        max_new_tokens=args.new_tokens,
        seed=0,
        use_cuda_graph=mode["use_cuda_graph"],
        compile_step=mode["compile_step"],
    )
    call()
    reset_peak_memory(device)
    median = statistics.median(seconds(call, device) for _ in range(args.repeats))
    batch = prompts.shape[0]
    return {
        "benchmark": "generation_throughput",
        "preset": args.preset,
        "device": device_name(device),
        "dtype": str(model.token_emb.weight.dtype).removeprefix("torch."),
        "batch": batch,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "cuda_graph": mode["use_cuda_graph"],
        "compile": mode["compile_step"],
        "tokens_per_s": round(batch * args.new_tokens / median),
        "step_ms": round(1000 * median / args.new_tokens, 3),
        "call_s": round(median, 3),
        "peak_mem_gb": peak_memory_gb(device),
    }


if __name__ == "__main__":
    main()
