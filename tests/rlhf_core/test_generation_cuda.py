"""CUDA-only checks: graph and compiled decoding against eager, cuDNN attention against flash.

They run on a machine with a CUDA GPU and are skipped elsewhere.
"""

import dataclasses
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import rlhf_core.generation as generation
from rlhf_core.generation import generate
from rlhf_core.palm import PaLM, PaLMConfig

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none; run on the GPU machine)"
)

SMALL = PaLMConfig(num_tokens=96, dim=64, depth=2, heads=4, dim_head=16)
VARIANTS = {
    "multi_query_xpos": dataclasses.replace(SMALL, use_xpos=True, xpos_scale_base=16),
    "qk_norm": dataclasses.replace(SMALL, qk_norm=True),
    "relative_bias_geglu": dataclasses.replace(
        SMALL, position_encoding="relative_bias", ff_activation="geglu", relative_max_distance=8
    ),
    "grouped_query": dataclasses.replace(SMALL, kv_heads=2),
}
PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13, 14, 15], [3]]


def cuda_model(config: PaLMConfig, dtype: torch.dtype) -> PaLM:
    torch.manual_seed(0)
    model = PaLM(config)
    if model.relative_bias is not None:
        torch.nn.init.normal_(model.relative_bias.embedding.weight)
    return model.to("cuda", dtype).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_graph_decoding_gives_the_eager_tokens(variant: str, dtype: torch.dtype) -> None:
    model = cuda_model(VARIANTS[variant], dtype)
    eager = generate(model, PROMPTS, max_new_tokens=20, temperature=0.0, use_cuda_graph=False)
    graphed = generate(model, PROMPTS, max_new_tokens=20, temperature=0.0, use_cuda_graph=True)
    assert graphed.tokens.tolist() == eager.tokens.tolist()
    torch.testing.assert_close(graphed.logprobs, eager.logprobs, rtol=1e-5, atol=1e-5)


def test_sampled_graph_decoding_with_a_seed_and_eos_gives_the_eager_output() -> None:
    model = cuda_model(VARIANTS["multi_query_xpos"], torch.bfloat16)
    settings = {"max_new_tokens": 24, "top_p": 0.9, "repetition_penalty": 1.2, "seed": 7}
    free = generate(model, PROMPTS, use_cuda_graph=False, **settings)
    eos = int(free.tokens[0, 5])
    eager = generate(model, PROMPTS, eos_token_id=eos, use_cuda_graph=False, **settings)
    graphed = generate(model, PROMPTS, eos_token_id=eos, use_cuda_graph=True, **settings)
    assert graphed.tokens.tolist() == eager.tokens.tolist()
    assert graphed.lengths.tolist() == eager.lengths.tolist()
    torch.testing.assert_close(graphed.logprobs, eager.logprobs, rtol=1e-5, atol=1e-5)


def test_graphs_are_the_default_on_cuda_and_leave_the_cache_count_right(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    steps: list[generation.CudaGraphStep] = []

    class Recorded(generation.CudaGraphStep):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            steps.append(self)

    monkeypatch.setattr(generation, "CudaGraphStep", Recorded)
    model = cuda_model(SMALL, torch.float32)
    generate(model, PROMPTS, max_new_tokens=9, temperature=0.0)
    (step,) = steps
    assert step.graph is not None
    assert step.cache.length == step.cache.cursor.item() == 6 + 8  # prompt + 8 forward steps


def test_a_compiled_graph_step_gives_the_eager_tokens() -> None:
    model = cuda_model(VARIANTS["multi_query_xpos"], torch.float32)
    eager = generate(model, PROMPTS, max_new_tokens=16, temperature=0.0, use_cuda_graph=False)
    compiled = generate(model, PROMPTS, max_new_tokens=16, temperature=0.0, compile_step=True)
    again = generate(model, PROMPTS, max_new_tokens=16, temperature=0.0, compile_step=True)
    assert compiled.tokens.tolist() == eager.tokens.tolist() == again.tokens.tolist()
    torch.testing.assert_close(compiled.logprobs, eager.logprobs, rtol=1e-4, atol=1e-4)


def test_causal_attention_on_cudnn_trains_like_flash() -> None:
    """The unmasked path prefers cuDNN by default; it must give flash's loss and gradients."""
    config = dataclasses.replace(SMALL, dim_head=64, use_xpos=True)
    tokens = torch.randint(1, SMALL.num_tokens, (2, 129), device="cuda")

    def loss_and_gradient(backends: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        model = PaLM(dataclasses.replace(config, sdpa_causal_backends=backends)).cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        return loss.detach(), model.layers[0].fused_proj.weight.grad

    cudnn_loss, cudnn_grad = loss_and_gradient(("cudnn",))  # alone: no silent fallback
    flash_loss, flash_grad = loss_and_gradient(("flash",))
    torch.testing.assert_close(cudnn_loss, flash_loss, rtol=1e-3, atol=1e-3)
    assert (cudnn_grad - flash_grad).norm() < 2e-2 * flash_grad.norm()
