import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator

from rlhf_core.palm import PaLM
from rlhf_core.training import accumulate_gradients, clip_gradients, next_token_loss_sum
from tests.rlhf_core.training_data import small_model


def blocks(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 258, (rows, 17), generator=torch.Generator().manual_seed(seed))


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: parameter.grad.clone() for name, parameter in model.named_parameters()}


@pytest.mark.parametrize("sizes", [[2, 2, 2, 2], [3, 5]])
def test_accumulated_micro_batches_give_the_gradients_of_the_whole_batch(
    sizes: list[int],
) -> None:
    torch.manual_seed(0)
    model, batch, accelerator = PaLM(small_model()), blocks(8), Accelerator()
    whole_loss = F.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
    whole_loss.backward()
    expected = gradients(model)
    model.zero_grad()

    loss = accumulate_gradients(accelerator, model, batch.split(sizes))

    assert loss.item() == pytest.approx(whole_loss.item(), rel=1e-6)
    for name, gradient in gradients(model).items():
        torch.testing.assert_close(gradient, expected[name], rtol=1e-5, atol=1e-7, msg=name)


def test_clipping_scales_the_gradients_to_the_limit_and_reports_the_norm_before() -> None:
    torch.manual_seed(0)
    model, accelerator = PaLM(small_model()), Accelerator()
    accumulate_gradients(accelerator, model, [blocks(4)])
    unclipped = gradients(model)

    norm = clip_gradients(accelerator, model, None)
    assert all(torch.equal(g, unclipped[name]) for name, g in gradients(model).items())
    assert clip_gradients(accelerator, model, 1e-3) == pytest.approx(norm)

    norms = torch.stack([gradient.norm() for gradient in gradients(model).values()])
    assert norm > 1e-2
    assert norms.norm().item() == pytest.approx(1e-3, rel=1e-4)


def test_the_next_token_loss_sums_the_cross_entropy_of_every_shifted_target() -> None:
    model = PaLM(small_model())
    batch = blocks(2)
    logits = model(batch[:, :-1])
    by_hand = sum(
        -logits[row, position].log_softmax(-1)[batch[row, position + 1]]
        for row in range(2)
        for position in range(16)
    )
    torch.testing.assert_close(next_token_loss_sum(model, batch), by_hand)
