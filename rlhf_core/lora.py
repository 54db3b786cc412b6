"""LoRA adapters (Hu et al. 2021) in named scopes, and layer-wise freezing.

Axes: b batch, n sequence, i input features, o output features, r adapter rank.

One base model can carry several adapter scopes ("actor", "critic", "reward", ...) on the same
linear layers; at most one scope is active at a time, and with none active the model is exactly
its frozen base (the reference policy of PPO's KL penalty).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import cast

import torch
from torch import Tensor, nn

from rlhf_core.palm import PaLM

# The attention input/output and feed-forward projections of every PaLM block.
DEFAULT_TARGETS = r"layers\.\d+\.(fused_proj|attn_out|ff_out)$"


class LoRAAdapter(nn.Module):
    """delta_W = up @ down * alpha / r, with `up` zero at first so a new adapter changes nothing."""

    def __init__(
        self, in_features: int, out_features: int, *, rank: int, alpha: float, dropout: float
    ) -> None:
        super().__init__()
        self.down = nn.Parameter(torch.empty(rank, in_features))
        self.up = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))  # as nn.Linear, per the paper
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        delta: Tensor = self.dropout(x) @ self.down.T @ self.up.T * self.scaling
        return delta

    def delta_weight(self) -> Tensor:
        """The (o i) update this adapter makes to the base weight."""
        return self.up @ self.down * self.scaling


class LoRALinear(nn.Linear):
    """A bias-free nn.Linear that keeps its own weight (same state-dict key) plus adapters.

    It adopts the wrapped layer's Parameter instead of copying it, so checkpoints of the base
    model still load by the same names and optimisers that hold the weight still see it.
    """

    def __init__(self, base: nn.Linear) -> None:
        nn.Module.__init__(self)  # skip nn.Linear's allocation: the weight is adopted below
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.register_parameter("bias", base.bias)
        self.adapters = nn.ModuleDict()
        self.active_scope: str | None = None
        self.merged_scopes: set[str] = set()

    def adapter(self, scope: str) -> LoRAAdapter:
        return cast(LoRAAdapter, self.adapters[scope])

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        scope = self.active_scope
        if scope is not None and scope in self.adapters and scope not in self.merged_scopes:
            out = out + self.adapter(scope)(x)
        return out


def lora_layers(model: nn.Module) -> Iterator[LoRALinear]:
    return (module for module in model.modules() if isinstance(module, LoRALinear))


def add_lora(
    model: nn.Module,
    scope: str,
    *,
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    targets: str = DEFAULT_TARGETS,
) -> list[nn.Parameter]:
    """Attach a `scope` adapter to every nn.Linear whose name matches `targets` (a regex).

    Freezes every parameter that is not an adapter (base weights get no gradient at all) and
    returns the new adapter's parameters, for the optimiser. The scope starts inactive: turn it
    on with `set_active_scope` or `use_scope`.
    """
    matched = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and re.search(targets, name)
    ]
    if not matched:
        raise ValueError(f"no nn.Linear matches {targets!r}")
    new_parameters: list[nn.Parameter] = []
    for name, module in matched:
        layer = module if isinstance(module, LoRALinear) else _wrap(model, name, module)
        if scope in layer.adapters:
            raise ValueError(f"scope {scope!r} already exists on {name}")
        adapter = LoRAAdapter(
            layer.in_features, layer.out_features, rank=rank, alpha=alpha, dropout=dropout
        )
        layer.adapters[scope] = adapter.to(layer.weight.device, layer.weight.dtype)
        new_parameters.extend(adapter.parameters())
    _freeze_base(model)
    return new_parameters


def _wrap(model: nn.Module, name: str, linear: nn.Linear) -> LoRALinear:
    parent_name, _, child_name = name.rpartition(".")
    wrapped = LoRALinear(linear)
    setattr(model.get_submodule(parent_name), child_name, wrapped)
    return wrapped


def _freeze_base(model: nn.Module) -> None:
    adapter_ids = {id(p) for layer in lora_layers(model) for p in layer.adapters.parameters()}
    for parameter in model.parameters():
        if id(parameter) not in adapter_ids:
            parameter.requires_grad_(False)


def _layers_with(model: nn.Module, scope: str) -> list[LoRALinear]:
    layers = [layer for layer in lora_layers(model) if scope in layer.adapters]
    if not layers:
        raise KeyError(f"no LoRA scope {scope!r} on this model")
    return layers


def lora_parameters(model: nn.Module, scope: str) -> list[nn.Parameter]:
    """The parameters of one scope's adapters, e.g. to give to its optimiser."""
    return [p for layer in _layers_with(model, scope) for p in layer.adapters[scope].parameters()]


def set_active_scope(model: nn.Module, scope: str | None) -> None:
    """Route adapted layers through `scope`'s adapters, or through none with None.

    Scopes may cover different layers; a layer without the active scope runs as its base.
    """
    if scope is not None:
        _layers_with(model, scope)
    for layer in lora_layers(model):
        layer.active_scope = scope


@contextmanager
def use_scope(model: nn.Module, scope: str | None) -> Iterator[None]:
    """Temporarily activate `scope` (None: adapters off), restoring the previous one after."""
    previous = {layer: layer.active_scope for layer in lora_layers(model)}
    set_active_scope(model, scope)
    try:
        yield
    finally:
        for layer, active in previous.items():
            layer.active_scope = active


def adapters_disabled(model: nn.Module) -> AbstractContextManager[None]:
    """The frozen base model, e.g. the reference policy for a KL penalty."""
    return use_scope(model, None)


@torch.no_grad()
def merge(model: nn.Module, scope: str) -> None:
    """Fold `scope` into the base weights, so inference pays nothing for the adapter.

    While merged the update lives in the base weight: every forward includes it, whichever
    scope is active, until `unmerge`.
    """
    layers = _layers_with(model, scope)
    if any(scope in layer.merged_scopes for layer in layers):
        raise ValueError(f"scope {scope!r} is already merged")
    for layer in layers:
        layer.weight += layer.adapter(scope).delta_weight()
        layer.merged_scopes.add(scope)


@torch.no_grad()
def unmerge(model: nn.Module, scope: str) -> None:
    """Take `scope` back out of the base weights (exact up to floating-point rounding)."""
    layers = _layers_with(model, scope)
    if not all(scope in layer.merged_scopes for layer in layers):
        raise ValueError(f"scope {scope!r} is not merged")
    for layer in layers:
        layer.weight -= layer.adapter(scope).delta_weight()
        layer.merged_scopes.discard(scope)


@torch.no_grad()
def merge_and_remove(model: nn.Module, scope: str) -> None:
    """Fold `scope` into the base weights for good and remove its adapters (deactivating it),
    so that a new adapter of the same name can train on top, e.g. the next round of SFT."""
    for layer in _layers_with(model, scope):
        if scope not in layer.merged_scopes:
            layer.weight += layer.adapter(scope).delta_weight()
        del layer.adapters[scope]
        layer.merged_scopes.discard(scope)
        if layer.active_scope == scope:
            layer.active_scope = None


@torch.no_grad()
def merged_copy(model: PaLM, scope: str | None) -> PaLM:
    """A plain PaLM (no adapters, every weight trainable) equal to `model` with `scope` active
    (the base alone for None), built beside it on its device; `model` is not touched."""
    plain = PaLM(model.config).to(model.token_emb.weight.device, model.token_emb.weight.dtype)
    state = {}
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            weight = module.weight
            if scope is not None and scope in module.adapters and scope not in module.merged_scopes:
                weight = weight + module.adapter(scope).delta_weight()
            state[f"{name}.weight"] = weight
    for name, tensor in model.state_dict().items():
        if ".adapters." not in name:
            state.setdefault(name, tensor)
    plain.load_state_dict(state, strict=True)
    return plain


def train_only_last_layers(model: PaLM, n: int) -> list[nn.Parameter]:
    """Freeze everything except the last `n` blocks and the final norm; returns what trains.

    The tied embedding (also the output head) stays frozen, so the vocabulary's geometry is
    shared unchanged with the frozen reference.
    """
    if not 0 < n <= len(model.layers):
        raise ValueError(f"n must be in 1..{len(model.layers)}, got {n}")
    model.requires_grad_(False)
    trainable = [*model.layers[-n:].parameters(), *model.norm.parameters()]
    for parameter in trainable:
        parameter.requires_grad_(True)
    return trainable
