"""Batch norms folded into the convolutions before them, for inference only."""

import logging

import torch
from torch import nn

from vprflow.networks.compute import fold_batch_norms, folded_for_inference


def with_statistics(bn: nn.BatchNorm2d, seed: int) -> nn.BatchNorm2d:
    """A batch norm whose running statistics and affine parameters are not the identity,
    so folding it wrongly (or not at all) changes the output."""
    g = torch.Generator().manual_seed(seed)
    n = bn.num_features
    bn.running_mean.copy_(torch.randn(n, generator=g))
    bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    bn.weight.data.copy_(torch.randn(n, generator=g))
    bn.bias.data.copy_(torch.randn(n, generator=g))
    return bn.eval()


def probe(seed: int = 1) -> torch.Tensor:
    return torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_a_conv_bn_pair_folds_into_one_conv_with_the_same_output():
    network = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), with_statistics(nn.BatchNorm2d(4), 0), nn.ReLU(),
                            nn.Sequential(nn.Conv2d(4, 5, 1), with_statistics(nn.BatchNorm2d(5), 1))).eval()
    expected = network(probe())
    folded = folded_for_inference(network, probe())
    assert folded is not network
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())  # both pairs, one nested
    assert torch.allclose(folded(probe(2)), network(probe(2)), atol=1e-5)  # also on another input
    assert torch.allclose(network(probe()), expected)  # the original is left as it was


def test_a_batch_norm_applied_to_another_tensor_is_not_folded():
    """``bn`` is registered after ``conv_a`` but normalises ``conv_b``'s output: folding by
    registration order would be wrong, and the probe catches it."""

    class Crossed(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv_a = nn.Conv2d(3, 4, 1)
            self.bn = with_statistics(nn.BatchNorm2d(4), 3)
            self.conv_b = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.conv_a(x) + self.bn(self.conv_b(x))

    network = Crossed().eval()
    assert fold_batch_norms(Crossed().eval()) == 1  # the naive fold happens...
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("vprflow").addHandler(handler)
    try:
        kept = folded_for_inference(network, probe())
    finally:
        logging.getLogger("vprflow").removeHandler(handler)
    assert kept is network  # ...and is refused: the output changed
    assert any("running it unfolded" in r.getMessage() for r in records)
