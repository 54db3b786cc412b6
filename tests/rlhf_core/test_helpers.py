import torch

from rlhf_core.helpers import default, exists, masked_mean


def test_exists_treats_only_none_as_missing() -> None:
    assert exists(0) and exists("") and exists(False)
    assert not exists(None)


def test_default_falls_back_only_for_none() -> None:
    assert default(None, 3) == 3
    assert default(0, 3) == 0


def test_masked_mean_ignores_positions_outside_the_mask() -> None:
    values = torch.tensor([[1.0, 2.0, 100.0], [4.0, -50.0, 6.0]])
    mask = torch.tensor([[True, True, False], [True, False, True]])
    assert masked_mean(values, mask).item() == (1 + 2 + 4 + 6) / 4
    assert torch.equal(masked_mean(values, mask, dim=-1), torch.tensor([1.5, 5.0]))


def test_masked_mean_of_an_empty_mask_is_zero_not_nan() -> None:
    values = torch.tensor([[1.0, 2.0]])
    mask = torch.zeros_like(values, dtype=torch.bool)
    assert masked_mean(values, mask).item() == 0.0
    assert masked_mean(values, mask, dim=-1).tolist() == [0.0]
