"""``trainer.activation_checkpointing``: the same step as without it (weights, gradients and
BatchNorm statistics), on the encoders that have blocks; the model's state keeps its names."""

from __future__ import annotations

import copy

import pytest
import torch

from segkit import dist
from segkit.engine.activation_checkpointing import checkpoint_encoder
from segkit.run import build_model
from tests.conftest import compose_train


def _model(name: str, checkpointed: bool):
    small = ["model.base_channels=8"] if name == "unet" else []
    cfg = compose_train(
        f"model={name}",
        *small,
        "model.pretrained=false",
        f"trainer.activation_checkpointing={str(checkpointed).lower()}",
    )
    torch.manual_seed(0)
    return build_model(cfg, dist.DistInfo())


@pytest.mark.parametrize(("name", "blocks"), [("unet", 10), ("unet_resnet18", 8)])
def test_checkpointed_encoder_gives_the_same_step_and_statistics(name, blocks):
    plain, ckpt = _model(name, False), _model(name, True)
    assert list(plain.state_dict()) == list(ckpt.state_dict())  # names unchanged
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for model in (plain, ckpt):
        model.train()
        model(x)["out"].square().mean().backward()
    for (n, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=n)
    for (n, b), c in zip(plain.named_buffers(), ckpt.buffers()):
        assert torch.equal(b, c), n  # running statistics and counters updated once
    names = checkpoint_encoder(copy.deepcopy(plain))
    assert len(names) == blocks and all(n.startswith("encoder.") for n in names)
    # a deepcopy (the EMA) runs its own weights; eval mode runs without recomputation
    ema = copy.deepcopy(ckpt).eval()
    with torch.no_grad():
        for p in ema.parameters():
            p.zero_()
        assert not torch.equal(ema(x)["out"], ckpt.eval()(x)["out"])


def test_an_encoder_of_single_layers_or_no_encoder_is_left_as_it_is():
    class SingleLayers(torch.nn.Module):  # like VGG16's features: conv, ReLU, conv
        def __init__(self) -> None:
            super().__init__()
            self.features = torch.nn.Sequential(
                torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3)
            )

        def encoder_modules(self) -> list[torch.nn.Module]:
            return [self.features]

    assert checkpoint_encoder(SingleLayers()) == []
    assert checkpoint_encoder(torch.nn.Conv2d(3, 4, 3)) == []
