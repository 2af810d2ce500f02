"""The samples-file contract between stage 1 and stage 2: the two Parquet files, their schema, the reader.

Stage 1 (:mod:`lightreasoner.sampling`) writes ``trajectories.parquet`` (one row per problem: the prompt and the
Expert's completion) and ``samples.parquet`` (one row per kept step: its position in the completion and the
sparse soft label) with the schema here; stage 2 and the SFT baseline read them back with :func:`load_samples`
into :class:`Trajectory` objects and lay them out as training examples (packed: one sequence per trajectory;
per-step: one sequence per kept step; the kept-samples schedules of ``training.samples_per_step``).
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .errors import LightReasonerError, passthrough
from .outputs import read_input, sha256_file

TRAJECTORIES = "trajectories.parquet"
SAMPLES = "samples.parquet"
TRAJECTORY_SCHEMA = pa.schema(
    [
        ("problem_id", pa.string()),
        ("prompt_token_ids", pa.list_(pa.int32())),
        ("completion_token_ids", pa.list_(pa.int32())),
        ("num_selected", pa.int32()),
        ("step_kl", pa.list_(pa.float32())),  # extra: KL of every step, for histograms and auto beta
    ]
)
SAMPLE_SCHEMA = pa.schema(
    [
        ("problem_id", pa.string()),
        ("position", pa.int32()),
        ("kl", pa.float32()),
        ("target_token_ids", pa.list_(pa.int32())),
        ("target_weights", pa.list_(pa.float32())),
    ]
)
WEIGHT_TOLERANCE = 1e-3

_TRAJECTORY_FIELDS = ("problem_id", "prompt_token_ids", "completion_token_ids")
_SAMPLE_FIELDS = ("problem_id", "position", "target_token_ids", "target_weights")


# --- samples: reading and validating ---------------------------------------------------------------


@dataclass
class Trajectory:
    """One trajectory and its kept steps (``positions`` index the completion, sorted)."""

    problem_id: str
    prompt: list[int]
    completion: list[int]
    positions: list[int] = field(default_factory=list)
    target_ids: list[list[int]] = field(default_factory=list)
    target_weights: list[list[float]] = field(default_factory=list)


@dataclass
class Samples:
    folder: Path
    manifest: dict[str, Any]
    trajectories: list[Trajectory]  # only those with at least one kept step
    sha256: dict[str, str]

    @property
    def num_steps(self) -> int:
        return sum(len(t.positions) for t in self.trajectories)


def _read_table(path: Path, schema: pa.Schema, fields: tuple[str, ...]) -> pa.Table:
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - corrupt file -> one line
        if passthrough(exc):
            raise
        raise LightReasonerError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from exc
    missing = [name for name in fields if name not in table.column_names]
    if missing:
        raise LightReasonerError(f"{path}: schema mismatch, missing column(s) {', '.join(missing)}")
    wanted = pa.schema([schema.field(name) for name in fields])
    table = table.select(list(fields))
    for name in fields:
        have, want = table.schema.field(name).type, wanted.field(name).type
        if have != want:
            try:
                table = table.set_column(table.column_names.index(name), name, table.column(name).cast(want))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise LightReasonerError(
                    f"{path}: schema mismatch, column {name} is {have} (expected {want})"
                ) from None
    return table


def load_samples(folder: str | Path) -> Samples:
    """Read and validate a samples folder (stage 1's output contract); raises one-line errors."""
    folder = Path(folder)
    manifest = read_input(folder, "samples")
    for name in (TRAJECTORIES, SAMPLES):
        if not (folder / name).is_file():
            raise LightReasonerError(f"{folder}: missing {name} (not a finished samples folder)")
    recorded = manifest.get("sha256") or {}
    sha = {}
    for name in (TRAJECTORIES, SAMPLES):
        sha[name] = sha256_file(folder / name)
        if recorded.get(name) != sha[name]:
            raise LightReasonerError(f"{folder / name}: sha256 differs from the samples manifest (file changed)")
    traj_rows = _read_table(folder / TRAJECTORIES, TRAJECTORY_SCHEMA, _TRAJECTORY_FIELDS).to_pylist()
    sample_rows = _read_table(folder / SAMPLES, SAMPLE_SCHEMA, _SAMPLE_FIELDS).to_pylist()
    by_id: dict[str, Trajectory] = {}
    for r in traj_rows:
        if r["problem_id"] in by_id:
            raise LightReasonerError(f"{folder / TRAJECTORIES}: problem_id {r['problem_id']} appears twice")
        by_id[r["problem_id"]] = Trajectory(r["problem_id"], list(r["prompt_token_ids"] or []),
                                            list(r["completion_token_ids"] or []))
    steps: dict[str, list[tuple[int, list[int], list[float]]]] = defaultdict(list)
    where = folder / SAMPLES
    for i, r in enumerate(sample_rows):
        pid, pos = r["problem_id"], r["position"]
        traj = by_id.get(pid)
        if traj is None:
            raise LightReasonerError(f"{where}: row {i}: problem_id {pid} has no trajectory")
        ids, weights = r["target_token_ids"] or [], r["target_weights"] or []
        if pos is None or not 0 <= pos < len(traj.completion):
            raise LightReasonerError(
                f"{where}: row {i}: position {pos} outside the completion (length {len(traj.completion)})"
            )
        if len(traj.prompt) + pos < 1:
            raise LightReasonerError(f"{where}: row {i}: position 0 with an empty prompt has no logit to train")
        if not ids or len(ids) != len(weights):
            raise LightReasonerError(
                f"{where}: row {i}: {len(ids)} target ids for {len(weights)} weights (need the same, >= 1)"
            )
        if any(w is None or not math.isfinite(w) or w < 0 for w in weights):
            raise LightReasonerError(f"{where}: row {i}: target weights must be finite and >= 0")
        total = math.fsum(weights)
        if abs(total - 1.0) > WEIGHT_TOLERANCE:
            raise LightReasonerError(f"{where}: row {i}: target weights sum to {total:.6f}, not 1")
        if any(t is None or t < 0 for t in ids):
            raise LightReasonerError(f"{where}: row {i}: negative target token id")
        steps[pid].append((int(pos), [int(t) for t in ids], [float(w) for w in weights]))
    trajectories = []
    for pid, traj in by_id.items():
        for pos, ids, weights in sorted(steps.get(pid, []), key=lambda s: s[0]):
            traj.positions.append(pos)
            traj.target_ids.append(ids)
            traj.target_weights.append(weights)
        if traj.positions:
            trajectories.append(traj)
    if not trajectories:
        raise LightReasonerError(f"{where}: no kept steps, nothing to train")
    return Samples(folder, manifest, trajectories, sha)


def check_vocabulary(samples: Samples, vocab_rows: int) -> None:
    """Every input and target id must be a row of the model's embeddings / LM head."""
    for traj in samples.trajectories:
        if max(traj.prompt + traj.completion, default=0) >= vocab_rows:
            raise LightReasonerError(
                f"{samples.folder / TRAJECTORIES}: problem {traj.problem_id}: token id beyond the Expert's "
                f"vocabulary ({vocab_rows})"
            )
        if max(max(ids) for ids in traj.target_ids) >= vocab_rows:
            raise LightReasonerError(
                f"{samples.folder / SAMPLES}: problem {traj.problem_id}: target id beyond the Expert's "
                f"vocabulary ({vocab_rows})"
            )


# --- layouts --------------------------------------------------------------------------------------


def build_examples(trajectories: list[Trajectory], layout: str) -> list[dict[str, Any]]:
    """Training examples: ``input_ids``, ``logit_index`` (sequence index of each kept step's logit),
    ``target_ids`` and ``target_weights`` (one list per kept step).

    packed: one example per trajectory, cut after the token of the last kept step (later tokens cannot
    influence any trained logit). per-step: one example per kept step, ``prompt + completion[:position]``.
    """
    examples: list[dict[str, Any]] = []
    for traj in trajectories:
        p = len(traj.prompt)
        if layout == "packed":
            end = p + max(traj.positions)
            seq = (traj.prompt + traj.completion)[:end]
            examples.append({"input_ids": seq, "logit_index": [p + pos - 1 for pos in traj.positions],
                             "target_ids": traj.target_ids, "target_weights": traj.target_weights})
        elif layout == "per-step":
            for pos, ids, weights in zip(traj.positions, traj.target_ids, traj.target_weights, strict=True):
                examples.append({"input_ids": traj.prompt + traj.completion[:pos], "logit_index": [p + pos - 1],
                                 "target_ids": [ids], "target_weights": [weights]})
        else:
            raise LightReasonerError(f"training.layout {layout!r}: expected packed or per-step")
    return examples


def split_by_step(trajectories: list[Trajectory], samples_per_group: int) -> list[list[Trajectory]]:
    """The kept samples, in order (trajectory, position), cut into consecutive groups of ``samples_per_group``
    (the last may hold fewer); each group is a list of trajectory pieces holding only that group's kept
    steps, so a trajectory's kept steps may be split across groups. Layout-independent: the packed and the
    per-step layout built from the same groups train on the same samples in each group."""
    groups: list[list[Trajectory]] = []
    current: list[Trajectory] = []
    room = samples_per_group
    for traj in trajectories:
        start = 0
        while start < len(traj.positions):
            take = min(room, len(traj.positions) - start)
            end = start + take
            current.append(Trajectory(traj.problem_id, traj.prompt, traj.completion, traj.positions[start:end],
                                      traj.target_ids[start:end], traj.target_weights[start:end]))
            start, room = end, room - take
            if room == 0:
                groups.append(current)
                current, room = [], samples_per_group
    if current:
        groups.append(current)
    return groups


def build_step_examples(trajectories: list[Trajectory], layout: str, samples_per_step: int,
                        accumulation: int = 1) -> list[dict[str, Any]]:
    """Dataset items for the kept-samples schedule: one item per forward pass, ``{"group": [examples]}``
    holding ``samples_per_step / accumulation`` kept samples (see :func:`split_by_step`); with a device
    batch of one item and ``accumulation`` passes per optimizer step, each update sees ``samples_per_step``
    kept samples."""
    per_pass = max(1, samples_per_step // accumulation)
    return [{"group": build_examples(group, layout)} for group in split_by_step(trajectories, per_pass)]


def shuffled_groups(trajectories: list[Trajectory], samples_per_group: int, seed: int, epoch: int
                    ) -> list[list[Trajectory]]:
    """``training.sample_order: shuffled``: all kept samples in a random order (a permutation that is a function
    of ``seed`` and ``epoch`` alone), cut into groups of ``samples_per_group`` (the last may hold fewer), as the
    authors' shuffled DataLoader draws a batch. Within a group the samples of one trajectory form one piece
    (positions sorted), so the packed layout gives them one shared sequence; pieces follow the input order."""
    steps = [(ti, si) for ti, traj in enumerate(trajectories) for si in range(len(traj.positions))]
    digest = hashlib.sha256(f"sample-order:{seed}:{epoch}".encode()).digest()
    order = torch.randperm(len(steps), generator=torch.Generator().manual_seed(int.from_bytes(digest[:7], "little")))
    order = order.tolist()
    groups: list[list[Trajectory]] = []
    for start in range(0, len(steps), samples_per_group):
        chosen: dict[int, list[int]] = defaultdict(list)
        for ti, si in sorted(steps[i] for i in order[start : start + samples_per_group]):
            chosen[ti].append(si)
        groups.append([
            Trajectory(t.problem_id, t.prompt, t.completion, [t.positions[i] for i in idx],
                       [t.target_ids[i] for i in idx], [t.target_weights[i] for i in idx])
            for ti, idx in chosen.items() for t in (trajectories[ti],)])
    return groups


class ShuffledSteps:
    """Dataset items of the shuffled schedule: one item per forward pass, ``{"group": [examples]}`` holding
    ``samples_per_step / accumulation`` kept samples drawn by :func:`shuffled_groups` for the current epoch.
    :class:`lightreasoner.trainer.EpochOrderCallback` moves it to each epoch as the Trainer starts it (a resumed
    run too: the dataloader that skips the trained batches does not pass the epoch on), so the order is a function of ``seed`` and the epoch, never
    of how the run got there. The number of items is the same in
    every epoch."""

    def __init__(self, trajectories: list[Trajectory], layout: str, samples_per_step: int, accumulation: int,
                 seed: int):
        self.trajectories, self.layout, self.seed = trajectories, layout, seed
        self.per_pass = max(1, samples_per_step // accumulation)
        self.epoch: int | None = None
        self.items: list[dict[str, Any]] = []
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self.items = [{"group": build_examples(group, self.layout)}
                          for group in shuffled_groups(self.trajectories, self.per_pass, self.seed, epoch)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]

    def __iter__(self):
        return iter(self.items)


# --- the held-out learning signal ------------------------------------------------------------------


def split_holdout(trajectories: list[Trajectory], fraction: float, seed: int) -> tuple[list[Trajectory],
                                                                                       list[Trajectory]]:
    """(train, held out): the held-out share of problems, chosen by a seeded hash of the problem id (so the
    choice does not depend on the order of the samples); at least one problem each side when fraction > 0."""
    if fraction <= 0 or len(trajectories) < 2:
        return list(trajectories), []
    n = min(len(trajectories) - 1, max(1, round(fraction * len(trajectories))))
    ranked = sorted(trajectories, key=lambda t: hashlib.sha256(f"{seed}:{t.problem_id}".encode()).hexdigest())
    held = {t.problem_id for t in ranked[:n]}
    return [t for t in trajectories if t.problem_id not in held], [t for t in trajectories if t.problem_id in held]
