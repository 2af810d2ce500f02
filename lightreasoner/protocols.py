"""Evaluation protocols: how the Expert is asked and when it stops (``evaluation.protocol``).

Base-model accuracy depends on the prompt, the generation length, the stop tokens and the grader, so two
evaluations are comparable only under the same protocol; its settings are recorded with every evaluation (``protocol`` in
``metrics.json``) and the registry refuses to pair runs of different protocols.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from .config import Config


@dataclass(frozen=True)
class Protocol:
    name: str
    system_prompt: str
    chat_template: bool
    max_new_tokens: int
    stop_tokens: tuple[str, ...]  # chat-template end tokens, besides the model's eos (those the tokenizer has)
    grader: str = "toolkit"  # lightreasoner.answers.GRADERS: how answers are extracted and graded (in the hash)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stop_tokens"] = list(self.stop_tokens)
        data["sha256"] = hashlib.sha256(json.dumps(asdict(self), sort_keys=True, default=list).encode()).hexdigest()
        return data


# The Qwen2.5-Math evaluation toolkit's zero-shot CoT prompt (the paper's numbers): greedy, 2,048 new tokens,
# graded by the toolkit's rules (lightreasoner.toolkit_grader).
QWEN25_MATH_COT = "qwen25-math-cot"
QWEN25_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
# Chat-template end tokens: Qwen's (ChatML), Llama 3's, Gemma's, Phi's.
END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "<|end|>")
SAMPLING_PROMPT = "sampling-prompt"


def resolve_protocol(config: Config) -> Protocol:
    """The protocol ``evaluation.protocol`` names, with ``evaluation.max_new_tokens`` when set."""
    ecfg = config.evaluation
    if ecfg.protocol == QWEN25_MATH_COT:
        return Protocol(QWEN25_MATH_COT, QWEN25_SYSTEM, True, ecfg.max_new_tokens or 2048, END_TOKENS)
    return Protocol(SAMPLING_PROMPT, config.prompt.system_prompt, config.prompt.chat_template,
                    ecfg.max_new_tokens or 512, (), grader="math-verify")


def stop_token_ids(tokenizer, protocol: Protocol) -> list[int]:
    """Ids of the protocol's end tokens that are single tokens of this tokenizer (the model's eos is added by
    the generator)."""
    ids = set()
    vocab = tokenizer.get_vocab()
    for token in protocol.stop_tokens:
        if token in vocab:
            ids.add(int(vocab[token]))
    return sorted(ids)
