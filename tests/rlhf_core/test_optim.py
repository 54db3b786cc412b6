import itertools
import math

import pytest
import torch

from rlhf_core.optim import build_adamw, parameter_groups, warmup_cosine, warmup_cosine_schedule
from rlhf_core.palm import PaLM, PaLMConfig

# qk-norm and a relative position bias add the gains and the second embedding that the
# grouping must recognise.
CONFIG = PaLMConfig(
    num_tokens=64,
    dim=32,
    depth=2,
    heads=4,
    dim_head=8,
    qk_norm=True,
    position_encoding="relative_bias",
)


def names_by_group(model: torch.nn.Module, weight_decay: float) -> tuple[set[str], set[str]]:
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    decay, no_decay = parameter_groups(model, weight_decay)
    return (
        {names[id(parameter)] for parameter in decay["params"]},
        {names[id(parameter)] for parameter in no_decay["params"]},
    )


def test_only_the_weight_matrices_of_linear_layers_are_decayed() -> None:
    model = PaLM(CONFIG)
    decay, no_decay = names_by_group(model, 0.1)

    suffixes = ("fused_proj.weight", "attn_out.weight", "ff_out.weight")
    assert decay == {f"layers.{i}.{suffix}" for i in range(2) for suffix in suffixes}
    assert no_decay == {
        "token_emb.weight",
        "relative_bias.embedding.weight",
        "norm.weight",
        *(f"layers.{i}.norm.weight" for i in range(2)),
        *(f"layers.{i}.attention.{scale}" for i in range(2) for scale in ("q_scale", "k_scale")),
    }


def test_every_trainable_parameter_lands_in_exactly_one_group() -> None:
    model = PaLM(CONFIG)
    model.norm.weight.requires_grad_(False)
    decay, no_decay = names_by_group(model, 0.1)
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert decay.isdisjoint(no_decay)
    assert decay | no_decay == trainable


def test_the_optimizer_applies_decay_to_the_first_group_only() -> None:
    model = torch.nn.Sequential(torch.nn.Embedding(4, 3), torch.nn.Linear(3, 3))
    optimizer = build_adamw(model, lr=1.0, weight_decay=0.5, betas=(0.9, 0.95))
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.5, 0.0]
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    before = [parameter.detach().clone() for parameter in model.parameters()]
    optimizer.step()
    # With zero gradients only decoupled decay moves a weight: w <- w * (1 - lr * decay).
    embedding, weight, bias = (after.detach() for after in model.parameters())
    assert torch.equal(embedding, before[0])
    assert torch.allclose(weight, before[1] * 0.5)
    assert torch.equal(bias, before[2])


def test_warm_up_rises_linearly_to_the_peak() -> None:
    multipliers = [
        warmup_cosine(step, warmup_steps=4, max_steps=20, min_lr_ratio=0.1) for step in range(5)
    ]
    assert multipliers == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])


def test_the_cosine_falls_from_the_peak_to_the_floor_and_stays_there() -> None:
    def at(step: int) -> float:
        return warmup_cosine(step, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)

    after_warmup = [at(step) for step in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(after_warmup))
    assert at(10) == 1.0
    assert at(60) == pytest.approx(0.55)  # half way: the mean of peak and floor
    assert at(35) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert at(110) == pytest.approx(0.1)
    assert at(500) == pytest.approx(0.1)


def test_without_warm_up_the_first_step_runs_at_the_peak() -> None:
    assert warmup_cosine(0, warmup_steps=0, max_steps=10, min_lr_ratio=0.0) == 1.0
    assert warmup_cosine(10, warmup_steps=0, max_steps=10, min_lr_ratio=0.0) == pytest.approx(0.0)


def test_the_scheduler_sets_each_step_s_learning_rate() -> None:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=0.01)
    scheduler = warmup_cosine_schedule(optimizer, warmup_steps=2, max_steps=6, min_lr_ratio=0.2)
    used = []
    for _ in range(8):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [
        0.01 * warmup_cosine(step, warmup_steps=2, max_steps=6, min_lr_ratio=0.2)
        for step in range(8)
    ]
    assert used == pytest.approx(expected)
