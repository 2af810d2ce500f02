"""Shared fixtures: tiny random models (2 layers, hidden 64) and a tokenizer built here, no network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

GSM8K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsm8k"
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(vocab_size: int = 320, extra_special: tuple[str, ...] = ()):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from lightreasoner.data import synthetic_problems

    corpus = [p.question + " The answer is " + p.answer for p in synthetic_problems("train", 200, seed=7)]
    corpus += ["Please reason step by step.", "system user assistant", "0 1 2 3 4 5 6 7 8 9 #### = + - * /"]
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", *extra_special]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<pad>",
                                  unk_token="<unk>", bos_token="<|im_start|>")
    tok.chat_template = CHATML
    return tok


def build_model(kind: str, tok, seed: int = 0, layers: int = 2, vocab_pad: int = 0):
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    torch.manual_seed(seed)
    common = dict(vocab_size=len(tok) + vocab_pad, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                  tie_word_embeddings=False)
    cfg = LlamaConfig(**common) if kind == "llama" else Qwen2Config(**common)
    model = AutoModelForCausalLM.from_config(cfg)
    # Sharper than the default init so greedy paths are not all near-ties.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def build_answering_model(tok, answer: str, system_prompt: str = "Please reason step by step.", seed: int = 0):
    """A tiny llama that, after any chat prompt, writes " The answer is <answer>" and stops: a controlled
    Expert that is right exactly on the problems whose gold answer is ``answer`` (so rejection sampling
    keeps something, through the real generation code). Its attention and MLP outputs are zero, so each
    next token depends on the current token alone; the chain prompt end -> answer tokens -> eos is written
    into the embeddings and the output head."""
    from lightreasoner.models import prompt_token_ids

    model = build_model("llama", tok, seed)
    start = prompt_token_ids(tok, "Q?", system_prompt)[-1]
    chain = [start, *tok(f" The answer is {answer}", add_special_tokens=False)["input_ids"], tok.eos_token_id]
    assert len(set(chain)) == len(chain), "the chain must not repeat a token"
    hidden = model.config.hidden_size
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb, head = model.model.embed_tokens.weight, model.lm_head.weight
        head.zero_()
        for i, token in enumerate(chain[:-1]):
            emb[token] = torch.zeros(hidden)
            emb[token, i] = 1.0
            head[chain[i + 1], i] = 50.0
    return model


def save_model(folder: Path, kind: str, tok, seed: int = 0, layers: int = 2, vocab_pad: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    build_model(kind, tok, seed, layers, vocab_pad).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


# The answer the "answering" Expert always gives: the most frequent gold answer of the first 16 synthetic
# training problems (2 of them), so rejection sampling on them keeps solutions.
ANSWER = "4"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Folders of tiny random models sharing one tokenizer: llama (expert), llama_small (amateur),
    qwen2 (expert), qwen2_small (amateur), answering (a controlled Expert, see
    :func:`build_answering_model`) and llama_othertok (a different tokenizer)."""
    root = tmp_path_factory.mktemp("tiny-models")
    tok = build_tokenizer()
    paths = {
        "llama": save_model(root / "llama", "llama", tok, seed=0),
        "llama_small": save_model(root / "llama_small", "llama", tok, seed=1, layers=1),
        "qwen2": save_model(root / "qwen2", "qwen2", tok, seed=2, vocab_pad=16),
        "qwen2_small": save_model(root / "qwen2_small", "qwen2", tok, seed=3, layers=1, vocab_pad=16),
    }
    answering = build_answering_model(tok, ANSWER)
    (root / "answering").mkdir()
    answering.save_pretrained(root / "answering")
    tok.save_pretrained(root / "answering")
    paths["answering"] = root / "answering"
    other = build_tokenizer(vocab_size=300, extra_special=("<extra>",))
    paths["llama_othertok"] = save_model(root / "llama_othertok", "llama", other, seed=4)
    return paths


def tiny_config(tiny_models, expert: str = "llama", amateur: str | None = "llama_small", **sets):
    """A Config on tiny models and a handful of synthetic problems (``sets``: dotted key -> value)."""
    from lightreasoner.config import load_config

    overrides = [f"expert.model={tiny_models[expert]}", "data.limit=6", "sampling.max_new_tokens=12",
                 "sampling.batch_size=4", "evaluation.max_new_tokens=12", "tracking.enabled=false"]
    if amateur is None:
        overrides += ["amateur.keep_layers=1"]
    else:
        overrides += [f"amateur.model={tiny_models[amateur]}"]
    overrides += [f"{k}={v}" for k, v in sets.items()]
    return load_config(None, overrides)


# Real S3 (moto) and MLflow servers on 127.0.0.1 (tests/servers.py); session-scoped, started on first use.
from servers import aws_env, mlflow_server, s3_server  # noqa: E402,F401,I001
