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
    # A literal prompt with ``{input}`` (the toolkit's), given to every model instead of its own chat template.
    prompt_template: str = ""
    # The output is cut before the first of these (the toolkit's stop words: end tokens that are plain text
    # for a tokenizer without them as single tokens, e.g. DeepSeek-R1-Distill's).
    stop_strings: tuple[str, ...] = ()
    grader: str = "toolkit"  # lightreasoner.answers.GRADERS: how answers are extracted and graded (in the hash)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stop_tokens"] = list(self.stop_tokens)
        data["stop_strings"] = list(self.stop_strings)
        data["sha256"] = hashlib.sha256(json.dumps(asdict(self), sort_keys=True, default=list).encode()).hexdigest()
        return data


# The Qwen2.5-Math evaluation toolkit's zero-shot CoT prompt (the paper's numbers): greedy, 2,048 new tokens,
# graded by the toolkit's rules (lightreasoner.toolkit_grader).
QWEN25_MATH_COT = "qwen25-math-cot"
QWEN25_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
# The toolkit's ``qwen25-math-cot`` prompt, literally (its PROMPT_TEMPLATES): the same ChatML string for every
# model it evaluates, DeepSeek-R1-Distill included, whatever that model's own chat template says.
QWEN25_MATH_COT_TEMPLATE = (
    f"<|im_start|>system\n{QWEN25_SYSTEM}<|im_end|>\n<|im_start|>user\n{{input}}<|im_end|>\n<|im_start|>assistant\n"
)
# The toolkit's stop words under this prompt (besides the model's eos).
TOOLKIT_STOPS = ("</s>", "<|im_end|>", "<|endoftext|>")
# Chat-template end tokens: Qwen's (ChatML), Llama 3's, Gemma's, Phi's.
END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "<|end|>")
SAMPLING_PROMPT = "sampling-prompt"
# Each protocol's own new-token budget: what a full answer under it needs (evaluation.max_new_tokens overrides
# it for an evaluation; the registered model serves at least this much, see full_answer_tokens).
BUDGETS = {QWEN25_MATH_COT: 2048, SAMPLING_PROMPT: 512}


def full_answer_tokens(protocol: str | None) -> int:
    """The new-token budget a full answer needs under ``protocol`` (the sampling prompt's for unknown names)."""
    return BUDGETS.get(protocol or "", BUDGETS[SAMPLING_PROMPT])


def resolve_protocol(config: Config) -> Protocol:
    """The protocol ``evaluation.protocol`` names, with ``evaluation.max_new_tokens`` when set."""
    ecfg = config.evaluation
    if ecfg.protocol == QWEN25_MATH_COT:
        return Protocol(QWEN25_MATH_COT, QWEN25_SYSTEM, True, ecfg.max_new_tokens or BUDGETS[QWEN25_MATH_COT],
                        TOOLKIT_STOPS, QWEN25_MATH_COT_TEMPLATE, TOOLKIT_STOPS)
    return Protocol(SAMPLING_PROMPT, config.prompt.system_prompt, config.prompt.chat_template,
                    ecfg.max_new_tokens or BUDGETS[SAMPLING_PROMPT], (), grader="math-verify")


def stop_token_ids(tokenizer, protocol: Protocol) -> list[int]:
    """Ids of the protocol's end tokens that are single tokens of this tokenizer (the model's eos is added by
    the generator)."""
    ids = set()
    vocab = tokenizer.get_vocab()
    for token in protocol.stop_tokens:
        if token in vocab:
            ids.add(int(vocab[token]))
    return sorted(ids)


def text_stops(tokenizer, protocol: Protocol) -> tuple[str, ...]:
    """The protocol's stop strings this tokenizer has no single token for (DeepSeek-R1-Distill's
    ``<|im_end|>``): generation watches the text for these; the others already stop it as token ids."""
    vocab = tokenizer.get_vocab()
    return tuple(s for s in protocol.stop_strings if s not in vocab)


def prompt_ids(tokenizer, question: str, protocol: Protocol) -> list[int]:
    """Token ids of one problem's prompt under the protocol: its literal template when it has one (tokenized
    as a plain string, with the tokenizer's usual special tokens such as a BOS, as the toolkit's vLLM does),
    else the model's chat template with the protocol's system prompt (:func:`lightreasoner.models.prompt_token_ids`)."""
    if protocol.prompt_template:
        text = protocol.prompt_template.replace("{input}", question)
        return [int(i) for i in tokenizer(text, add_special_tokens=True)["input_ids"]]
    from .models import prompt_token_ids

    return prompt_token_ids(tokenizer, question, protocol.system_prompt, protocol.chat_template)


def cut_output(text: str, protocol: Protocol) -> str:
    """The decoded output up to the first of the protocol's stop strings (the whole text when none)."""
    cut = min((i for i in (text.find(s) for s in protocol.stop_strings) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]
