"""The SFT baseline the paper compares against: rejection sampling, then LoRA on the kept solutions.

The Expert writes ``sft.samples_per_problem`` solutions for each of the first ``sft.num_problems`` training
problems (greedy for one, else sampled at ``sft.temperature``); the solutions whose extracted answer
matches the gold answer are kept (rejection sampling) and the Expert is LoRA-tuned on them with the
settings of stage 2 (``training``).

The loss is ordinary next-token cross-entropy on the kept completion tokens, the prompt masked. It runs
through stage 2's trainer: a one-hot soft label on the true next token makes stage 2's KL term
``sum w (log w - log p)`` equal to ``-log p(token)``, so each completion token is one "kept step" and the
mean over steps is the mean token cross-entropy. ``tuned_tokens`` counts those tokens, epochs included.

Output (the names of a stage-2 output, so evaluation and the registry take it as they are):
``solutions.parquet`` (every sampled solution, with ``correct``), ``adapter/``, ``tokenizer/``,
``checkpoints/`` and ``manifest.json`` (stage ``sft``) written last.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import torch
from tqdm.auto import tqdm

from .answers import GRADED_COLUMNS, answers_match, extract_answer
from .config import Config
from .data import Problem, load_problems
from .errors import LightReasonerError
from .models import (
    auto_batch_size,
    eos_ids,
    generate_greedy,
    generation_inputs,
    load_tokenizer,
    model_fingerprint,
    prompt_token_ids,
    resolve_compile,
    resolve_device,
    trainable_expert,
)
from .outputs import (
    StageOutput,
    cut_at_stop,
    library_versions,
    plan_batches,
    sha256_file,
    write_table_atomic,
)
from .samples import Trajectory, build_examples
from .stages import STAGES
from .trainer import (
    ADAPTER,
    CHECKPOINTS,
    TOKENIZER,
    TrainResult,
    fit_lora,
    fit_summary,
    lora_model,
    save_outputs,
)

log = logging.getLogger(__name__)

SOLUTIONS = "solutions.parquet"
SOLUTION_SCHEMA = pa.schema(
    [
        ("problem_id", pa.string()),
        ("sample_index", pa.int32()),
        ("prompt_token_ids", pa.list_(pa.int32())),
        ("completion_token_ids", pa.list_(pa.int32())),
        ("text", pa.string()),
        *GRADED_COLUMNS,
        ("kept", pa.bool_()),
    ]
)


@dataclass
class Solution:
    problem_id: str
    sample_index: int
    prompt: list[int]
    completion: list[int]
    text: str
    extracted: str | None
    gold: str
    correct: bool
    kept: bool = False


SFTResult = TrainResult  # an SFT output folder is a training output folder (adapter/, tokenizer/, manifest)


# --- rejection sampling ----------------------------------------------------------------------------


@torch.inference_mode()
def sample_completions(model, tokenizer, prompts: list[list[int]], config: Config,
                       progress: bool = False) -> list[list[list[int]]]:
    """``sft.samples_per_problem`` completions per prompt (ids up to and including EOS): greedy for one,
    else sampled with ``sft.temperature`` / ``sft.top_p`` from seed ``sft.seed``."""
    from transformers import GenerationConfig

    s = config.sft
    out: list[list[list[int]]] = [[] for _ in prompts]
    compiled = resolve_compile(config.performance.compile, model.device)
    batch_size = auto_batch_size(s.batch_size, [model], max((len(p) for p in prompts), default=1) + s.max_new_tokens,
                                 fraction=config.performance.memory_fraction, rows_per_problem=s.samples_per_problem)
    batches = plan_batches([len(p) for p in prompts], batch_size)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = eos_ids(tokenizer, model)
    torch.manual_seed(s.seed)
    with tqdm(total=len(prompts), desc="SFT rejection sampling", unit="problem", disable=not progress) as bar:
        for members in batches:
            batch = [prompts[i] for i in members]
            if s.samples_per_problem == 1:
                rows, _ = generate_greedy(model, tokenizer, batch, s.max_new_tokens, compile=compiled)
                for i, row in zip(members, rows, strict=True):
                    out[i] = [row]
            else:
                ids, mask, extra = generation_inputs(model, batch, pad, s.max_new_tokens, compiled)
                gen = GenerationConfig(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=0,
                                       num_return_sequences=s.samples_per_problem, max_new_tokens=s.max_new_tokens,
                                       pad_token_id=pad, eos_token_id=stops or None, **extra)
                seqs = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen)
                rows = seqs[:, ids.shape[1] :].tolist()
                for j, i in enumerate(members):
                    k = s.samples_per_problem
                    out[i] = [cut_at_stop(r, stops) for r in rows[j * k : (j + 1) * k]]
            bar.update(len(members))
    return out


def rejection_sample(model, tokenizer, problems: list[Problem], config: Config,
                     progress: bool = False) -> list[Solution]:
    """Every sampled solution, scored against the gold answer; ``kept`` marks the ones trained on
    (correct, and with ``sft.deduplicate`` the first of identical completions of a problem)."""
    prompts = [prompt_token_ids(tokenizer, p.question, config.prompt.system_prompt, config.prompt.chat_template)
               for p in problems]
    completions = sample_completions(model, tokenizer, prompts, config, progress)
    solutions = []
    for prob, prompt, rows in zip(problems, prompts, completions, strict=True):
        seen: set[tuple[int, ...]] = set()
        for k, row in enumerate(rows):
            text = tokenizer.decode(row, skip_special_tokens=True)
            extracted = extract_answer(text)
            correct = answers_match(extracted, prob.answer)
            kept = correct and len(row) > 0 and not (config.sft.deduplicate and tuple(row) in seen)
            if kept:
                seen.add(tuple(row))
            solutions.append(Solution(prob.problem_id, k, list(prompt), list(row), text, extracted, prob.answer,
                                      correct, kept))
    return solutions


def solution_trajectories(solutions: list[Solution]) -> list[Trajectory]:
    """Kept solutions as stage-2 trajectories whose every completion token is a kept step with a one-hot
    soft label on that token (the loss becomes the next-token cross-entropy on the completion)."""
    trajectories = []
    for s in solutions:
        if not s.kept:
            continue
        n = len(s.completion)
        trajectories.append(Trajectory(f"{s.problem_id}#{s.sample_index}", s.prompt, s.completion,
                                       positions=list(range(n)), target_ids=[[t] for t in s.completion],
                                       target_weights=[[1.0] for _ in range(n)]))
    return trajectories


def write_solutions(solutions: list[Solution], path: Path) -> None:
    table = pa.Table.from_pylist(
        [{"problem_id": s.problem_id, "sample_index": s.sample_index, "prompt_token_ids": s.prompt,
          "completion_token_ids": s.completion, "text": s.text, "extracted": s.extracted, "gold": s.gold,
          "correct": s.correct, "kept": s.kept} for s in solutions],
        schema=SOLUTION_SCHEMA,
    )
    write_table_atomic(table, path)


# --- the stage -------------------------------------------------------------------------------------


def sft_problems(config: Config, problems: list[Problem] | None) -> list[Problem]:
    """The SFT baseline's own problems: the first ``sft.num_problems`` of ``data.path``/``data.split``,
    whatever ``data.limit`` (the LightReasoner problems) is; unset: the LightReasoner problems.

    ``problems`` (the prepared LightReasoner problems, themselves the first ``data.limit`` of the data set)
    are reused when they hold enough; otherwise the data set is read again with the SFT's own limit."""
    wanted = config.sft.num_problems
    if wanted is not None and (problems is None or len(problems) < wanted):
        problems = load_problems(config.data.model_copy(update={"limit": wanted}))
    problems = load_problems(config.data) if problems is None else problems
    if wanted is not None:
        problems = problems[:wanted]
    if not problems:
        raise LightReasonerError(f"{config.data.path}: no training problems for the SFT baseline (empty data set)")
    return problems


def sft(config: Config, output: str | Path, *, problems: list[Problem] | None = None,
        progress: bool = True) -> SFTResult:
    """The SFT baseline: rejection sampling by the Expert, then LoRA on the kept solutions.

    Raises a one-line error, writing nothing, when no sampled solution is correct.
    """
    from transformers import set_seed

    started = time.perf_counter()
    out = Path(output)
    output = StageOutput(out, stage="sft", what="SFT", overwrite_flag=None)
    problems = sft_problems(config, problems)
    device = resolve_device(config.expert.device)
    tokenizer = load_tokenizer(config.expert, "expert")
    model = trainable_expert(config, device)
    expert_info = model_fingerprint(config.expert, model)
    load_seconds = time.perf_counter() - started

    t0 = time.perf_counter()
    solutions = rejection_sample(model, tokenizer, problems, config, progress)
    generate_seconds = time.perf_counter() - t0
    trajectories = solution_trajectories(solutions)
    if not trajectories:
        raise LightReasonerError(
            f"{config.data.path}: rejection sampling kept no solution ({len(solutions)} sampled for "
            f"{len(problems)} problems, none correct); raise sft.samples_per_problem or sft.max_new_tokens"
        )

    set_seed(config.training.seed)
    model.train()
    model = lora_model(model, config.training)
    examples = build_examples(trajectories, "packed")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    output.claim()
    with output.discard_on_failure():  # diverged, disk full ...: the folder is left empty for the rerun
        write_solutions(solutions, out / SOLUTIONS)
        kept_problems = len({s.problem_id for s in solutions if s.kept})
        completion_tokens = sum(len(t.completion) for t in trajectories)
        log.info("SFT on %d kept solutions of %d problems (%d completion tokens)", len(trajectories),
                 kept_problems, completion_tokens)
        fit = fit_lora(config, model, examples, out, device, pad, progress=progress)
        save_outputs(model, tokenizer, out)


    solutions_sha = sha256_file(out / SOLUTIONS)
    fingerprint = hashlib.sha256(
        f"{config.fingerprint(*STAGES['sft'].sections)}:{solutions_sha}".encode()
    ).hexdigest()
    wall = time.perf_counter() - started
    manifest = {
        "stage": "sft",
        "method": "sft",
        "fingerprint": fingerprint,
        "config": config.dump(),
        "layout": "packed",
        "expert": expert_info,
        "samples": {"path": str(out / SOLUTIONS), "sha256": {SOLUTIONS: solutions_sha}, "fingerprint": None},
        "samples_sha256": solutions_sha,
        "problems_used": len(problems),
        "kept_problems": kept_problems,
        "kept_solutions": len(trajectories),
        "counts": {"problems": len(problems), "samples": len(solutions),
                   "correct": sum(s.correct for s in solutions), "kept_solutions": len(trajectories),
                   "kept_problems": kept_problems, "kept_fraction": len(trajectories) / len(solutions),
                   "completion_tokens": completion_tokens, "trajectories": len(trajectories),
                   "kept_steps": completion_tokens, "sequences_per_epoch": len(examples)},
        **fit_summary(fit),
        "generate_seconds": generate_seconds,
        "wall_seconds": wall,
        "timing": {"load_seconds": load_seconds, "generate_seconds": generate_seconds,
                   "train_seconds": fit.train_seconds, "wall_seconds": wall},
        "outputs": {"adapter": ADAPTER, "tokenizer": TOKENIZER, "merged": None, "checkpoints": CHECKPOINTS,
                    "solutions": SOLUTIONS},
        "versions": library_versions("peft"),
    }
    output.finish(manifest)
    return SFTResult(out, manifest)
