"""Evaluating policies against a reward model: best-of-n sampling and A/B comparisons.

Axes: b sampled rows, p prompt columns (left-padded), t response columns, n = p + t, v vocabulary.

Rows are prompt-major: sample j of prompt i is row i * k + j for k samples per prompt, so a
prompt's samples share one `generate` call and two policies' rows pair up by (prompt, sample).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from rlhf_core.checkpoint import load_checkpoint
from rlhf_core.commands import (
    FROM_RECIPE,
    SAMPLING_OPTIONS,
    CommandLineError,
    checkpoint_recipe,
    given_options,
)
from rlhf_core.corpus import atomic_output
from rlhf_core.generation import generate, left_pad
from rlhf_core.losses import sequence_logprobs
from rlhf_core.palm import PaLM
from rlhf_core.ppo_command import read_prompts
from rlhf_core.reward import RewardModel
from rlhf_core.reward_io import load_reward_model
from rlhf_core.rollout import Scorer, response_mask, response_texts, reward_model_scorer
from rlhf_core.tokenizer import Tokenizer

if TYPE_CHECKING:
    from rlhf_core.recipes import SamplingDefaults

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

WILSON_Z = 1.959964  # two-sided 95%


@dataclass(frozen=True)
class Samples:
    """Sampled responses, prompt-major (see the module docstring).

    prompts, prompt_ids: each row's prompt text and tokens.
    tokens (b t), lengths (b): as `Generation`'s.
    texts: decoded responses without EOS, as a `Scorer` expects them.
    """

    prompts: list[str]
    prompt_ids: list[list[int]]
    tokens: Tensor
    lengths: Tensor
    texts: list[str]


@dataclass(frozen=True)
class BestOfN:
    """One prompt's candidates with their rewards, and the best of them (the first on a tie)."""

    prompt: str
    best: str
    best_reward: float
    candidates: tuple[str, ...]
    rewards: tuple[float, ...]


@dataclass(frozen=True)
class PolicyEvaluation:
    """A policy's mean reward over its samples and, with a reference, its mean KL to it
    (nats per response, see `response_kl`); None without a reference."""

    samples: int
    mean_reward: float
    kl: float | None


@dataclass(frozen=True)
class PolicyComparison:
    """A against B on the same prompts: each one's evaluation, and how often A's sample beats
    B's for the same (prompt, sample index), ties counting half, with its 95% Wilson interval."""

    a: PolicyEvaluation
    b: PolicyEvaluation
    win_rate: float
    win_rate_low: float
    win_rate_high: float
    ties: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Sampling:
    """How responses are drawn: `per_prompt` samples of each prompt, about `batch_size` rows
    per `generate` call (never fewer than one prompt's samples, which share a call)."""

    per_prompt: int
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float | None = None
    seed: int | None = None
    batch_size: int = 64

    def __post_init__(self) -> None:
        if min(self.per_prompt, self.max_new_tokens, self.batch_size) < 1:
            raise ValueError("per_prompt, max_new_tokens and batch_size must be >= 1")


def as_scorer(scorer: RewardModel | Scorer, tokenizer: Tokenizer) -> Scorer:
    """A scorer as is, or a reward model reading texts with `tokenizer` (the policy's: pass a
    scorer built by `reward_model_scorer` when the reward model has its own)."""
    if isinstance(scorer, RewardModel):
        return reward_model_scorer(scorer, tokenizer)
    return scorer


def draw_samples(
    policy: PaLM, tokenizer: Tokenizer, prompts: Sequence[str], sampling: Sampling
) -> Samples:
    """Responses to `prompts` as `sampling` says. One generator runs through every call, so a
    seed fixes the whole draw, and two policies drawn with the same seed share their random
    numbers."""
    # An empty prompt starts a new document, as after the end-of-text of a previous one.
    encoded = [ids or [tokenizer.eos_id] for ids in tokenizer.encode_batch(list(prompts))]
    per_prompt, seed = sampling.per_prompt, sampling.seed
    rows = [ids for ids in encoded for _ in range(per_prompt)]
    device = policy.token_emb.weight.device
    generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
    step = max(1, sampling.batch_size // per_prompt) * per_prompt
    tokens, lengths = [], []
    for start in range(0, len(rows), step):
        generation = generate(
            policy,
            rows[start : start + step],
            max_new_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            eos_token_id=tokenizer.eos_id,
            pad_token_id=tokenizer.pad_id,
            generator=generator,
        )
        tokens.append(generation.tokens)
        lengths.append(generation.lengths)
    all_tokens, all_lengths = torch.cat(tokens), torch.cat(lengths)
    texts = response_texts(all_tokens, all_lengths, tokenizer)
    repeated = [prompt for prompt in prompts for _ in range(per_prompt)]
    return Samples(repeated, rows, all_tokens, all_lengths, texts)


def best_of_n(
    policy: PaLM,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    scorer: RewardModel | Scorer,
    *,
    n: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float | None = None,
    seed: int | None = None,
    batch_size: int = 64,
) -> list[BestOfN]:
    """Sample `n` responses per prompt and keep the one the scorer rates highest (Stiennon et
    al. 2020; Nakano et al. 2021): a baseline that RL must beat at equal KL."""
    sampling = Sampling(n, max_new_tokens, temperature, top_p, seed, batch_size)
    samples = draw_samples(policy, tokenizer, prompts, sampling)
    rewards = as_scorer(scorer, tokenizer)(samples.prompts, samples.texts).float().cpu().view(-1, n)
    results = []
    for index, prompt in enumerate(prompts):
        best = int(rewards[index].argmax())
        candidates = tuple(samples.texts[index * n : (index + 1) * n])
        results.append(
            BestOfN(
                prompt,
                candidates[best],
                float(rewards[index, best]),
                candidates,
                tuple(rewards[index].tolist()),
            )
        )
    return results


@contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """The models in eval mode (no dropout) inside, each back in its own mode after."""
    modes = [model.training for model in models]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for model, mode in zip(models, modes, strict=True):
            model.train(mode)


@torch.no_grad()
def response_kl(
    policy: PaLM, reference: PaLM, samples: Samples, *, temperature: float, batch_size: int = 64
) -> Tensor:
    """Σ_t (log π - log π_ref) over each row's response tokens (b), EOS included.

    Its mean over the policy's own samples is a Monte-Carlo estimate of KL(π ‖ π_ref) per
    response (Schulman's k1: unbiased, but one row may be negative). Both models are read at
    the sampling temperature, as the rollout's KL penalty reads them (temperature 1 when
    greedy, as `Generation.logprobs`), with one full forward pass each, not the cached steps.
    """
    scale = temperature if temperature > 0 else 1.0
    out = []
    with eval_mode(policy, reference):
        for start in range(0, len(samples.prompt_ids), batch_size):
            rows = slice(start, start + batch_size)
            # Any pad id will do: the mask keeps padding out of attention and positions.
            prompt, prompt_mask = left_pad(samples.prompt_ids[rows], 0)
            answer, lengths = samples.tokens[rows], samples.lengths[rows]
            device = answer.device
            tokens = torch.cat([prompt.to(device), answer], dim=1)
            answer_mask = response_mask(lengths, answer.shape[1])
            mask = torch.cat([prompt_mask.to(device), answer_mask], dim=1)
            scored = torch.cat([torch.zeros_like(prompt_mask, device=device), answer_mask], dim=1)
            logprobs = [
                sequence_logprobs(model(tokens, attention_mask=mask) / scale, tokens, scored)
                for model in (policy, reference)
            ]
            out.append(logprobs[0] - logprobs[1])
    return torch.cat(out)


def evaluate_policy(
    policy: PaLM,
    reference: PaLM | None,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    scorer: RewardModel | Scorer,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    seed: int | None = None,
    samples_per_prompt: int = 1,
    batch_size: int = 64,
) -> PolicyEvaluation:
    """Mean reward of the policy's samples and, with a reference, its KL to it."""
    return _evaluate(
        policy,
        reference,
        tokenizer,
        prompts,
        as_scorer(scorer, tokenizer),
        Sampling(samples_per_prompt, max_new_tokens, temperature, None, seed, batch_size),
    )[1]


def compare_policies(
    policy_a: PaLM,
    policy_b: PaLM,
    reference: PaLM | None,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    scorer: RewardModel | Scorer,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    seed: int | None = None,
    samples_per_prompt: int = 1,
    batch_size: int = 64,
) -> PolicyComparison:
    """A against B on held-out `prompts`, both sampled with the same seed (common random
    numbers: identical policies then draw identical samples, and the comparison's variance
    is lower). Both policies must use `tokenizer`, as must the reference."""
    score = as_scorer(scorer, tokenizer)
    sampling = Sampling(samples_per_prompt, max_new_tokens, temperature, None, seed, batch_size)
    rewards_a, a = _evaluate(policy_a, reference, tokenizer, prompts, score, sampling)
    rewards_b, b = _evaluate(policy_b, reference, tokenizer, prompts, score, sampling)
    ties = int((rewards_a == rewards_b).sum())
    wins = float((rewards_a > rewards_b).sum()) + 0.5 * ties
    low, high = wilson_interval(wins, len(rewards_a))
    return PolicyComparison(a, b, wins / len(rewards_a), low, high, ties)


def wilson_interval(successes: float, trials: int, z: float = WILSON_Z) -> tuple[float, float]:
    """Wilson's score interval (Wilson 1927) for a proportion: unlike p ± z·se it stays in
    [0, 1] and is not empty at p = 0 or 1. A tie counts as half a success, which treats the
    pairs as Bernoulli trials: a close, slightly wide approximation when ties are common."""
    if trials < 1:
        raise ValueError("a win rate needs at least one pair")
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _evaluate(
    policy: PaLM,
    reference: PaLM | None,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    scorer: Scorer,
    sampling: Sampling,
) -> tuple[Tensor, PolicyEvaluation]:
    """The per-row rewards (b) of the policy's samples, and its evaluation."""
    samples = draw_samples(policy, tokenizer, prompts, sampling)
    rewards = scorer(samples.prompts, samples.texts).float().cpu()
    kl = None
    if reference is not None:
        per_row = response_kl(
            policy,
            reference,
            samples,
            temperature=sampling.temperature,
            batch_size=sampling.batch_size,
        )
        kl = float(per_row.mean())
    return rewards, PolicyEvaluation(len(samples.texts), float(rewards.mean()), kl)


def add_evaluate_command(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="a policy's mean reward and KL, or its win rate against a baseline",
        description="Sample the policy (and the baseline, with the same seed) on held-out "
        "prompts and score the samples with a reward model. Prints, and with --out writes, "
        "the mean rewards, the KL to --reference, and the policy's win rate over the baseline.",
    )
    parser.add_argument("--policy", type=Path, required=True, metavar="CKPT")
    parser.add_argument("--baseline", type=Path, metavar="CKPT", help="policy B to compare with")
    parser.add_argument("--reference", type=Path, metavar="CKPT", help="KL is measured to it")
    _add_common_options(parser)
    parser.add_argument(
        "--prompts", type=Path, required=True, metavar="FILE", help='JSONL rows {"prompt": ...}'
    )
    parser.add_argument("--samples-per-prompt", type=int, default=1, help="(default: 1)")
    parser.add_argument("--out", type=Path, metavar="FILE", help="write the results as JSON")
    parser.set_defaults(run=_run_evaluate)


def add_best_of_n_command(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "best-of-n",
        help="sample n responses per prompt and print the one the reward model prefers",
    )
    parser.add_argument("--policy", type=Path, required=True, metavar="CKPT")
    _add_common_options(parser)
    parser.add_argument("--prompt", action="append", required=True, help="repeat for more")
    parser.add_argument("--n", type=int, default=8, help="(default: 8)")
    parser.add_argument("--top-p", type=float, help=FROM_RECIPE)
    parser.set_defaults(run=_run_best_of_n)


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reward", type=Path, required=True, metavar="RM_DIR")
    parser.add_argument("--max-new-tokens", type=int, help=FROM_RECIPE)
    parser.add_argument("--temperature", type=float, help=FROM_RECIPE)
    parser.add_argument("--seed", type=int, default=0, help="(default: 0)")
    parser.add_argument("--batch-size", type=int, default=64, help="rows per generate call")
    parser.add_argument("--device", help="default: cuda if available, else cpu")


def _sampling(args: argparse.Namespace, count: str, names: Sequence[str]) -> SamplingDefaults:
    """The recipe's sampling for --policy with the options among `names` that were given,
    checked before the (slow) loads; `count` names the samples-per-prompt option."""
    recipe = checkpoint_recipe(args.policy)
    sampling = dataclasses.replace(recipe.sampling, **given_options(args, names))
    counts = {
        count: getattr(args, count),
        "max_new_tokens": sampling.max_new_tokens,
        "batch_size": args.batch_size,
    }
    bad = [
        f"--{name.replace('_', '-')} must be >= 1" for name, value in counts.items() if value < 1
    ]
    if sampling.temperature < 0:
        bad.append("--temperature must be >= 0")
    if sampling.top_p is not None and not 0 < sampling.top_p <= 1:
        bad.append("--top-p must be in (0, 1]")
    if bad:
        raise CommandLineError("; ".join(bad))
    return sampling


def _load_scorer(args: argparse.Namespace, device: str) -> Scorer:
    # Scored with the reward model's own tokenizer, whatever the policy's.
    reward_model, reward_tokenizer = load_reward_model(args.reward, device=device)
    return reward_model_scorer(reward_model, reward_tokenizer)


def _run_evaluate(args: argparse.Namespace) -> None:
    # evaluate_policy and compare_policies sample without a nucleus: the recipe's top_p is unused.
    sampling = _sampling(args, "samples_per_prompt", ("temperature", "max_new_tokens"))
    prompts = read_prompts(args.prompts)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    checkpoint = load_checkpoint(args.policy, device=device)
    reference = None
    if args.reference is not None:
        reference = load_checkpoint(args.reference, device=device).model
    options = {
        "max_new_tokens": sampling.max_new_tokens,
        "temperature": sampling.temperature,
        "seed": args.seed,
        "samples_per_prompt": args.samples_per_prompt,
        "batch_size": args.batch_size,
    }
    common = (reference, checkpoint.tokenizer, prompts, _load_scorer(args, device))
    results: dict[str, Any]
    if args.baseline is None:
        evaluation = evaluate_policy(checkpoint.model, *common, **options)
        results = asdict(evaluation)
        print(_describe("policy", evaluation))
    else:
        baseline = load_checkpoint(args.baseline, device=device).model
        comparison = compare_policies(checkpoint.model, baseline, *common, **options)
        results = comparison.to_dict()
        print(_describe("policy", comparison.a))
        print(_describe("baseline", comparison.b))
        print(
            f"win rate of policy over baseline: {comparison.win_rate:.3f} "
            f"(95% CI {comparison.win_rate_low:.3f}-{comparison.win_rate_high:.3f}, "
            f"{comparison.ties} ties)"
        )
    if args.out is not None:
        with atomic_output(args.out) as handle:
            handle.write(json.dumps(results, indent=2).encode("utf-8"))


def _describe(name: str, evaluation: PolicyEvaluation) -> str:
    kl = "" if evaluation.kl is None else f", KL to reference {evaluation.kl:.4f} nats"
    return f"{name}: mean reward {evaluation.mean_reward:.4f} over {evaluation.samples} samples{kl}"


def _run_best_of_n(args: argparse.Namespace) -> None:
    sampling = _sampling(args, "n", SAMPLING_OPTIONS)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    checkpoint = load_checkpoint(args.policy, device=device)
    results = best_of_n(
        checkpoint.model,
        checkpoint.tokenizer,
        args.prompt,
        _load_scorer(args, device),
        n=args.n,
        max_new_tokens=sampling.max_new_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    for result in results:
        line = {"prompt": result.prompt, "best": result.best, "reward": result.best_reward}
        print(json.dumps(line))
