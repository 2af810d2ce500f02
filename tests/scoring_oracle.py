"""The one-pass scorer, a test oracle for :func:`lightreasoner.sampling.score_chunked`: the Expert's logits
kept from generation (or one teacher-forced pass) and the Amateur's from one teacher-forced pass, every step
contrasted in one vectorised call. Simple and memory-hungry ([B, T, V] logits), so it lives with the tests."""

from __future__ import annotations

import torch

from lightreasoner.models import ModelPair
from lightreasoner.sampling import (
    Decoding,
    Scored,
    _history,
    _pad_batch,
    contrast,
    process_scores,
    teacher_forced_logits,
)


def score_fast(pair: ModelPair, ids: list[str], prompts: list[list[int]], completions: list[list[int]],
               expert_logits: torch.Tensor | None, alpha: float, floor: float | None,
               skip_first_step: bool = False, decoding: Decoding | None = None) -> list[Scored]:
    """Contrast of a batch of trajectories: Expert logits from generation (or one teacher-forced pass
    when None), Amateur logits from one teacher-forced pass; all steps in one vectorised call.
    ``skip_first_step``: t = 0 is never a candidate; ``pair.excluded_ids`` are left out of the contrast;
    ``decoding``: the Expert side is its processed scores when the decoding processes them."""
    pad = pair.tokenizer.pad_token_id
    v = pair.vocab_size
    if expert_logits is None:
        expert_logits = teacher_forced_logits(pair.expert, prompts, completions, pad)
    amateur_logits = teacher_forced_logits(pair.amateur, prompts, completions, pad)
    lengths = torch.tensor([len(c) for c in completions], device=expert_logits.device)
    t_len = expert_logits.shape[1]
    valid = torch.arange(t_len, device=lengths.device)[None, :] < lengths[:, None]
    rows, cols = valid.nonzero(as_tuple=True)
    expert_steps = expert_logits[rows, cols]
    if decoding is not None and decoding.processed:
        batch, mask, p_len, _ = _pad_batch(prompts, completions, pad, expert_logits.device)
        expert_steps = process_scores(expert_steps, decoding, _history(batch, mask, p_len, rows, cols))
    result = contrast(expert_steps[:, :v], amateur_logits.to(expert_logits.device)[rows, cols, :v],
                      alpha, floor, candidates=cols >= (1 if skip_first_step else 0),
                      excluded_ids=getattr(pair, "excluded_ids", None))
    scored, offset = [], 0
    for pid, p, c in zip(ids, prompts, completions, strict=True):
        s = Scored(pid, p, c, result.kl[offset : offset + len(c)])
        for t in range(len(c)):
            if result.targets[offset + t] is not None:
                s.cand_position.append(t)
                s.cand_targets.append(result.targets[offset + t])
                s.cand_weights.append(result.weights[offset + t])
        scored.append(s)
        offset += len(c)
    return scored
