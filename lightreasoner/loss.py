"""The soft-label loss of stage 2 (and of the SFT baseline): KL(soft label || p_model) at the kept steps.

Pure tensor code, no Trainer: :func:`soft_label_kl_loss` is the loss on logits, :class:`SoftLabelCollator` pads
training examples (see :func:`lightreasoner.samples.build_examples`) into the batch it reads, and
:func:`batch_loss` is one forward pass of a model over such a batch and the loss at its kept steps.

Shapes: B rows of length L, V the vocabulary, N kept steps in the batch, K the widest soft label. The logit
that predicts completion token ``position`` sits at sequence index ``len(prompt) + position - 1``. Batches are
padded on the RIGHT: real tokens keep their unpadded indices, position ids are 0..n-1 as in an unpadded
forward, and no query row is fully masked. Only the needed positions go through the LM head
(``logits_to_keep``).
"""

from __future__ import annotations

from typing import Any

import torch


def soft_label_kl_loss(logits: torch.Tensor, positions: torch.Tensor, target_ids: torch.Tensor,
                       target_weights: torch.Tensor) -> torch.Tensor:
    """Mean over kept steps of KL(soft label || softmax(logits)).

    Args:
        logits: [B, L, V] model logits (any float dtype; computed in float32).
        positions: [N, 2] long, (row, column) in ``logits`` of the logit row of each kept step.
        target_ids: [N, K] long, the soft label's token ids; padded slots may hold any valid id.
        target_weights: [N, K] float, the soft label's weights (each row sums to 1); padded slots are 0
            and contribute nothing.
    Returns:
        A scalar: mean over the N steps of sum_k w_k (log w_k - log p(target_k)). Zero (still attached to
        the graph) when N == 0.
    """
    if positions.shape[0] == 0:
        return logits.sum() * 0.0
    rows = logits[positions[:, 0], positions[:, 1]].float()  # [N, V]
    log_p = torch.log_softmax(rows, dim=-1).gather(-1, target_ids.long())  # [N, K]
    w = target_weights.float()
    present = w > 0
    log_w = torch.log(torch.where(present, w, torch.ones_like(w)))
    terms = torch.where(present, w * (log_w - log_p), torch.zeros_like(w))
    return terms.sum(dim=-1).mean()


class SoftLabelCollator:
    """Pads examples on the right into a batch for :func:`batch_loss`.

    Batch keys: ``input_ids``/``attention_mask``/``position_ids`` [B, L]; ``logits_to_keep`` [K] (sorted
    sequence indices whose logits are needed, shared by the rows); ``positions`` [N, 2] (row, index into
    ``logits_to_keep``); ``target_ids``/``target_weights`` [N, Kmax] (zero-weight padding).
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = int(pad_token_id)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        examples = [e for item in examples for e in (item["group"] if "group" in item else [item])]
        width = max(len(e["input_ids"]) for e in examples)
        b = len(examples)
        ids = torch.full((b, width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        for row, e in enumerate(examples):
            n = len(e["input_ids"])
            ids[row, :n] = torch.tensor(e["input_ids"], dtype=torch.long)
            mask[row, :n] = 1
        position_ids = torch.arange(width, dtype=torch.long).unsqueeze(0).expand(b, width).clone()
        rows = [row for row, e in enumerate(examples) for _ in e["logit_index"]]
        cols = [c for e in examples for c in e["logit_index"]]
        keep = torch.tensor(sorted(set(cols)), dtype=torch.long)
        col_index = torch.searchsorted(keep, torch.tensor(cols, dtype=torch.long))
        targets = [t for e in examples for t in e["target_ids"]]
        weights = [w for e in examples for w in e["target_weights"]]
        k = max(len(t) for t in targets)
        target_ids = torch.zeros((len(targets), k), dtype=torch.long)
        target_weights = torch.zeros((len(targets), k), dtype=torch.float32)
        for i, (t, w) in enumerate(zip(targets, weights, strict=True)):
            target_ids[i, : len(t)] = torch.tensor(t, dtype=torch.long)
            target_weights[i, : len(w)] = torch.tensor(w, dtype=torch.float32)
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": position_ids,
            "logits_to_keep": keep,
            "positions": torch.stack([torch.tensor(rows, dtype=torch.long), col_index], dim=1),
            "target_ids": target_ids,
            "target_weights": target_weights,
        }


def batch_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """One forward pass over a collated batch and the soft-label KL at its kept steps.

    Args:
        model: a causal LM taking ``logits_to_keep``; its logits come back as [B, len(logits_to_keep), V].
        batch: a :class:`SoftLabelCollator` batch (``positions`` [N, 2] index those kept logits).
    Returns:
        A scalar, :func:`soft_label_kl_loss` of the batch.
    """
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        logits_to_keep=batch["logits_to_keep"],
        use_cache=False,
    )
    return soft_label_kl_loss(out.logits, batch["positions"], batch["target_ids"], batch["target_weights"])
