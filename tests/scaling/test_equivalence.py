"""The plan (Table 3 form, no forward multipliers) trains exactly like a hand-written muP MLP
that uses an explicit readout multiplier (TP5 Table 8 form, the microsoft/mup form).

The reference below is written from the tables, not from the library: it scales the readout's
input by 1/m in the forward pass and gives each layer the Table 8 settings.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import mutransfer
import training
from mutransfer.models import MLP
from training import classification_batch

BASE, TARGET = 16, 64
M = TARGET / BASE
LR, EPS, WD = 3e-3, 1e-6, 0.05


class Table8MLP(nn.Module):
    """The same MLP with the readout multiplier in the forward pass."""

    def __init__(self, sp: MLP):
        super().__init__()
        self.net = copy.deepcopy(sp)
        with torch.no_grad():
            # Table 8: the readout keeps the base init std; PyTorch's default init at target
            # has std sigma_base / sqrt(m), so multiply by sqrt(m).
            self.net.readout.weight.mul_(M**0.5)
            # biases are Theta(1) (Table 3 counts them as input weights of fan_in 1): PyTorch's
            # default U(+-1/sqrt(fan_in)) shrinks with the hidden layers' fan_in, so undo that
            for layer in [*self.net.hidden, self.net.readout]:  # the readout's too: its fan_in grows
                layer.bias.mul_(M**0.5)

    def forward(self, x):
        n = self.net
        h = torch.relu(n.input(x.flatten(1)))
        for layer in n.hidden:
            h = torch.relu(layer(h))
        return n.readout(h / M)  # the forward multiplier 1/m_in

    def groups(self, family: str) -> list[dict]:
        n = self.net
        hidden_w = [layer.weight for layer in n.hidden]
        hidden_b = [layer.bias for layer in n.hidden]
        if family == "adam":
            # Table 8, Adam: hidden lr/m, all else lr; every gradient shrinks like 1/m here,
            # so eps/m for all but the readout bias (which no multiplier touches).
            spec = [
                ([n.input.weight, n.input.bias, *hidden_b, n.readout.weight], LR, EPS / M),
                (hidden_w, LR / M, EPS / M),
                ([n.readout.bias], LR, EPS),
            ]
            return [{"params": p, "lr": lr, "eps": eps, "weight_decay": WD * LR / lr} for p, lr, eps in spec]
        # Table 8, SGD: input and vectors lr*m (fan_out), hidden lr (square), readout lr*m.
        spec = [
            ([n.input.weight, n.input.bias, *hidden_b, n.readout.weight], LR * M),
            (hidden_w, LR),
            ([n.readout.bias], LR),
        ]
        return [{"params": p, "lr": lr, "weight_decay": WD * LR / lr} for p, lr in spec]


def train(model, optimizer, steps=20):
    return training.train(model, optimizer, *classification_batch(64, 784, 10, seed=1), steps)


@pytest.mark.parametrize(
    ("family", "make"),
    [
        ("adam", lambda groups: torch.optim.AdamW(groups)),
        ("sgd", lambda groups: torch.optim.SGD(groups, momentum=0.9)),
    ],
)
def test_plan_matches_table8_reference(family, make):
    torch.manual_seed(0)
    sp = MLP(width=TARGET)
    reference = Table8MLP(sp)

    plan = mutransfer.plan(MLP, base={"width": BASE}, target={"width": TARGET})
    ours = plan.init_(copy.deepcopy(sp))
    groups = plan.param_groups(ours, lr=LR, eps=EPS, weight_decay=WD, optimizer_family=family)

    want = train(reference, make(reference.groups(family)))
    got = train(ours, make(groups))
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert want[-1] < want[0]  # it did train
    # the weights agree too, up to the readout's change of form (W3 = W8 / m)
    torch.testing.assert_close(ours.readout.weight, reference.net.readout.weight / M, rtol=1e-4, atol=1e-6)
