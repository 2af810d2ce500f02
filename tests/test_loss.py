"""The soft-label loss alone: equal to its direct computation, the cross-entropy for a one-hot label, zero at the
label itself, and blind to padded slots."""

from __future__ import annotations

import math

import pytest
import torch

from lightreasoner.loss import soft_label_kl_loss


def test_loss_equals_direct_computation():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11, dtype=torch.float64)
    positions = torch.tensor([[0, 1], [0, 4], [1, 2]])
    target_ids = torch.tensor([[3, 7, 0], [1, 0, 0], [2, 9, 10]])
    target_weights = torch.tensor([[0.25, 0.75, 0.0], [1.0, 0.0, 0.0], [0.5, 0.3, 0.2]], dtype=torch.float64)
    loss = soft_label_kl_loss(logits, positions, target_ids, target_weights)
    expected = []
    for (b, t), ids, ws in zip(positions.tolist(), target_ids.tolist(), target_weights.tolist(), strict=True):
        logp = torch.log_softmax(logits[b, t], dim=-1)
        expected.append(sum(w * (math.log(w) - float(logp[i])) for i, w in zip(ids, ws, strict=True) if w > 0))
    assert loss.item() == pytest.approx(sum(expected) / len(expected), rel=1e-6)
    # A one-hot label is the cross-entropy; the KL is never negative and is zero at the label itself.
    ce = torch.nn.functional.cross_entropy(logits[0, 4:5].float(), torch.tensor([1]))
    assert soft_label_kl_loss(logits, positions[1:2], target_ids[1:2], target_weights[1:2]).item() == pytest.approx(
        ce.item(), rel=1e-5)
    assert loss.item() > 0
    exact = torch.full((1, 1, 4), -1e9, dtype=torch.float64)
    exact[0, 0, :2] = torch.log(torch.tensor([0.3, 0.7], dtype=torch.float64))
    zero = soft_label_kl_loss(exact, torch.tensor([[0, 0]]), torch.tensor([[0, 1]]),
                              torch.tensor([[0.3, 0.7]], dtype=torch.float64))
    assert abs(zero.item()) < 1e-6


def test_loss_padded_slots_contribute_nothing():
    torch.manual_seed(1)
    logits = torch.randn(1, 3, 7, requires_grad=True)
    pos = torch.tensor([[0, 2]])
    base = soft_label_kl_loss(logits, pos, torch.tensor([[4, 5]]), torch.tensor([[0.4, 0.6]]))
    padded = soft_label_kl_loss(logits, pos, torch.tensor([[4, 5, 0, 6]]), torch.tensor([[0.4, 0.6, 0.0, 0.0]]))
    assert padded.item() == base.item()
    empty = soft_label_kl_loss(logits, torch.zeros((0, 2), dtype=torch.long), torch.zeros((0, 1), dtype=torch.long),
                               torch.zeros((0, 1)))
    assert empty.item() == 0.0 and empty.requires_grad
