"""Stage 1: contrastive sampling, the core of LightReasoner.

The Expert writes a greedy trajectory for each problem. At each step t we compare the Expert's and the
Amateur's next-token distributions p_E and p_A over the full vocabulary:

* the step is kept when KL(p_E || p_A) > beta;
* its plausible set is V = {i : p_E(i) >= alpha * max p_E};
* its soft label is softmax over V of (log p_E - log p_A).

Fast mode: trajectories are generated in batches (left padding, KV cache; on CUDA a static cache and
torch.compile) without keeping any logits. The Expert and the Amateur then score the batch with ONE
teacher-forced pass each over prompt + completion, and their output layers make the logits of a chunk of
(row, step) positions at a time (``performance.score_chunk_tokens``), so memory does not grow with
batch x length x vocabulary. The contrast is computed on the device chunk by chunk; only the sparse
targets of candidate steps go to the host. Reference mode is the paper's
script: batch-1 generation and one Amateur forward per prefix (quadratic in length); it is the test oracle
and the benchmark baseline.

Decoding (``sampling.decoding``): ``greedy`` (the default) writes the argmax trajectory and contrasts the raw
distributions. ``generation-config`` follows the Expert's own generation config, as the authors' script does
(it calls ``generate()`` with the model's defaults): sampling with its temperature / top-k / top-p (and its
repetition penalty) from ``sampling.seed`` (batch i from seed + i), and the Expert side of the contrast is
the *processed* scores, the logits after those settings (what ``generate()`` returns as ``scores`` and
samples from; filtered ids have probability 0 and add nothing to the KL), while the Amateur side stays its
raw softmax, as in the authors' script. A model whose generation config does not sample (the base
Qwen2.5-Math models) is greedy in both modes. :func:`process_scores` is the vectorised processing; the
reference scorer applies transformers' own logits processors step by step (the test oracle).

Output (``keep these names``): ``trajectories.parquet``, ``samples.parquet``, ``manifest.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import Config
from .data import Problem, load_problems
from .errors import LightReasonerError
from .models import (
    ModelPair,
    auto_batch_size,
    eos_ids,
    generate_greedy,
    generation_inputs,
    load_pair,
    position_ids_from_mask,
    prompt_token_ids,
    resolve_compile,
)
from .outputs import (
    MANIFEST,  # noqa: F401 - re-exported
    StageOutput,
    cut_at_stop,
    library_versions,
    plan_batches,
    sha256_file,
    write_json_atomic,
    write_table_atomic,
)
from .samples import SAMPLE_SCHEMA, SAMPLES, TRAJECTORIES, TRAJECTORY_SCHEMA
from .stages import STAGES
from .storage import output_lock, save_progress

log = logging.getLogger(__name__)

SHARDS = "shards"
SHARD_INFO = "shard.json"

_SHARD_SCHEMA = pa.schema(
    [
        ("order", pa.int64()),
        ("problem_id", pa.string()),
        ("prompt_token_ids", pa.list_(pa.int32())),
        ("completion_token_ids", pa.list_(pa.int32())),
        ("step_kl", pa.list_(pa.float32())),
        ("cand_position", pa.list_(pa.int32())),
        ("cand_target_ids", pa.list_(pa.list_(pa.int32()))),
        ("cand_target_weights", pa.list_(pa.list_(pa.float32()))),
        ("argmax_mismatch", pa.int32()),
    ]
)


# --- the contrast, as pure functions ----------------------------------------------------------------


@dataclass
class StepContrast:
    """Contrast of N steps. ``kl``: [N]; ``targets[i]``/``weights[i]``: the plausible ids of step i and
    their soft-label weights (None for steps that were not candidates)."""

    kl: np.ndarray
    targets: list[np.ndarray | None]
    weights: list[np.ndarray | None]


def contrast(expert_logits: torch.Tensor, amateur_logits: torch.Tensor, alpha: float, floor: float | None,
             chunk: int = 512, *, candidates: torch.Tensor | None = None,
             excluded_ids: list[int] | torch.Tensor | None = None) -> StepContrast:
    """Vectorised contrast of N steps on the logits' device.

    Args:
        expert_logits: [N, V] raw Expert logits.
        amateur_logits: [N, V] raw Amateur logits, same vocabulary.
        alpha: plausibility threshold; V_t = {i : p_E(i) >= alpha * max p_E}.
        floor: steps with KL <= floor get no targets (None: every step gets them).
        candidates: [N] bool, steps that may get targets (None: all); the others still get their KL.
        excluded_ids: token ids left out of the contrast (ids the two tokenizers do not define alike):
            both distributions are taken over the other ids, and these are never plausible.
    Returns:
        kl [N] (float64 on the host) and, for candidate steps with KL > floor, the sparse soft label.
    """
    n = expert_logits.shape[0]
    kls: list[np.ndarray] = []
    targets: list[np.ndarray | None] = [None] * n
    weights: list[np.ndarray | None] = [None] * n
    log_alpha = math.log(alpha)
    out_mask = None
    if excluded_ids is not None and len(excluded_ids):
        out_mask = torch.zeros(expert_logits.shape[-1], dtype=torch.bool, device=expert_logits.device)
        out_mask[torch.as_tensor(excluded_ids, dtype=torch.long, device=expert_logits.device)] = True
    for start in range(0, n, chunk):
        e = expert_logits[start : start + chunk].float()
        a = amateur_logits[start : start + chunk].float()
        if out_mask is not None:
            e, a = e.masked_fill(out_mask, float("-inf")), a.masked_fill(out_mask, float("-inf"))
        le = F.log_softmax(e, dim=-1)
        la = F.log_softmax(a, dim=-1)
        diff = le - la
        if out_mask is not None:
            diff = diff.masked_fill(out_mask, 0.0)  # -inf - -inf: the excluded ids carry no mass
        diff = diff.masked_fill(torch.isneginf(le), 0.0)  # ids filtered out of processed scores: p_E = 0
        kl = (le.exp() * diff).sum(-1).clamp_min(0.0)
        plausible = le >= le.max(dim=-1, keepdim=True).values + log_alpha
        if out_mask is not None:
            plausible &= ~out_mask
        keep = torch.ones_like(kl, dtype=torch.bool) if floor is None else kl > floor
        if candidates is not None:
            keep &= candidates[start : start + chunk].to(keep.device)
        rows, cols = (plausible & keep[:, None]).nonzero(as_tuple=True)
        # the soft label is a softmax of log p_E - log p_A over the plausible ids only: made from those few
        # entries (on the host, in float64) rather than from a masked softmax over the whole vocabulary
        vals = diff[rows, cols]
        rows, cols, vals = rows.cpu().numpy(), cols.cpu().numpy(), vals.double().cpu().numpy()
        kls.append(kl.double().cpu().numpy())
        if len(rows):
            bounds = np.flatnonzero(np.diff(rows)) + 1
            for r_ids, c_ids, d in zip(np.split(rows, bounds), np.split(cols, bounds), np.split(vals, bounds),
                                       strict=True):
                i = start + int(r_ids[0])
                targets[i] = c_ids.astype(np.int32)
                w = np.exp(d - d.max())
                weights[i] = (w / w.sum()).astype(np.float32)
    return StepContrast(np.concatenate(kls) if kls else np.zeros(0), targets, weights)


def contrast_step_reference(expert_logits: torch.Tensor, amateur_logits: torch.Tensor, alpha: float,
                            excluded_ids: list[int] | None = None):
    """One step the straightforward way, in float64: (kl, target ids, weights). The oracle of ``contrast``.
    ``excluded_ids`` are dropped from the vocabulary before anything else."""
    keep = torch.ones(expert_logits.shape[-1], dtype=torch.bool)
    if excluded_ids is not None and len(excluded_ids):
        keep[torch.as_tensor(list(excluded_ids), dtype=torch.long)] = False
    vocab = torch.nonzero(keep).flatten()
    pe = torch.softmax(expert_logits.detach().cpu().double()[vocab], dim=-1)
    pa_ = torch.softmax(amateur_logits.detach().cpu().double()[vocab], dim=-1)
    support = pe > 0  # processed scores: filtered ids have p_E = 0 and 0 log 0 = 0
    kl = float(torch.sum(pe[support] * (torch.log(pe[support]) - torch.log(pa_[support]))))
    ids = torch.nonzero(pe >= alpha * pe.max()).flatten()
    w = torch.softmax(torch.log(pe[ids]) - torch.log(pa_[ids]), dim=0)
    return max(kl, 0.0), vocab[ids].cpu().numpy().astype(np.int32), w.cpu().numpy().astype(np.float32)


def effective_beta(beta: float | str, all_kl: np.ndarray) -> float:
    """A number stays itself; ``auto:F`` is the KL quantile that keeps the fraction F of the steps."""
    if isinstance(beta, str):
        fraction = float(beta.split(":", 1)[1])
        if len(all_kl) == 0:
            return 0.0
        return float(np.quantile(all_kl, 1.0 - fraction, method="lower")) if fraction < 1.0 else -1.0
    return float(beta)


# --- decoding: greedy, or the Expert's own generation config ----------------------------------------

# what ``generate()`` uses for a setting the model's generation config leaves unset (transformers' defaults)
_GENERATE_DEFAULTS = {"do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0}
# generation-config settings whose processing the contrast does not reproduce: (name, value meaning "off")
_NOT_REPRODUCED = (("min_p", None), ("typical_p", 1.0), ("epsilon_cutoff", 0.0), ("eta_cutoff", 0.0),
                   ("no_repeat_ngram_size", 0), ("top_h", None))


@dataclass(frozen=True)
class Decoding:
    """How the Expert writes trajectories and which Expert scores the contrast uses (see the module doc).
    greedy: argmax, raw logits. generation-config: the model's settings, resolved by :func:`resolve_decoding`."""

    mode: str = "greedy"
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0

    @property
    def processed(self) -> bool:
        """The Expert's scores are not its raw logits."""
        return self.repetition_penalty != 1.0 or (
            self.do_sample and (self.temperature != 1.0 or self.top_k > 0 or self.top_p < 1.0))

    def record(self) -> dict[str, Any]:
        """What the samples manifest records under ``decoding``."""
        return {"mode": self.mode, "do_sample": self.do_sample, "temperature": self.temperature,
                "top_k": self.top_k, "top_p": self.top_p, "repetition_penalty": self.repetition_penalty,
                "seed": self.seed, "expert_scores": "processed" if self.processed else "raw"}


def resolve_decoding(mode: str, seed: int, model) -> Decoding:
    """``sampling.decoding`` for this Expert: greedy, or the settings of ``model.generation_config`` (a setting it
    leaves unset takes ``generate()``'s default, e.g. top_k 50). A setting whose processing the contrast would
    not reproduce (min_p, typical_p, ...) is refused in one line."""
    if mode == "greedy":
        return Decoding(seed=seed)
    gen = getattr(model, "generation_config", None)

    def setting(name: str):
        value = getattr(gen, name, None)
        return _GENERATE_DEFAULTS[name] if value is None else value

    do_sample = bool(setting("do_sample"))
    if do_sample:
        odd = [f"{name}={getattr(gen, name)}" for name, off in _NOT_REPRODUCED
               if getattr(gen, name, None) not in (None, off)]
        if odd:
            raise LightReasonerError(f"sampling.decoding generation-config: the Expert's generation config sets "
                                     f"{', '.join(odd)}, which the contrast does not reproduce (use greedy)")
    temperature = float(setting("temperature")) if do_sample else 1.0
    penalty = float(setting("repetition_penalty"))
    if temperature <= 0 or penalty <= 0:
        raise LightReasonerError(f"sampling.decoding generation-config: the Expert's generation config has "
                                 f"temperature {temperature} / repetition_penalty {penalty} (must be > 0)")
    return Decoding("generation-config", do_sample, temperature, int(setting("top_k")) if do_sample else 0,
                    float(setting("top_p")) if do_sample else 1.0, penalty, seed)


def process_scores(logits: torch.Tensor, decoding: Decoding, history: torch.Tensor | None = None) -> torch.Tensor:
    """The Expert's processed scores [N, V] (float32): repetition penalty over ``history`` ([N, L] ids before
    each step, padded by repeating one of them), then, when sampling, temperature, top-k and top-p (filtered
    ids at -inf), in ``generate()``'s order. Raw logits come back unchanged (as float32) when nothing applies."""
    x = logits.float()
    if decoding.repetition_penalty != 1.0:
        if history is None:
            raise LightReasonerError("repetition_penalty: the scores need the ids before each step")
        seen = x.gather(1, history)
        penalty = decoding.repetition_penalty
        x = x.scatter(1, history, torch.where(seen < 0, seen * penalty, seen / penalty))
    if not decoding.do_sample:
        return x
    if decoding.temperature != 1.0:
        x = x / decoding.temperature
    if 0 < decoding.top_k < x.shape[-1]:
        kth = torch.topk(x, decoding.top_k, dim=-1).values[:, -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if decoding.top_p < 1.0:
        ascending, order = torch.sort(x, dim=-1)
        drop = ascending.softmax(-1).cumsum(-1) <= 1.0 - decoding.top_p  # the least likely ids up to 1 - top_p
        drop[:, -1] = False  # the most likely id always stays
        x = x.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return x


def reference_processors(decoding: Decoding):
    """transformers' own logits processors for ``decoding`` (the oracle of :func:`process_scores`)."""
    from transformers import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    steps = LogitsProcessorList()
    if decoding.repetition_penalty != 1.0:
        steps.append(RepetitionPenaltyLogitsProcessor(decoding.repetition_penalty))
    if decoding.do_sample:
        if decoding.temperature != 1.0:
            steps.append(TemperatureLogitsWarper(decoding.temperature))
        if decoding.top_k > 0:
            steps.append(TopKLogitsWarper(decoding.top_k))
        if decoding.top_p < 1.0:
            steps.append(TopPLogitsWarper(decoding.top_p))
    return steps


def _history(batch: torch.Tensor, mask: torch.Tensor, p_len: int, rows: torch.Tensor, cols: torch.Tensor
             ) -> torch.Tensor:
    """[N, L] ids before step ``cols`` of ``rows`` (the row's prompt and completion so far) in a left-padded
    [B, P+T] batch; other slots repeat the row's last prompt id (a repeated id changes no penalty)."""
    width = batch.shape[1]
    ids, real = batch[rows], mask[rows].bool()
    before = torch.arange(width, device=batch.device)[None, :] < (p_len + cols)[:, None]
    return torch.where(before & real, ids, ids[:, p_len - 1 : p_len])


@torch.inference_mode()
def generate_trajectories(model, tokenizer, prompts: list[list[int]], max_new_tokens: int,
                          decoding: Decoding | None = None, *, return_logits: bool = False, compile: bool = False):
    """The Expert's completions under ``decoding`` (greedy: :func:`~lightreasoner.models.generate_greedy`;
    generation-config: its settings, drawn from the global torch RNG, which the caller seeds). Returns
    ``(completions, raw logits [B, T, V] or None)``."""
    if decoding is None or decoding.mode == "greedy":
        return generate_greedy(model, tokenizer, prompts, max_new_tokens, return_logits=return_logits,
                               compile=compile)
    from transformers import GenerationConfig

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = sorted(set(eos_ids(tokenizer, model)))
    rows = len(prompts)
    ids, mask, extra = generation_inputs(model, prompts, pad, max_new_tokens, compile)
    settings = {"do_sample": decoding.do_sample, "repetition_penalty": decoding.repetition_penalty}
    if decoding.do_sample:  # every setting given: the model's own config cannot add to them
        settings.update(temperature=decoding.temperature, top_k=decoding.top_k, top_p=decoding.top_p)
    gen_cfg = GenerationConfig(num_beams=1, max_new_tokens=max_new_tokens, min_new_tokens=0, pad_token_id=pad,
                               eos_token_id=stops or None, output_logits=return_logits,
                               return_dict_in_generate=True, **settings, **extra)
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_cfg)
    completions = [cut_at_stop(row, set(stops)) for row in out.sequences[:rows, ids.shape[1]:].tolist()]
    logits = torch.stack(out.logits, dim=1)[:rows] if return_logits else None
    return completions, logits


def _mismatches(processed: torch.Tensor, generated: torch.Tensor, decoding: Decoding) -> torch.Tensor:
    """[N] bool: the generated token is not what the Expert's scores give: not the argmax (greedy), or an id
    the processed scores filtered out (sampling)."""
    if decoding.do_sample:
        return torch.isneginf(processed.gather(1, generated[:, None].to(processed.device))[:, 0])
    return processed.argmax(-1) != generated.to(processed.device)


# --- scoring trajectories ----------------------------------------------------------------------------


def _pad_batch(prompts: list[list[int]], completions: list[list[int]], pad_id: int, device):
    """Left-padded [B, P+T] ids where every row's prompt ends at column P (completions right-padded)."""
    p_len = max(len(p) for p in prompts)
    t_len = max(len(c) for c in completions)
    ids = torch.full((len(prompts), p_len + t_len), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        ids[row, p_len - len(p) : p_len] = torch.tensor(p, dtype=torch.long)
        ids[row, p_len : p_len + len(c)] = torch.tensor(c, dtype=torch.long)
        mask[row, p_len - len(p) : p_len + len(c)] = 1
    return ids.to(device), mask.to(device), p_len, t_len


@torch.inference_mode()
def teacher_forced_logits(model, prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> torch.Tensor:
    """[B, T, V] logits predicting each completion token, from ONE forward pass over prompt + completion."""
    ids, mask, p_len, t_len = _pad_batch(prompts, completions, pad_id, model.device)
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=position_ids_from_mask(mask),
        use_cache=False,
        logits_to_keep=t_len + 1,
    )
    return out.logits[:, :-1, :]


@torch.inference_mode()
def per_prefix_logits(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """[T, V] logits predicting each completion token, one forward per prefix (the paper's way)."""
    rows = []
    for t in range(len(completion)):
        ids = torch.tensor([prompt + completion[:t]], dtype=torch.long, device=model.device)
        rows.append(model(input_ids=ids, use_cache=False).logits[0, -1, :])
    return torch.stack(rows)


@dataclass
class Scored:
    problem_id: str
    prompt: list[int]
    completion: list[int]
    step_kl: np.ndarray
    cand_position: list[int] = field(default_factory=list)
    cand_targets: list[np.ndarray] = field(default_factory=list)
    cand_weights: list[np.ndarray] = field(default_factory=list)
    argmax_mismatch: int = 0  # steps whose teacher-forced Expert argmax is not the generated token


def _completion_hidden(model, ids: torch.Tensor, mask: torch.Tensor, p_len: int, t_len: int,
                       tap: tuple[int, Any] | None = None):
    """[B, T, H] final hidden states at the positions that predict the completion tokens: the decoder runs
    over prompt + completion once and no logits are made (the output layer runs later, chunk by chunk).

    ``tap=(k, norm)``: also return ``norm`` of the output of decoder layer k (1-based) at those positions,
    which is the final hidden state of a model made of the first k layers (a layer-truncated Amateur)."""
    ids, mask = ids.to(model.device), mask.to(model.device)
    decoder = model.get_decoder()
    tapped: list[torch.Tensor] = []
    hook = None
    if tap is not None:
        hook = decoder.layers[tap[0] - 1].register_forward_hook(
            lambda _m, _i, out: tapped.append(out[0] if isinstance(out, tuple) else out))
    try:
        out = decoder(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False)
    finally:
        if hook is not None:
            hook.remove()
    window = slice(p_len - 1, p_len + t_len - 1)
    if tap is None:
        return out.last_hidden_state[:, window]
    return out.last_hidden_state[:, window], tap[1](tapped[0][:, window])


def shared_trunk(expert, amateur) -> tuple[int, Any] | None:
    """``(k, norm)`` when the Amateur is the Expert's first k decoder layers with the Expert's final norm and
    output layer (the same tensors, as :func:`~lightreasoner.models.truncated_amateur` builds it): then one
    Expert pass yields the Amateur's hidden states too. None otherwise."""
    try:
        e_dec, a_dec = expert.get_decoder(), amateur.get_decoder()
        k = len(a_dec.layers)
        if not 1 <= k < len(e_dec.layers):
            return None
        pairs = [(a_dec.norm, e_dec.norm), (amateur.get_output_embeddings(), expert.get_output_embeddings()),
                 (a_dec.get_input_embeddings() if hasattr(a_dec, "get_input_embeddings") else a_dec.embed_tokens,
                  e_dec.get_input_embeddings() if hasattr(e_dec, "get_input_embeddings") else e_dec.embed_tokens),
                 *zip(a_dec.layers, e_dec.layers[:k], strict=True)]
    except (AttributeError, TypeError):
        return None
    for a_mod, e_mod in pairs:
        a_params, e_params = list(a_mod.parameters()), list(e_mod.parameters())
        if len(a_params) != len(e_params) or any(
                x.data_ptr() != y.data_ptr() or x.shape != y.shape for x, y in zip(a_params, e_params, strict=True)):
            return None
    return k, a_dec.norm


@dataclass
class StepHidden:
    """Hidden states kept while a model generates: per forward pass, the final hidden state at the last
    position (what the output layer turns into that step's logits) and, with a tap, the output of one
    decoder layer there. ``hidden()`` stacks them to [B, steps, H]."""

    finals: list[torch.Tensor] = field(default_factory=list)
    tapped: list[torch.Tensor] = field(default_factory=list)

    def hidden(self, tap_norm=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.finals:
            raise LightReasonerError("no generation steps were captured")
        final = torch.stack(self.finals, dim=1)
        tapped = tap_norm(torch.stack(self.tapped, dim=1)) if self.tapped else None
        return final, tapped


def _last_position(tensor: torch.Tensor) -> torch.Tensor:
    return tensor[:, -1].detach().clone()  # a copy: a view would keep the whole prefill activation alive


@contextmanager
def capture_step_hidden(model, tap_layer: int | None = None) -> Iterator[StepHidden]:
    """While the block runs ``model.generate`` (eager, not compiled: hooks do not run inside CUDA graphs),
    keep each step's final hidden state ([B, H], the output layer's input) and, with ``tap_layer`` k,
    the output of decoder layer k at the same position. Memory: B x steps x H per kept state."""
    record = StepHidden()
    hooks = [model.get_output_embeddings().register_forward_pre_hook(
        lambda _m, args: record.finals.append(_last_position(args[0])))]
    if tap_layer is not None:
        layer = model.get_decoder().layers[tap_layer - 1]
        hooks.append(layer.register_forward_hook(
            lambda _m, _i, out: record.tapped.append(_last_position(out[0] if isinstance(out, tuple) else out))))
    try:
        yield record
    finally:
        for hook in hooks:
            hook.remove()


def generate_for_scoring(pair: ModelPair, prompts: list[list[int]], max_new_tokens: int, *, compile: bool = False,
                         capture: bool = True, decoding: Decoding | None = None):
    """The Expert's greedy completions and, when ``capture`` (and not ``compile``), the hidden states that
    :func:`score_chunked` needs, kept during generation: the Expert's final ones and, for a layer-truncated
    Amateur (:func:`shared_trunk`), its own (the Expert's layer k output through the shared final norm).
    Returns ``(completions, hidden)``; hidden is None when not captured (the scorer then runs its
    teacher-forced pass). ``decoding``: how the Expert writes (greedy when None)."""
    if compile or not capture:
        completions, _ = generate_trajectories(pair.expert, pair.tokenizer, prompts, max_new_tokens, decoding,
                                               compile=compile)
        return completions, None
    trunk = shared_trunk(pair.expert, pair.amateur)
    with capture_step_hidden(pair.expert, trunk[0] if trunk else None) as record:
        completions, _ = generate_trajectories(pair.expert, pair.tokenizer, prompts, max_new_tokens, decoding)
    if not any(completions):
        return completions, None
    return completions, record.hidden(trunk[1] if trunk else None)


def _head_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """Logits of ``hidden`` [N, H] through the model's output layer (with its soft cap, where it has one)."""
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


@torch.inference_mode()
def score_chunked(pair: ModelPair, ids: list[str], prompts: list[list[int]], completions: list[list[int]],
                  alpha: float, floor: float | None, chunk_tokens: int = 512,
                  skip_first_step: bool = False,
                  hidden: tuple[torch.Tensor, torch.Tensor | None] | None = None,
                  decoding: Decoding | None = None) -> list[Scored]:
    """Contrast of a batch of trajectories with memory independent of batch x length x vocabulary.

    The Expert's and the Amateur's decoders each run ONE teacher-forced pass over prompt + completion (a
    layer-truncated Amateur needs none of its own: see :func:`shared_trunk`);
    the output layers then make the logits of at most ``chunk_tokens`` (row, step) positions at a time
    (a chunk may be part of one row) and :func:`contrast` reduces each chunk on the device before the
    next is made. Each row also counts the steps whose teacher-forced Expert argmax differs from the
    generated token (numerical near-ties between generation and the teacher-forced pass).
    ``skip_first_step``: t = 0 is never a candidate; ``pair.excluded_ids`` are left out of the contrast.

    ``hidden``: the hidden states kept during generation (:func:`generate_for_scoring`), [B, steps, H]
    for the Expert and, for a layer-truncated Amateur, for the Amateur (None: the Amateur runs its own
    teacher-forced pass). The Expert then needs no second pass at all: its logits are remade from the
    states that made the generated tokens (so its argmax mismatches are 0 unless generation was altered).

    ``decoding``: when it processes the Expert's scores (generation-config), each chunk's Expert logits go
    through :func:`process_scores` before the contrast, and a mismatch is a generated token those scores rule
    out (sampling) or do not rank first (greedy with a repetition penalty).
    """
    decoding = decoding or Decoding()
    pad = pair.tokenizer.pad_token_id
    v = pair.vocab_size
    batch, mask, p_len, t_len = _pad_batch(prompts, completions, pad, pair.expert.device)
    if hidden is not None:
        hidden_e, hidden_a = hidden[0][:, :t_len], hidden[1]
        if hidden_e.shape[:2] != (len(completions), t_len):
            raise LightReasonerError(f"scoring: kept hidden states {tuple(hidden_e.shape)} do not cover "
                                     f"{len(completions)} completions of up to {t_len} tokens")
        if hidden_a is not None:
            hidden_a = hidden_a[:, :t_len]
        else:
            hidden_a = _completion_hidden(pair.amateur, batch, mask, p_len, t_len)
    else:
        trunk = shared_trunk(pair.expert, pair.amateur)
        if trunk is not None:  # a layer-truncated Amateur: its hidden states come out of the Expert's pass
            hidden_e, hidden_a = _completion_hidden(pair.expert, batch, mask, p_len, t_len, trunk)
        else:
            hidden_e = _completion_hidden(pair.expert, batch, mask, p_len, t_len)
            hidden_a = _completion_hidden(pair.amateur, batch, mask, p_len, t_len)
    lengths = torch.tensor([len(c) for c in completions], device=hidden_e.device)
    valid = torch.arange(t_len, device=lengths.device)[None, :] < lengths[:, None]
    rows, cols = valid.nonzero(as_tuple=True)  # row-major: the steps of row 0, then row 1, ...
    generated = batch[rows, p_len + cols]
    kls: list[np.ndarray] = []
    targets: list[np.ndarray | None] = []
    weights: list[np.ndarray | None] = []
    mismatch = torch.zeros(len(completions), dtype=torch.long, device=hidden_e.device)
    for start in range(0, len(rows), chunk_tokens):
        r, c = rows[start : start + chunk_tokens], cols[start : start + chunk_tokens]
        expert_logits = _head_logits(pair.expert, hidden_e[r, c])
        if decoding.processed:
            expert_logits = process_scores(expert_logits, decoding, _history(batch, mask, p_len, r, c))
        mismatch.index_add_(0, r, _mismatches(expert_logits, generated[start : start + chunk_tokens], decoding).long())
        amateur_logits = _head_logits(pair.amateur, hidden_a[r.to(hidden_a.device), c.to(hidden_a.device)])
        part = contrast(expert_logits[:, :v], amateur_logits.to(expert_logits.device)[:, :v], alpha, floor,
                        chunk=chunk_tokens, candidates=c >= (1 if skip_first_step else 0),
                        excluded_ids=getattr(pair, "excluded_ids", None))
        del expert_logits, amateur_logits
        kls.append(part.kl)
        targets += part.targets
        weights += part.weights
    kl = np.concatenate(kls) if kls else np.zeros(0)
    mismatches = mismatch.cpu().tolist()
    scored, offset = [], 0
    for row, (pid, p, c) in enumerate(zip(ids, prompts, completions, strict=True)):
        s = Scored(pid, p, c, kl[offset : offset + len(c)], argmax_mismatch=int(mismatches[row]))
        for t in range(len(c)):
            if targets[offset + t] is not None:
                s.cand_position.append(t)
                s.cand_targets.append(targets[offset + t])
                s.cand_weights.append(weights[offset + t])
        scored.append(s)
        offset += len(c)
    return scored


def score_reference(pair: ModelPair, pid: str, prompt: list[int], completion: list[int],
                    expert_logits: torch.Tensor | None, alpha: float, floor: float | None,
                    skip_first_step: bool = False, decoding: Decoding | None = None) -> Scored:
    """The paper's way: Amateur (and, without generation logits, Expert) run once per prefix; each step's
    contrast computed on its own in float64 (candidates from t = 1 with ``skip_first_step``).
    ``decoding``: the Expert's logits of step t go through transformers' own logits processors given
    ``prompt + completion[:t]``, as ``generate()`` processes them (:func:`reference_processors`)."""
    v = pair.vocab_size
    decoding = decoding or Decoding()
    if expert_logits is None:
        expert_logits = per_prefix_logits(pair.expert, prompt, completion)
    amateur_logits = per_prefix_logits(pair.amateur, prompt, completion)
    expert_logits = expert_logits[: len(completion)]
    if decoding.processed:
        steps = reference_processors(decoding)
        expert_logits = torch.stack([
            steps(torch.tensor([prompt + completion[:t]], device=expert_logits.device),
                  expert_logits[t : t + 1].float())[0]
            for t in range(len(completion))]) if completion else expert_logits
    s = Scored(pid, prompt, completion, np.zeros(len(completion)))
    s.argmax_mismatch = int(_mismatches(expert_logits.cpu(), torch.tensor(completion, dtype=torch.long),
                                        decoding).sum()) if completion else 0
    for t in range(len(completion)):
        kl, ids, w = contrast_step_reference(expert_logits[t, :v], amateur_logits[t, :v], alpha,
                                             getattr(pair, "excluded_ids", None))
        s.step_kl[t] = kl
        if (floor is None or kl > floor) and not (skip_first_step and t == 0):
            s.cand_position.append(t)
            s.cand_targets.append(ids)
            s.cand_weights.append(w)
    return s


# --- the stage -------------------------------------------------------------------------------------


def sampling_fingerprint(config: Config, reference: bool) -> str:
    digest = config.fingerprint(*STAGES["sample"].sections)
    return hashlib.sha256(f"{digest}:{'reference' if reference else 'fast'}".encode()).hexdigest()


def _shard_table(batch: list[tuple[int, Scored]]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "order": order,
                "problem_id": s.problem_id,
                "prompt_token_ids": s.prompt,
                "completion_token_ids": s.completion,
                "step_kl": s.step_kl.astype(np.float32).tolist(),
                "cand_position": s.cand_position,
                "cand_target_ids": [t.tolist() for t in s.cand_targets],
                "cand_target_weights": [w.tolist() for w in s.cand_weights],
                "argmax_mismatch": s.argmax_mismatch,
            }
            for order, s in batch
        ],
        schema=_SHARD_SCHEMA,
    )


@dataclass
class SampleResult:
    output: Path
    manifest: dict[str, Any]


STATE = f"{SHARDS}/state.json"  # the job's fingerprint while it runs (outputs.prepare_output)


def _output(out: Path, fingerprint: str, overwrite: bool) -> StageOutput:
    """The samples folder (:class:`lightreasoner.outputs.StageOutput`): work in progress of the same config
    always resumes; a run killed before its first batch left nothing worth keeping."""
    return StageOutput(out, stage="sample", what="samples", fingerprint=fingerprint, state=STATE, resume=True,
                       overwrite=overwrite, has_work=lambda o: any((o / SHARDS).glob("batch-*.parquet")))


def _claim(output: StageOutput) -> None:
    """Take the output folder once every input check passed: a refused run leaves nothing behind."""
    output.claim()
    save_progress(output.out / STATE)  # s3:// outputs: kept under the prefix too


def _batch_ok(path: Path, rows: int) -> bool:
    """A finished batch file: readable Parquet with one row per problem (a damaged one is recomputed)."""
    try:
        return pq.read_table(path).num_rows == rows
    except Exception:  # noqa: BLE001 - any read failure means the file must be made again
        return False


def _batch_size(config: Config, out: Path, pair: ModelPair, prompts: list[list[int]],
                processed: bool = False) -> int:
    """``sampling.batch_size``, with ``auto`` resolved once per output folder (kept in ``shards/plan.json``)
    so that a resumed run plans the same batches. ``processed``: the scorer also processes the Expert's
    scores (a sort of each chunk for top-p: about 6 more chunk x vocabulary float32 copies)."""
    spec = config.sampling.batch_size
    if spec != "auto":
        return int(spec)
    plan = out / SHARDS / "plan.json"
    if plan.is_file():
        return int(json.loads(plan.read_text())["batch_size"])
    perf = config.performance
    width = max((len(p) for p in prompts), default=1) + config.sampling.max_new_tokens
    reserve = (12 if processed else 6) * perf.score_chunk_tokens * pair.vocab_size * 4
    size = auto_batch_size("auto", [pair.expert, pair.amateur], width, reserve_bytes=reserve,
                           fraction=perf.memory_fraction)
    write_json_atomic({"batch_size": size}, plan)
    save_progress(plan)
    return size


def sample(config: Config, output: str | Path, *, reference: bool = False, overwrite: bool = False,
           problems: list[Problem] | None = None, pair: ModelPair | None = None,
           progress: bool = True, shard: tuple[int, int] | None = None) -> SampleResult:
    """Stage 1. Writes trajectories, samples and the manifest (last) to ``output``; resumable per batch.

    ``shard=(i, n)`` runs only every n-th batch of the global batch plan, starting at batch i, and
    writes the batch files and ``shard.json`` (no manifest); :func:`merge_shards` joins the n shard
    folders. Batches are the same as in a single run, so the merged output equals a single run's.
    """
    out = Path(output)
    if shard is not None and not 0 <= shard[0] < shard[1]:
        raise LightReasonerError(f"shard {shard[0]} of {shard[1]}: index must be in [0, {shard[1]})")
    with output_lock(out):
        return _sample(config, out, reference, overwrite, problems, pair, progress, shard)


def _sample(config: Config, out: Path, reference: bool, overwrite: bool, problems: list[Problem] | None,
            pair: ModelPair | None, progress: bool, shard: tuple[int, int] | None) -> SampleResult:
    if shard is not None and config.sampling.batch_size == "auto" and not reference:
        raise LightReasonerError("sampling.batch_size auto: set a number for a sharded run (every shard must "
                                 "plan the same batches)")
    fingerprint = sampling_fingerprint(config, reference)
    output = _output(out, fingerprint, overwrite)
    if output.finished is not None:
        log.info("%s: samples for this config are already complete", out)
        return SampleResult(out, output.finished)
    scfg = config.sampling
    problems = problems if problems is not None else load_problems(config.data)
    pair = pair or load_pair(config)
    tok = pair.tokenizer
    prompts = [prompt_token_ids(tok, p.question, config.prompt.system_prompt, config.prompt.chat_template)
               for p in problems]
    _claim(output)
    floor = None if isinstance(scfg.beta, str) else float(scfg.beta)
    compiled = resolve_compile(config.performance.compile, pair.expert.device)
    decoding = resolve_decoding(scfg.decoding, scfg.seed, pair.expert)
    batch_size = 1 if reference else _batch_size(config, out, pair, prompts, decoding.processed)
    batches = plan_batches([len(p) for p in prompts], batch_size, scfg.sort_by_length and not reference)
    started = time.perf_counter()
    bar = tqdm(total=len(problems), desc="contrastive sampling", unit="problem", disable=not progress)
    if shard is not None:
        batches = [(i, m) for i, m in enumerate(batches) if i % shard[1] == shard[0]]
        bar.total = sum(len(m) for _, m in batches)
    else:
        batches = list(enumerate(batches))
    try:  # the bar is closed before an error is printed (a full disk), not at exit after it
        for index, members in batches:
            shard_file = out / SHARDS / f"batch-{index:05d}.parquet"
            if shard_file.is_file():
                if _batch_ok(shard_file, len(members)):
                    bar.update(len(members))
                    continue
                log.warning("%s: damaged batch file, computing it again", shard_file)
                shard_file.unlink()
            batch_prompts = [prompts[i] for i in members]
            ids = [problems[i].problem_id for i in members]
            if decoding.do_sample:  # each batch draws from its own seed: a resumed or sharded run draws the same
                torch.manual_seed(decoding.seed + index)
            if reference:
                completions, logits = generate_trajectories(pair.expert, tok, batch_prompts, scfg.max_new_tokens,
                                                            decoding, return_logits=True)
                scored = [score_reference(pair, ids[0], batch_prompts[0], completions[0], logits[0], scfg.alpha, floor,
                                          scfg.skip_first_step, decoding)]
                del logits
            else:
                completions, hidden = generate_for_scoring(pair, batch_prompts, scfg.max_new_tokens,
                                                           compile=compiled,
                                                           capture=config.performance.score_from_generation,
                                                           decoding=decoding)
                scored = score_chunked(pair, ids, batch_prompts, completions, scfg.alpha, floor,
                                       config.performance.score_chunk_tokens, scfg.skip_first_step, hidden=hidden,
                                       decoding=decoding)
                del hidden
            write_table_atomic(_shard_table(list(zip(members, scored, strict=True))), shard_file)
            save_progress(shard_file)  # s3:// outputs: another machine resumes from here
            bar.update(len(members))
    finally:
        bar.close()
    elapsed = time.perf_counter() - started
    models_info = {"expert": pair.expert_info, "amateur": pair.amateur_info, "vocab_size": pair.vocab_size,
                   "excluded_token_ids": list(getattr(pair, "excluded_ids", []) or [])}
    if shard is not None:
        info = {"stage": "sample-shard", "fingerprint": fingerprint, "shard": list(shard),
                "num_batches": len(plan_batches([len(p) for p in prompts], batch_size, False)),
                "batches": [i for i, _ in batches], "models": models_info, "reference": reference,
                "decoding": decoding.record(),
                "config": config.dump(), "sampling_seconds": elapsed}
        write_json_atomic(info, out / SHARD_INFO)
        return SampleResult(out, info)
    manifest = finalize(output, config, models_info, fingerprint, reference, elapsed, len(problems),
                        batch_size=batch_size, decoding=decoding.record())
    return SampleResult(out, manifest)


def merge_shards(config: Config, shard_dirs: list[str | Path], output: str | Path,
                 overwrite: bool = False) -> SampleResult:
    """Join the folders of a sharded run into one samples folder (equal to a single-shard run's)."""
    out = Path(output)
    infos = []
    for folder in shard_dirs:
        path = Path(folder) / SHARD_INFO
        if not path.is_file():
            raise LightReasonerError(f"{folder}: missing {SHARD_INFO} (not a finished sampling shard)")
        infos.append(json.loads(path.read_text()))
    fingerprints = {i["fingerprint"] for i in infos}
    if len(fingerprints) != 1:
        raise LightReasonerError(f"{output}: the shards were sampled with different configs")
    fingerprint = fingerprints.pop()
    expected = infos[0]["num_batches"]
    seen = sorted(b for i in infos for b in i["batches"])
    if seen != list(range(expected)):
        raise LightReasonerError(f"{output}: shards cover batches {seen}, expected 0..{expected - 1} once each")
    output = _output(out, fingerprint, overwrite)
    if output.finished is not None:
        return SampleResult(out, output.finished)
    _claim(output)
    for folder in shard_dirs:
        for batch in sorted((Path(folder) / SHARDS).glob("batch-*.parquet")):
            shutil.copyfile(batch, out / SHARDS / batch.name)
    elapsed = max(i["sampling_seconds"] for i in infos)
    num_problems = sum(pq.read_metadata(b).num_rows for b in (out / SHARDS).glob("batch-*.parquet"))
    manifest = finalize(output, config, infos[0]["models"], fingerprint, infos[0]["reference"], elapsed, num_problems,
                        decoding=infos[0].get("decoding"), extra={"shards": len(infos)})
    return SampleResult(out, manifest)


def finalize(output: StageOutput, config: Config, models_info: dict[str, Any], fingerprint: str, reference: bool,
             elapsed: float, num_problems: int, batch_size: int | None = None,
             decoding: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge the batch files into the output contract; the manifest is written last (then the batch files
    are removed). ``batch_size``: the one used (``sampling.batch_size`` auto resolved), recorded under
    ``timing``; ``decoding``: the resolved :class:`Decoding` (its record), under ``decoding``; ``extra``:
    more manifest fields (a merge's ``shards``)."""
    out = output.out
    shards = sorted((out / SHARDS).glob("batch-*.parquet"))
    table = pa.concat_tables([pq.read_table(s) for s in shards], promote_options="default").sort_by("order")
    rows = table.to_pylist()
    first = 1 if config.sampling.skip_first_step else 0  # candidate steps only (t = 0 never is, when skipped)
    all_kl = (np.concatenate([np.asarray(r["step_kl"][first:], dtype=np.float64) for r in rows])
              if rows else np.zeros(0))
    mismatches = sum(int(r.get("argmax_mismatch") or 0) for r in rows)
    beta = effective_beta(config.sampling.beta, all_kl.astype(np.float32))
    samples, trajectories = [], []
    for r in rows:
        kl = r["step_kl"]
        kept = 0
        for pos, ids, w in zip(r["cand_position"], r["cand_target_ids"], r["cand_target_weights"], strict=True):
            if kl[pos] > beta:
                samples.append({"problem_id": r["problem_id"], "position": pos, "kl": kl[pos],
                                "target_token_ids": ids, "target_weights": w})
                kept += 1
        trajectories.append({"problem_id": r["problem_id"], "prompt_token_ids": r["prompt_token_ids"],
                             "completion_token_ids": r["completion_token_ids"], "num_selected": kept,
                             "step_kl": kl})
    traj_path, samples_path = out / TRAJECTORIES, out / SAMPLES
    write_table_atomic(pa.Table.from_pylist(trajectories, schema=TRAJECTORY_SCHEMA), traj_path)
    write_table_atomic(pa.Table.from_pylist(samples, schema=SAMPLE_SCHEMA), samples_path)
    steps = int(len(all_kl))
    manifest = {
        "stage": "sample",
        "fingerprint": fingerprint,
        "mode": "reference" if reference else "fast",
        "config": config.dump(),
        "effective_beta": beta,
        "decoding": decoding or Decoding(seed=config.sampling.seed).record(),
        "models": models_info,
        "versions": library_versions(),
        "counts": {
            "problems": len(trajectories),
            "steps": steps,
            "selected": len(samples),
            "kept_fraction": (len(samples) / steps) if steps else 0.0,
            "mean_kl": float(all_kl.mean()) if steps else 0.0,
            "median_kl": float(np.median(all_kl)) if steps else 0.0,
            # steps whose teacher-forced Expert argmax is not the generated token (near-ties; 0 means the
            # trajectories are exactly the Expert's greedy ones under the scoring pass); when sampling: generated
            # tokens that the processed scores rule out
            "argmax_mismatch_steps": mismatches,
        },
        "timing": {"sampling_seconds": elapsed, "problems_per_second": num_problems / elapsed if elapsed else 0.0,
                   **({"batch_size": batch_size} if batch_size is not None else {})},
        "sha256": {TRAJECTORIES: sha256_file(traj_path), SAMPLES: sha256_file(samples_path)},
        **(extra or {}),
    }
    output.finish(manifest)
    shutil.rmtree(out / SHARDS, ignore_errors=True)
    return manifest
