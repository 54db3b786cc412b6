import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from rlhf_core.checkpoint import CheckpointError, CheckpointMetadata, load_checkpoint
from rlhf_core.lora import lora_parameters
from rlhf_core.palm import PaLM, PaLMConfig
from rlhf_core.reward import (
    RewardHeadConfig,
    RewardModel,
    encode_pairs,
    expected_scores,
    last_token_hidden,
    pair_token_ids,
    value_head_from_reward,
)
from rlhf_core.reward_io import (
    BACKBONE_DIRECTORY,
    CONFIG_FILE,
    HEAD_FILE,
    load_reward_model,
    save_reward_model,
)
from rlhf_core.tokenizer import Tokenizer

CONFIG = PaLMConfig(num_tokens=258, dim=32, depth=2, heads=4, dim_head=8)
HEADS = RewardHeadConfig(attributes=("helpfulness", "verbosity"), bins=5)
TOKENIZER = Tokenizer.byte_fallback()
PROMPTS = ["Hi", "What is two plus two?", "", "Name a colour.", "Say nothing"]
RESPONSES = ["Hello!", "Four.", "An answer to no question", "Blue", "."]


def reward_model(heads: RewardHeadConfig = HEADS, seed: int = 0) -> RewardModel:
    """A reward model with trained-looking weights: adapters perturbed too (they start as 0)."""
    torch.manual_seed(seed)
    model = RewardModel(PaLM(CONFIG), heads)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return model.eval()


def scored_alone(model: RewardModel, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards (b) and Likert logits (b a k) of each row scored on its own, without padding."""
    outputs = [
        model(torch.tensor([row]), torch.ones(1, len(row), dtype=torch.bool)) for row in rows
    ]
    logits = [output.likert_logits for output in outputs if output.likert_logits is not None]
    return torch.cat([output.rewards for output in outputs]), torch.cat(logits)


def pad_with_garbage(rows: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    tokens = torch.randint(0, CONFIG.num_tokens, (len(rows), width))
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for index, row in enumerate(rows):
        columns = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
        tokens[index, columns] = torch.tensor(row)
        mask[index, columns] = True
    return tokens, mask


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_and_what_fills_it_never_change_a_reward(side: str) -> None:
    model = reward_model()
    rows = pair_token_ids(TOKENIZER, PROMPTS, RESPONSES)
    expected_rewards, expected_logits = scored_alone(model, rows)
    for seed in range(2):
        torch.manual_seed(seed)
        output = model(*pad_with_garbage(rows, side))
        torch.testing.assert_close(output.rewards, expected_rewards)
        torch.testing.assert_close(output.likert_logits, expected_logits)


def test_a_rows_reward_does_not_depend_on_the_rest_of_the_batch() -> None:
    model = reward_model()
    alone = model(*encode_pairs(TOKENIZER, PROMPTS[:1], RESPONSES[:1])).rewards
    in_batch = model(*encode_pairs(TOKENIZER, PROMPTS, RESPONSES)).rewards
    torch.testing.assert_close(in_batch[:1], alone)


def test_the_pooled_token_is_the_last_real_one_wherever_the_padding_is() -> None:
    hidden = torch.arange(8.0).reshape(2, 4, 1)
    mask = torch.tensor([[False, True, True, False], [True, True, True, True]])
    assert last_token_hidden(hidden, mask).flatten().tolist() == [2.0, 7.0]


def test_expected_score_is_the_probability_weighted_bin_value() -> None:
    probabilities = torch.tensor([[[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]]])
    scores = expected_scores(probabilities.log(), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    # 0.1*1 + 0.2*2 + 0.3*3 + 0.4*4 = 3.0; uniform over 1..4 = 2.5
    torch.testing.assert_close(scores, torch.tensor([[3.0, 2.5]]))


def test_the_likert_head_gives_the_expected_score_deterministically() -> None:
    heads = RewardHeadConfig(attributes=("overall",), bins=3, bin_values=(0.0, 5.0, 10.0))
    model = reward_model(heads)
    assert model.likert_head is not None
    with torch.no_grad():  # hand-set logits whatever the text: probabilities 0.2, 0.3, 0.5
        model.likert_head.weight.zero_()
        model.likert_head.bias.copy_(torch.tensor([0.2, 0.3, 0.5]).log())
    tokens, mask = encode_pairs(TOKENIZER, PROMPTS, RESPONSES)
    first, second = model(tokens, mask), model(tokens, mask)
    assert first.expected_scores is not None
    torch.testing.assert_close(first.expected_scores, torch.full((5, 1), 0.3 * 5.0 + 0.5 * 10.0))
    assert torch.equal(first.expected_scores, second.expected_scores)


def test_without_a_scalar_head_the_reward_is_the_first_attributes_expected_score() -> None:
    model = reward_model(dataclasses.replace(HEADS, pairwise=False))
    output = model(*encode_pairs(TOKENIZER, PROMPTS, RESPONSES))
    assert model.scalar_head is None
    assert output.expected_scores is not None
    assert output.expected_scores.shape == (5, 2)
    assert torch.equal(output.rewards, output.expected_scores[:, 0])


def test_a_scalar_only_model_has_no_likert_outputs() -> None:
    model = reward_model(RewardHeadConfig(attributes=()))
    output = model(*encode_pairs(TOKENIZER, PROMPTS, RESPONSES))
    assert output.rewards.shape == (5,)
    assert output.likert_logits is None
    assert output.expected_scores is None


def test_the_config_rejects_impossible_heads_and_fills_in_bin_values() -> None:
    assert RewardHeadConfig(bins=3).bin_values == (1.0, 2.0, 3.0)
    with pytest.raises(ValueError, match="scalar head"):
        RewardHeadConfig(attributes=(), pairwise=False)
    with pytest.raises(ValueError, match="bin_values needs 5"):
        RewardHeadConfig(bin_values=(1.0, 2.0))
    with pytest.raises(ValueError, match="distinct"):
        RewardHeadConfig(attributes=("a", "a"))


def test_normalisation_gives_mean_zero_and_std_one_on_the_batch_it_was_fitted_on() -> None:
    model = reward_model()
    rewards = torch.tensor([0.5, 2.0, -1.0, 3.5])
    model.set_normalization(rewards)
    normalized = model.normalized(rewards)
    torch.testing.assert_close(normalized.mean(), torch.tensor(0.0))
    torch.testing.assert_close(normalized.std(correction=0), torch.tensor(1.0))
    assert {"reward_mean", "reward_std"} <= set(model.state_dict())
    with pytest.raises(ValueError, match="every reward is equal"):
        model.set_normalization(torch.ones(3))


def test_lora_trains_only_adapters_and_heads_and_the_base_gets_no_grad() -> None:
    model = reward_model(dataclasses.replace(HEADS, lora_rank=4))
    heads = [p for name, p in model.named_parameters() if not name.startswith("backbone.")]
    trainable = {id(p) for p in model.trainable_parameters()}
    assert trainable == {id(p) for p in [*lora_parameters(model.backbone, "reward"), *heads]}
    output = model(*encode_pairs(TOKENIZER, PROMPTS, RESPONSES))
    assert output.likert_logits is not None
    (output.rewards.sum() + output.likert_logits.sum()).backward()
    for name, parameter in model.backbone.named_parameters():
        if id(parameter) not in trainable:
            assert not parameter.requires_grad, name
            assert parameter.grad is None, name
    assert all(parameter.grad is not None for parameter in model.trainable_parameters())


def test_the_lora_adapters_act_only_inside_the_reward_model() -> None:
    model = reward_model(dataclasses.replace(HEADS, lora_rank=4))
    tokens, mask = encode_pairs(TOKENIZER, PROMPTS, RESPONSES)
    plain = PaLM(CONFIG)
    plain.load_state_dict(model.backbone.state_dict(), strict=False)
    hidden = plain(tokens, attention_mask=mask, return_hidden=True)
    assert model.scalar_head is not None
    without_adapters = model.scalar_head(last_token_hidden(hidden, mask)).flatten()
    assert not torch.allclose(model(tokens, mask).rewards, without_adapters)
    torch.testing.assert_close(
        model.backbone(tokens, attention_mask=mask, return_hidden=True), hidden
    )


def test_full_fine_tuning_trains_every_parameter() -> None:
    model = reward_model()
    assert len(model.trainable_parameters()) == len(list(model.parameters()))


def test_score_keeps_input_order_and_batching_does_not_change_it() -> None:
    model = reward_model()
    batched = model.score(PROMPTS, RESPONSES, TOKENIZER, batch_size=2)
    torch.testing.assert_close(batched, model.score(PROMPTS, RESPONSES, TOKENIZER, batch_size=5))
    one_by_one = [model.score([p], [r], TOKENIZER) for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    torch.testing.assert_close(batched, torch.cat(one_by_one))


def test_score_returns_normalised_rewards_without_gradients_and_restores_the_mode() -> None:
    model = reward_model()
    model.set_normalization(torch.tensor([1.0, 2.0, 4.0]))
    model.train()
    scores = model.score(PROMPTS, RESPONSES, TOKENIZER)
    assert model.training
    assert not scores.requires_grad
    raw = model.eval()(*encode_pairs(TOKENIZER, PROMPTS, RESPONSES)).rewards
    torch.testing.assert_close(
        scores, (raw - 7.0 / 3.0) / torch.tensor([1.0, 2.0, 4.0]).std(correction=0)
    )


def test_encoding_appends_eos_left_pads_and_truncates_the_prompt_from_the_left() -> None:
    eos, pad = TOKENIZER.eos_id, TOKENIZER.pad_id
    tokens, mask = encode_pairs(TOKENIZER, ["abcdef", "x"], ["yz", "y"], max_length=5)
    assert tokens.tolist() == [
        [*TOKENIZER.encode("efyz"), eos],
        [pad, pad, *TOKENIZER.encode("xy"), eos],
    ]
    assert mask.tolist() == [[True] * 5, [False, False, True, True, True]]
    # A response too long for max_length keeps its end and the EOS, where the reward is read.
    assert pair_token_ids(TOKENIZER, ["p"], ["abcdef"], max_length=3) == [
        [*TOKENIZER.encode("ef"), eos]
    ]


def test_the_value_head_starts_as_the_normalised_reward_head() -> None:
    model = reward_model()
    model.set_normalization(torch.tensor([0.0, 1.0, 5.0]))
    tokens, mask = encode_pairs(TOKENIZER, PROMPTS, RESPONSES)
    value_head = value_head_from_reward(model)
    hidden = model.backbone(tokens, attention_mask=mask, return_hidden=True)
    values = value_head(last_token_hidden(hidden, mask)).flatten()
    torch.testing.assert_close(values, model.normalized(model(tokens, mask).rewards))
    assert model.scalar_head is not None
    assert value_head.weight.data_ptr() != model.scalar_head.weight.data_ptr()
    with pytest.raises(ValueError, match="no scalar head"):
        value_head_from_reward(reward_model(dataclasses.replace(HEADS, pairwise=False)))


@pytest.mark.parametrize("lora_rank", [None, 4])
def test_a_reward_model_round_trips_bit_for_bit(tmp_path: Path, lora_rank: int | None) -> None:
    model = reward_model(dataclasses.replace(HEADS, lora_rank=lora_rank))
    model.set_normalization(torch.tensor([0.0, 1.0, 5.0]))
    save_reward_model(tmp_path / "rm", model, TOKENIZER, metadata=CheckpointMetadata(step=7))
    loaded, tokenizer = load_reward_model(tmp_path / "rm")
    assert loaded.config == model.config
    assert tokenizer.fingerprint == TOKENIZER.fingerprint
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    assert torch.equal(
        loaded.score(PROMPTS, RESPONSES, tokenizer), model.score(PROMPTS, RESPONSES, TOKENIZER)
    )
    assert len(loaded.trainable_parameters()) == len(model.trainable_parameters())
    # The backbone is a plain PaLM checkpoint that any PaLM tool can read.
    assert load_checkpoint(tmp_path / "rm" / BACKBONE_DIRECTORY).metadata.step == 7


def test_saving_again_replaces_the_checkpoint_and_leaves_no_temporary_files(
    tmp_path: Path,
) -> None:
    save_reward_model(tmp_path / "rm", reward_model(seed=0), TOKENIZER)
    newer = reward_model(seed=1)
    save_reward_model(tmp_path / "rm", newer, TOKENIZER)
    loaded, _ = load_reward_model(tmp_path / "rm")
    assert loaded.scalar_head is not None
    assert newer.scalar_head is not None
    assert torch.equal(loaded.scalar_head.weight, newer.scalar_head.weight)
    assert [path.name for path in tmp_path.iterdir()] == ["rm"]


def test_saving_refuses_to_replace_a_directory_that_is_not_a_reward_checkpoint(
    tmp_path: Path,
) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="refusing to replace"):
        save_reward_model(tmp_path, reward_model(), TOKENIZER)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda path: path.write_bytes(path.read_bytes()[:-10]), "SHA-256 differs"),
        (lambda path: path.write_bytes(b"not safetensors"), "SHA-256 differs"),
        (lambda path: path.unlink(), "missing reward head file"),
    ],
)
def test_a_missing_or_corrupt_head_file_raises_a_checkpoint_error(
    tmp_path: Path, damage: Callable[[Path], object], message: str
) -> None:
    save_reward_model(tmp_path / "rm", reward_model(), TOKENIZER)
    damage(tmp_path / "rm" / HEAD_FILE)
    with pytest.raises(CheckpointError, match=message) as raised:
        load_reward_model(tmp_path / "rm")
    assert raised.value.path == tmp_path / "rm" / HEAD_FILE


def test_a_head_file_that_does_not_fit_the_config_raises_a_checkpoint_error(
    tmp_path: Path,
) -> None:
    save_reward_model(tmp_path / "rm", reward_model(), TOKENIZER)
    config_path = tmp_path / "rm" / CONFIG_FILE
    config = json.loads(config_path.read_text())
    config["head"]["bins"], config["head"]["bin_values"] = 3, []
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="do not fit the config"):
        load_reward_model(tmp_path / "rm")
