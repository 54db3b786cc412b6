import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from rlhf_core.checkpoint import CheckpointError, CheckpointMetadata, load_checkpoint
from rlhf_core.lora import lora_parameters, use_scope
from rlhf_core.palm import PaLM, PaLMConfig
from rlhf_core.reward import (
    RewardHeadConfig,
    RewardModel,
    RewardModelError,
    critic_from_reward,
    expected_scores,
    last_token_hidden,
    masked_mean_hidden,
    pool,
    value_head_from_reward,
)
from rlhf_core.reward_io import (
    BACKBONE_DIRECTORY,
    CONFIG_FILE,
    HEAD_FILE,
    load_reward_model,
    save_reward_model,
)
from rlhf_core.sequences import collate, encode_responses
from rlhf_core.tokenizer import Tokenizer

CONFIG = PaLMConfig(num_tokens=258, dim=32, depth=2, heads=4, dim_head=8)
HEADS = RewardHeadConfig(attributes=("helpfulness", "verbosity"), bins=5)
TOKENIZER = Tokenizer.byte_fallback()
PROMPTS = ["Hi", "What is two plus two?", "", "Name a colour.", "Say nothing"]
RESPONSES = ["Hello!", "Four.", "An answer to no question", "Blue", "."]


def reward_model(heads: RewardHeadConfig = HEADS, seed: int = 0) -> RewardModel:
    """A reward model with trained-looking weights: adapters perturbed too (they start as 0),
    and its heads marked as trained."""
    torch.manual_seed(seed)
    model = RewardModel(PaLM(CONFIG), heads)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    model.trained_heads = frozenset({"scalar", "likert"})
    return model.eval()


def encode(
    prompts: list[str], responses: list[str], max_length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """tokens, attention mask and response mask of the pairs, left-padded."""
    batch = collate(encode_responses(TOKENIZER, prompts, responses, max_length), TOKENIZER.pad_id)
    return batch.tokens, batch.attention_mask, batch.response_mask


def scored_alone(
    model: RewardModel, rows: list[list[int]], response_lengths: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards (b) and Likert logits (b a k) of each row scored on its own, without padding."""
    outputs = []
    for row, length in zip(rows, response_lengths, strict=True):
        response = torch.zeros(1, len(row), dtype=torch.bool)
        response[0, len(row) - length :] = True
        outputs.append(
            model(torch.tensor([row]), torch.ones(1, len(row), dtype=torch.bool), response)
        )
    logits = [output.likert_logits for output in outputs if output.likert_logits is not None]
    return torch.cat([output.rewards for output in outputs]), torch.cat(logits)


def pad_with_garbage(
    rows: list[list[int]], response_lengths: list[int], side: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    tokens = torch.randint(0, CONFIG.num_tokens, (len(rows), width))
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    response = torch.zeros(len(rows), width, dtype=torch.bool)
    for index, (row, length) in enumerate(zip(rows, response_lengths, strict=True)):
        start = 0 if side == "right" else width - len(row)
        tokens[index, start : start + len(row)] = torch.tensor(row)
        mask[index, start : start + len(row)] = True
        response[index, start + len(row) - length : start + len(row)] = True
    return tokens, mask, response


@pytest.mark.parametrize("pooling", ["last", "mean", "mean_last"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_and_what_fills_it_never_change_a_reward(side: str, pooling: str) -> None:
    model = reward_model(dataclasses.replace(HEADS, pooling=pooling))
    encoded = encode_responses(TOKENIZER, PROMPTS, RESPONSES)
    rows, lengths = [row.ids for row in encoded], [row.response_length for row in encoded]
    expected_rewards, expected_logits = scored_alone(model, rows, lengths)
    for seed in range(2):
        torch.manual_seed(seed)
        output = model(*pad_with_garbage(rows, lengths, side))
        torch.testing.assert_close(output.rewards, expected_rewards)
        torch.testing.assert_close(output.likert_logits, expected_logits)


def test_a_rows_reward_does_not_depend_on_the_rest_of_the_batch() -> None:
    model = reward_model()
    alone = model(*encode(PROMPTS[:1], RESPONSES[:1])).rewards
    in_batch = model(*encode(PROMPTS, RESPONSES)).rewards
    torch.testing.assert_close(in_batch[:1], alone)


def test_the_pooled_token_is_the_last_real_one_wherever_the_padding_is() -> None:
    hidden = torch.arange(8.0).reshape(2, 4, 1)
    mask = torch.tensor([[False, True, True, False], [True, True, True, True]])
    assert last_token_hidden(hidden, mask).flatten().tolist() == [2.0, 7.0]


def test_mean_pooling_averages_the_response_and_ignores_nan_in_padding() -> None:
    hidden = torch.tensor([[[float("nan")], [1.0], [3.0], [5.0]], [[2.0], [4.0], [6.0], [8.0]]])
    response = torch.tensor([[False, False, True, True], [False, True, True, True]])
    assert masked_mean_hidden(hidden, response).flatten().tolist() == [4.0, 6.0]
    both = pool(hidden, torch.ones(2, 4, dtype=torch.bool), response, "mean_last")
    assert both.tolist() == [[4.0, 5.0], [6.0, 8.0]]


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
    batch = encode(PROMPTS, RESPONSES)
    first, second = model(*batch), model(*batch)
    assert first.expected_scores is not None
    torch.testing.assert_close(first.expected_scores, torch.full((5, 1), 0.3 * 5.0 + 0.5 * 10.0))
    assert torch.equal(first.expected_scores, second.expected_scores)


def test_without_a_scalar_head_the_reward_is_the_first_attributes_expected_score() -> None:
    model = reward_model(dataclasses.replace(HEADS, pairwise=False))
    output = model(*encode(PROMPTS, RESPONSES))
    assert model.scalar_head is None
    assert output.expected_scores is not None
    assert output.expected_scores.shape == (5, 2)
    assert torch.equal(output.rewards, output.expected_scores[:, 0])


def test_a_scalar_only_model_has_no_likert_outputs() -> None:
    model = reward_model(RewardHeadConfig(attributes=()))
    output = model(*encode(PROMPTS, RESPONSES))
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
    output = model(*encode(PROMPTS, RESPONSES))
    assert output.likert_logits is not None
    (output.rewards.sum() + output.likert_logits.sum()).backward()
    for name, parameter in model.backbone.named_parameters():
        if id(parameter) not in trainable:
            assert not parameter.requires_grad, name
            assert parameter.grad is None, name
    assert all(parameter.grad is not None for parameter in model.trainable_parameters())


def test_the_lora_adapters_act_only_inside_the_reward_model() -> None:
    model = reward_model(dataclasses.replace(HEADS, lora_rank=4))
    tokens, mask, response = encode(PROMPTS, RESPONSES)
    plain = PaLM(CONFIG)
    plain.load_state_dict(model.backbone.state_dict(), strict=False)
    hidden = plain(tokens, attention_mask=mask, return_hidden=True)
    assert model.scalar_head is not None
    without_adapters = model.scalar_head(pool(hidden, mask, response, "mean_last")).flatten()
    assert not torch.allclose(model(tokens, mask, response).rewards, without_adapters)
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
    raw = model.eval()(*encode(PROMPTS, RESPONSES)).rewards
    torch.testing.assert_close(
        scores, (raw - 7.0 / 3.0) / torch.tensor([1.0, 2.0, 4.0]).std(correction=0)
    )


def test_score_reads_at_most_the_models_max_length_as_training_did() -> None:
    model = reward_model(dataclasses.replace(HEADS, max_length=6))
    long_prompt = "a prompt far longer than six tokens"
    cut = encode([long_prompt], ["yes"], max_length=6)
    expected = model.normalized(model(*cut).rewards)
    torch.testing.assert_close(model.score([long_prompt], ["yes"], TOKENIZER), expected)


def test_a_head_no_label_trained_never_scores() -> None:
    model = reward_model()
    model.trained_heads = frozenset({"likert"})
    with pytest.raises(RewardModelError, match="scalar head was never trained"):
        model.score(PROMPTS, RESPONSES, TOKENIZER)
    likert_only = reward_model(dataclasses.replace(HEADS, pairwise=False))
    likert_only.trained_heads = frozenset({"scalar"})
    with pytest.raises(RewardModelError, match="likert head was never trained"):
        likert_only.score(PROMPTS, RESPONSES, TOKENIZER)
    likert_only.trained_heads = frozenset({"likert"})
    assert likert_only.score(PROMPTS, RESPONSES, TOKENIZER).shape == (5,)


def test_an_ensemble_rewards_the_members_mean_and_spreads_by_their_deviation() -> None:
    model = reward_model(dataclasses.replace(HEADS, members=3))
    output = model(*encode(PROMPTS, RESPONSES))
    assert output.member_rewards is not None and output.member_rewards.shape == (5, 3)
    torch.testing.assert_close(output.rewards, output.member_rewards.mean(dim=1))
    scores, spread = model.score_with_spread(PROMPTS, RESPONSES, TOKENIZER)
    expected = output.member_rewards.std(dim=1, correction=0) / model.reward_std
    torch.testing.assert_close(spread, expected)
    torch.testing.assert_close(scores, model.normalized(output.rewards))
    _, alone = reward_model().score_with_spread(PROMPTS, RESPONSES, TOKENIZER)
    assert torch.equal(alone, torch.zeros(5))


def test_the_value_head_read_per_token_averages_to_the_normalised_mean_pooled_reward() -> None:
    model = reward_model(dataclasses.replace(HEADS, pooling="mean", members=2))
    model.set_normalization(torch.tensor([0.0, 1.0, 5.0]))
    tokens, mask, response = encode(PROMPTS, RESPONSES)
    value_head = value_head_from_reward(model)
    hidden = model.backbone(tokens, attention_mask=mask, return_hidden=True)
    per_token = value_head(hidden).squeeze(-1)
    values = (per_token * response).sum(dim=1) / response.sum(dim=1)
    torch.testing.assert_close(values, model.normalized(model(tokens, mask, response).rewards))
    assert model.scalar_head is not None
    assert value_head.weight.data_ptr() != model.scalar_head.weight.data_ptr()
    with pytest.raises(RewardModelError, match="no scalar head"):
        value_head_from_reward(reward_model(dataclasses.replace(HEADS, pairwise=False)))


@pytest.mark.parametrize("lora_rank", [None, 4])
def test_the_critic_is_a_copy_of_the_reward_backbone_that_shares_no_weight(
    lora_rank: int | None,
) -> None:
    model = reward_model(dataclasses.replace(HEADS, lora_rank=lora_rank))
    backbone, _ = critic_from_reward(model)
    tokens, mask, _ = encode(PROMPTS, RESPONSES)
    with torch.no_grad(), use_scope(model.backbone, "reward" if lora_rank else None):
        expected = model.backbone(tokens, attention_mask=mask, return_hidden=True)
    torch.testing.assert_close(backbone(tokens, attention_mask=mask, return_hidden=True), expected)
    ours = {p.data_ptr() for p in backbone.parameters()}
    assert not ours & {p.data_ptr() for p in model.parameters()}
    assert all(p.requires_grad for p in backbone.parameters())


@pytest.mark.parametrize("lora_rank", [None, 4])
def test_a_reward_model_round_trips_bit_for_bit(tmp_path: Path, lora_rank: int | None) -> None:
    model = reward_model(dataclasses.replace(HEADS, lora_rank=lora_rank))
    model.set_normalization(torch.tensor([0.0, 1.0, 5.0]))
    save_reward_model(tmp_path / "rm", model, TOKENIZER, metadata=CheckpointMetadata(step=7))
    loaded, tokenizer = load_reward_model(tmp_path / "rm")
    assert loaded.config == model.config
    assert loaded.trained_heads == model.trained_heads
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
