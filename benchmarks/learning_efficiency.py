"""Does the loop learn at its defaults? Reward-model agreement and policy gain, per preference.

For each seed, hidden preference (`rlhf_core.simulation.PREFERENCES`) and label budget:
1. the base model answers demo prompts (`rlhf_core.demo.demo_prompts`, split 80/20 by a hash
   of the prompt into training and held-out prompts) twice each, with the recipe's sampling;
2. a panel of three simulated annotators (noise 0.5 of the preference's spread over those
   samples, so each agrees with the noiseless preference on about 85% of pairs) labels
   `budget` pairs on training prompts;
3. a reward model is fitted with the recipe's defaults (`recipes.recipe_for(base)`) and judged
   on the held-out prompts' pairs against the *noiseless* preference (pairs it calls a tie are
   left out), beside a bag-of-words logistic regression on the same labels (scikit-learn,
   regularisation chosen by 5-fold cross-validation);
4. the recipe's default algorithm trains the policy on the training prompts against that reward
   model; the new policy and the base then answer every held-out prompt with the same seeds
   (matched samples), and the noiseless preference judges each matched pair (ties count half),
   beside the new policy's KL to the base (nats per response, Monte-Carlo on its own samples).

One JSON line per (seed, preference, budget); `--summary` prints means with 95% t-intervals
over seeds from such a file (with one seed, the 95% Wilson intervals over the held-out pairs
and the matched samples).

    python benchmarks/learning_efficiency.py --out learning.jsonl          # everything
    python benchmarks/learning_efficiency.py --preferences letters --labels 250 --seeds 0
    python benchmarks/learning_efficiency.py --summary learning.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rlhf_core.checkpoint import Checkpoint, load_checkpoint  # noqa: E402
from rlhf_core.demo import build_demo_model, demo_prompts  # noqa: E402
from rlhf_core.evaluation import (  # noqa: E402
    Sampling,
    compare_policies,
    draw_samples,
    wilson_interval,
)
from rlhf_core.policy_training import train_policy  # noqa: E402
from rlhf_core.recipes import Recipe, recipe_for  # noqa: E402
from rlhf_core.reward import RewardModel  # noqa: E402
from rlhf_core.reward_io import load_reward_model, save_reward_model  # noqa: E402
from rlhf_core.reward_labels import held_out_prompt  # noqa: E402
from rlhf_core.reward_training import heads_for, train_reward_model  # noqa: E402
from rlhf_core.simulation import (  # noqa: E402
    PREFERENCES,
    Preference,
    calibrated_panel,
    preference_values,
)

HELD_OUT = 0.2
PROMPTS = 1700
NOISE = 0.5


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", type=Path, help="base checkpoint (default: build the demo)")
    parser.add_argument("--demo-dir", type=Path, default=ROOT / "data" / "models" / "demo")
    parser.add_argument("--preferences", default=",".join(PREFERENCES))
    parser.add_argument("--labels", type=int, nargs="+", default=[250, 1000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--algorithm", help="default: the recipe's")
    parser.add_argument("--skip-policy", action="store_true", help="reward models only")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=JSON",
        help="change one recipe setting, e.g. ppo.steps=40 (an ablation: the defaults are what "
        "the benchmark measures without it)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also append the JSON lines here")
    parser.add_argument(
        "--cache",
        type=Path,
        help="keep the base samples and each fitted reward model here and reuse them when "
        "asked again (same base, seed, preference and budget), e.g. to compare policy "
        "algorithms on one reward model",
    )
    parser.add_argument("--summary", type=Path, metavar="JSONL", help="summarise and exit")
    args = parser.parse_args(argv)
    if args.summary:
        summarise(args.summary)
        return
    torch.set_num_threads(args.threads)
    base = args.base or build_demo_model(args.demo_dir)
    for seed in args.seeds:
        run_seed(args, base, seed)


def run_seed(args: argparse.Namespace, base: Path, seed: int) -> None:
    checkpoint = load_checkpoint(base)
    recipe = with_changes(recipe_for(checkpoint.config), args.set)
    prompts = demo_prompts(PROMPTS, seed=seed)
    train = [p for p in prompts if not held_out_prompt(p, HELD_OUT, salt="benchmark")]
    held = [p for p in prompts if held_out_prompt(p, HELD_OUT, salt="benchmark")]
    train_texts, held_texts = base_samples(args, base, recipe, checkpoint, train, held, seed)
    for name in args.preferences.split(","):
        preference = PREFERENCES[name]()
        for budget in args.labels:
            started = time.perf_counter()
            row = run_budget(
                args, base, recipe, preference, train, train_texts, held, held_texts, budget, seed
            )
            row = {"seed": seed, "preference": name, "labels": budget, **row}
            if args.set:
                row["changes"] = args.set
            row["seconds"] = round(time.perf_counter() - started, 1)
            line = json.dumps(row)
            print(line, flush=True)
            if args.out:
                with args.out.open("a", encoding="utf-8") as handle:
                    handle.write(line + "\n")


def base_samples(
    args: argparse.Namespace,
    base: Path,
    recipe: Recipe,
    checkpoint: Checkpoint,
    train: list[str],
    held: list[str],
    seed: int,
) -> tuple[list[str], list[str]]:
    """Two samples of the base per training and per held-out prompt (kept in --cache)."""
    sampling = recipe.sampling
    key = f"{base.parent.parent.name}-{seed}-{sampling.temperature}-{sampling.max_new_tokens}"
    cached = None if args.cache is None else args.cache / f"samples-{key}.json"
    if cached is not None and cached.is_file():
        found = json.loads(cached.read_text())
        return found["train"], found["held"]
    draw = Sampling(2, sampling.max_new_tokens, sampling.temperature, sampling.top_p, seed)
    train_texts = draw_samples(checkpoint.model, checkpoint.tokenizer, train, draw).texts
    held_texts = draw_samples(
        checkpoint.model,
        checkpoint.tokenizer,
        held,
        Sampling(2, draw.max_new_tokens, draw.temperature, draw.top_p, seed + 1000),
    ).texts
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps({"train": train_texts, "held": held_texts}))
    return train_texts, held_texts


def run_budget(
    args: argparse.Namespace,
    base: Path,
    recipe: Recipe,
    preference: Preference,
    train: list[str],
    train_texts: list[str],
    held: list[str],
    held_texts: list[str],
    budget: int,
    seed: int,
) -> dict[str, object]:
    panel = calibrated_panel(3, preference, train_texts + held_texts, noise=NOISE, seed=seed)
    chosen = random.Random(seed * 7919 + budget).sample(range(len(train)), budget)
    labels = [
        panel[k % 3].compare(train[i], train_texts[2 * i], train_texts[2 * i + 1])
        for k, i in enumerate(chosen)
    ]
    values = preference_values(preference, train_texts)
    agree = [
        (label.chosen == train_texts[2 * i]) == (values[2 * i] > values[2 * i + 1])
        for label, i in zip(labels, chosen, strict=True)
        if values[2 * i] != values[2 * i + 1]
    ]
    checkpoint = load_checkpoint(base)
    cached = None
    if args.cache is not None:
        name = f"{base.parent.parent.name}-{seed}-{preference_name(preference)}-{budget}"
        if args.set:  # an ablation's reward model is its own
            name += "-" + hashlib.sha256("\n".join(sorted(args.set)).encode()).hexdigest()[:12]
        cached = args.cache / name
    clock = time.perf_counter()
    if cached is not None and cached.is_dir():
        model, _ = load_reward_model(cached)
        summary = json.loads((cached / "benchmark.json").read_text())
    else:
        model = RewardModel(checkpoint.model.train(), heads_for(labels, base=recipe.reward_head))
        config = dataclasses_replace(recipe.reward, seed=seed)
        result = train_reward_model(model, checkpoint.tokenizer, labels, config)
        summary = {
            "rm_held_out_accuracy": result.eval_metrics.get("pairwise_accuracy", float("nan")),
            "rm_epochs": result.best_epoch,
        }
        if cached is not None:
            save_reward_model(cached, model, checkpoint.tokenizer)
            (cached / "benchmark.json").write_text(json.dumps(summary))
    reward_seconds = time.perf_counter() - clock
    held_values = preference_values(preference, held_texts)
    decided = [i for i in range(len(held)) if held_values[2 * i] != held_values[2 * i + 1]]
    rewards = model.score(
        [held[i] for i in decided for _ in range(2)],
        [held_texts[2 * i + j] for i in decided for j in range(2)],
        checkpoint.tokenizer,
        batch_size=64,
    ).view(-1, 2)
    truth = torch.tensor([held_values[2 * i] > held_values[2 * i + 1] for i in decided])
    agreed = int(((rewards[:, 0] > rewards[:, 1]) == truth).sum())
    row: dict[str, object] = {
        "label_agreement": round(statistics.fmean(agree), 3),
        "rm_agreement": round(agreed / len(decided), 3),
        # 95% Wilson interval over the held-out pairs (one seed's uncertainty)
        "rm_agreement_interval": [
            round(bound, 3) for bound in wilson_interval(agreed, len(decided))
        ],
        "rm_held_out_accuracy": round(float(summary["rm_held_out_accuracy"]), 3),
        "rm_epochs": summary["rm_epochs"],
        "held_out_pairs": len(decided),
        "rm_seconds": round(reward_seconds, 1),
    }
    row["bow_agreement"] = bag_of_words_agreement(
        labels, train, train_texts, chosen, held, held_texts, decided, truth
    )
    if args.skip_policy:
        return row
    algorithm = args.algorithm or recipe.algorithm
    policy_config = recipe.ppo if algorithm == "ppo" else recipe.rejection_sampling
    policy = load_checkpoint(base)
    clock = time.perf_counter()
    trained = train_policy(
        algorithm,
        policy.model,
        policy.tokenizer,
        train,
        model,
        checkpoint.tokenizer,
        dataclasses_replace(policy_config, seed=seed),
    )
    policy_seconds = time.perf_counter() - clock
    reference = load_checkpoint(base).model

    def judge(prompts: list[str], responses: list[str]) -> torch.Tensor:
        return torch.tensor(preference_values(preference, responses))

    comparison = compare_policies(
        trained.model,
        reference,
        reference,
        policy.tokenizer,
        held,
        judge,
        max_new_tokens=recipe.sampling.max_new_tokens,
        temperature=recipe.sampling.temperature,
        seed=seed + 2000,
        samples_per_prompt=2,
    )
    row |= {
        "algorithm": algorithm,
        "win_rate": round(comparison.win_rate, 3),
        "win_rate_low": round(comparison.win_rate_low, 3),
        "win_rate_high": round(comparison.win_rate_high, 3),
        "kl": round(comparison.a.kl or float("nan"), 2),
        "preference_base": round(comparison.b.mean_reward, 4),
        "preference_new": round(comparison.a.mean_reward, 4),
        "policy_warnings": trained.warnings,
        "policy_seconds": round(policy_seconds, 1),
    }
    return row


def with_changes(recipe: Recipe, changes: Sequence[str]) -> Recipe:
    """`recipe` with each SECTION.FIELD=JSON of `changes` applied (see --set)."""
    import dataclasses

    for change in changes:
        target, _, value = change.partition("=")
        section, _, name = target.partition(".")
        part = dataclasses.replace(getattr(recipe, section), **{name: json.loads(value)})
        recipe = dataclasses.replace(recipe, **{section: part})
    return recipe


def preference_name(preference: Preference) -> str:
    return next(name for name, make in PREFERENCES.items() if isinstance(preference, make))  # type: ignore[arg-type]


def dataclasses_replace(config: object, **changes: object) -> object:
    import dataclasses

    return dataclasses.replace(config, **changes)  # type: ignore[type-var]


def bag_of_words_agreement(
    labels: list[object],
    train: list[str],
    train_texts: list[str],
    chosen: list[int],
    held: list[str],
    held_texts: list[str],
    decided: list[int],
    truth: torch.Tensor,
) -> float | None:
    """Held-out agreement of a logistic regression on word counts (per text, normalised to
    frequencies) of the labelled pairs' difference, regularisation by 5-fold CV."""
    try:
        import numpy as np
        from sklearn.feature_extraction.text import CountVectorizer
        from sklearn.linear_model import LogisticRegressionCV
    except ImportError:
        return None
    vectorizer = CountVectorizer(token_pattern=r"[A-Za-z']+|[^\sA-Za-z']", lowercase=True)
    vectorizer.fit(train_texts + held_texts)

    def frequencies(texts: list[str]) -> np.ndarray:
        counts = vectorizer.transform(texts).astype(float).toarray()
        return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)

    first = frequencies([label.chosen for label in labels])  # type: ignore[attr-defined]
    second = frequencies([label.rejected for label in labels])  # type: ignore[attr-defined]
    difference = first - second
    x = np.concatenate([difference, -difference])
    y = np.concatenate([np.ones(len(labels)), np.zeros(len(labels))])
    model = LogisticRegressionCV(
        Cs=[0.1, 1, 10, 100, 1000], cv=5, fit_intercept=False, max_iter=3000
    )
    model.fit(x, y)
    a = frequencies([held_texts[2 * i] for i in decided])
    b = frequencies([held_texts[2 * i + 1] for i in decided])
    predicted = model.decision_function(a - b) > 0
    return round(float((torch.tensor(predicted) == truth).float().mean()), 3)


def summarise(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    groups: dict[tuple[str, int], list[dict[str, object]]] = {}
    for row in rows:
        groups.setdefault((str(row["preference"]), int(row["labels"])), []).append(row)  # type: ignore[arg-type]
    for (name, budget), group in sorted(groups.items()):
        summary: dict[str, object] = {"preference": name, "labels": budget, "seeds": len(group)}
        for key in ("rm_agreement", "bow_agreement", "win_rate", "kl"):
            values = [float(r[key]) for r in group if r.get(key) is not None]  # type: ignore[arg-type]
            if values:
                summary[key] = mean_interval(values)
        if len(group) == 1:  # one seed: the intervals over its held-out pairs and prompts
            row = group[0]
            for key, interval in (
                ("rm_agreement", row.get("rm_agreement_interval")),
                ("win_rate", [row.get("win_rate_low"), row.get("win_rate_high")]),
            ):
                if key in summary and interval and None not in interval:
                    summary[key] = [summary[key][0], *interval]  # type: ignore[index]
        print(json.dumps(summary))


def mean_interval(values: list[float]) -> list[float]:
    """[mean, low, high] with a 95% t-interval (two-sided) over the values."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return [round(mean, 3), float("nan"), float("nan")]
    t = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776}.get(len(values), 1.96)
    half = t * statistics.stdev(values) / math.sqrt(len(values))
    return [round(mean, 3), round(mean - half, 3), round(mean + half, 3)]


if __name__ == "__main__":
    main()
