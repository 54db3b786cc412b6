import pytest
import torch
from torch import nn

from rlhf_core.lora import (
    LoRALinear,
    adapters_disabled,
    add_lora,
    lora_parameters,
    merge,
    merge_and_remove,
    set_active_scope,
    train_only_last_layers,
    unmerge,
    use_scope,
)
from rlhf_core.palm import PaLM, PaLMConfig

SMALL = PaLMConfig(num_tokens=64, dim=32, depth=3, heads=4, dim_head=8)


@pytest.fixture
def model() -> PaLM:
    torch.manual_seed(0)
    return PaLM(SMALL)


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, 64, (2, 6))


def perturb(parameters: list[nn.Parameter]) -> None:
    """A trained-looking adapter: a fresh one is the identity by design."""
    with torch.no_grad():
        for parameter in parameters:
            parameter.normal_(std=0.5)


def test_a_new_adapter_changes_nothing(model: PaLM, tokens: torch.Tensor) -> None:
    before = model(tokens)
    add_lora(model, "actor")
    set_active_scope(model, "actor")
    torch.testing.assert_close(model(tokens), before)


def test_only_the_targeted_layers_get_adapters(model: PaLM) -> None:
    add_lora(model, "reward", targets=r"layers\.2\.attn_out$")
    adapted = [name for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    assert adapted == ["layers.2.attn_out"]
    with pytest.raises(ValueError, match=r"no nn\.Linear matches"):
        add_lora(model, "critic", targets="no_such_layer")


def test_state_dict_names_of_the_base_weights_do_not_change(model: PaLM) -> None:
    base_keys = set(model.state_dict())
    add_lora(model, "actor")
    assert base_keys <= set(model.state_dict())


def test_the_base_is_frozen_and_gets_no_grad(model: PaLM, tokens: torch.Tensor) -> None:
    adapter = add_lora(model, "actor")
    set_active_scope(model, "actor")
    perturb(adapter)
    model(tokens).sum().backward()
    adapter_ids = {id(p) for p in adapter}
    base = [p for p in model.parameters() if id(p) not in adapter_ids]
    assert base and all(not p.requires_grad and p.grad is None for p in base)
    assert all(p.grad is not None for p in adapter)


def test_merge_then_unmerge_round_trips_outputs(model: PaLM, tokens: torch.Tensor) -> None:
    perturb(add_lora(model, "actor"))
    set_active_scope(model, "actor")
    with torch.no_grad():
        adapted = model(tokens)
        with adapters_disabled(model):
            base = model(tokens)
        merge(model, "actor")
        merged = model(tokens)
        with adapters_disabled(model):  # merged: the update is in the base weight now
            torch.testing.assert_close(model(tokens), adapted, rtol=1e-4, atol=1e-4)
        unmerge(model, "actor")
        with adapters_disabled(model):
            torch.testing.assert_close(model(tokens), base, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model(tokens), adapted, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="not merged"):
        unmerge(model, "actor")


def test_merge_and_remove_keeps_the_outputs_and_frees_the_scope_for_a_new_adapter(
    model: PaLM, tokens: torch.Tensor
) -> None:
    perturb(add_lora(model, "sft"))
    set_active_scope(model, "sft")
    with torch.no_grad():
        adapted = model(tokens)
        merge_and_remove(model, "sft")
        torch.testing.assert_close(model(tokens), adapted, rtol=1e-4, atol=1e-4)
        with adapters_disabled(model):  # the update is the base weight's own now
            torch.testing.assert_close(model(tokens), adapted, rtol=1e-4, atol=1e-4)
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert all(not layer.adapters and layer.active_scope is None for layer in layers)
    assert not any(".adapters." in name for name in model.state_dict())
    add_lora(model, "sft")  # a second round of the same scope
    set_active_scope(model, "sft")
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), adapted, rtol=1e-4, atol=1e-4)


def test_merge_and_remove_folds_a_merged_scope_in_only_once(
    model: PaLM, tokens: torch.Tensor
) -> None:
    perturb(add_lora(model, "sft"))
    set_active_scope(model, "sft")
    with torch.no_grad():
        adapted = model(tokens)
        merge(model, "sft")
        merge_and_remove(model, "sft")
        torch.testing.assert_close(model(tokens), adapted, rtol=1e-4, atol=1e-4)


def test_disabled_adapters_give_the_base_model(model: PaLM, tokens: torch.Tensor) -> None:
    base = model(tokens)
    perturb(add_lora(model, "actor"))
    set_active_scope(model, "actor")
    assert not torch.allclose(model(tokens), base)
    with adapters_disabled(model):
        torch.testing.assert_close(model(tokens), base)
    assert not torch.allclose(model(tokens), base)  # the previous scope is back


def test_scopes_are_independent(model: PaLM, tokens: torch.Tensor) -> None:
    perturb(add_lora(model, "actor"))
    perturb(add_lora(model, "reward", targets=r"layers\.2\.(fused_proj|attn_out)$"))
    with use_scope(model, "reward"):
        reward_before = model(tokens).detach()
    with use_scope(model, "actor"):
        model(tokens).sum().backward()
        actor_output = model(tokens).detach()
    assert all(p.grad is not None for p in lora_parameters(model, "actor"))
    assert all(p.grad is None for p in lora_parameters(model, "reward"))
    with torch.no_grad():
        for parameter in lora_parameters(model, "actor"):
            parameter.add_(1.0)
    with use_scope(model, "reward"):
        torch.testing.assert_close(model(tokens), reward_before)
    assert not torch.allclose(reward_before, actor_output)


def test_an_unknown_scope_is_refused(model: PaLM) -> None:
    add_lora(model, "actor")
    with pytest.raises(KeyError):
        set_active_scope(model, "critic")
    with pytest.raises(ValueError, match="already exists"):
        add_lora(model, "actor")


def test_train_only_last_layers_freezes_everything_else(model: PaLM, tokens: torch.Tensor) -> None:
    trainable = train_only_last_layers(model, 1)
    model(tokens).sum().backward()
    trainable_ids = {id(p) for p in trainable}
    for name, parameter in model.named_parameters():
        should_train = name.startswith("layers.2.") or name.startswith("norm.")
        assert (id(parameter) in trainable_ids) == should_train, name
        assert (parameter.grad is not None) == should_train, name
    with pytest.raises(ValueError, match="n must be in"):
        train_only_last_layers(model, 4)
