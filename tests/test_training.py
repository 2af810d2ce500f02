"""Stage 2: the soft-label loss, packed vs per-step equivalence, LoRA training, resume, bad input."""

from __future__ import annotations

import ast
import json
import math
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import tiny_config

import lightreasoner
from lightreasoner.cli import main
from lightreasoner.errors import LightReasonerError
from lightreasoner.loss import SoftLabelCollator, batch_loss
from lightreasoner.models import load_model
from lightreasoner.samples import build_examples, load_samples, shuffled_groups, split_by_step, split_holdout
from lightreasoner.sampling import MANIFEST, SAMPLES, TRAJECTORIES, sample, sha256_file
from lightreasoner.trainer import COMPLETE, TrainingCounters
from lightreasoner.training import lora_model, soft_label_kl, train

BETA = {"sampling.beta": "auto:0.5"}  # tiny random models: keep half of the steps whatever their KL


def train_config(tiny_models, expert: str = "llama", **sets):
    return tiny_config(tiny_models, expert=expert, **{**BETA, "training.lora_dropout": 0.0, **sets})


@pytest.fixture(scope="module")
def samples_dir(tiny_models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train-samples") / "samples"
    sample(tiny_config(tiny_models, **BETA), out, progress=False)
    return out


def rewrite_samples(src: Path, dst: Path, mutate) -> Path:
    """A copy of ``src`` whose samples table is ``mutate(rows)`` (schema may change); sha256 kept valid."""
    shutil.copytree(src, dst)
    table = pq.read_table(dst / SAMPLES)
    new = mutate(table)
    pq.write_table(new, dst / SAMPLES)
    manifest = json.loads((dst / MANIFEST).read_text())
    manifest["sha256"][SAMPLES] = sha256_file(dst / SAMPLES)
    (dst / MANIFEST).write_text(json.dumps(manifest))
    return dst


def lora_grads(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for n, p in model.named_parameters() if p.requires_grad])


def test_collator_packed_indices(samples_dir):
    trajectories = load_samples(samples_dir).trajectories
    examples = build_examples(trajectories, "packed")
    batch = SoftLabelCollator(pad_token_id=0)(examples)
    keep = batch["logits_to_keep"]
    for row, traj in enumerate(trajectories):
        n = len(examples[row]["input_ids"])
        assert n == len(traj.prompt) + max(traj.positions)
        assert batch["attention_mask"][row, :n].all() and not batch["attention_mask"][row, n:].any()  # right pad
        mine = batch["positions"][batch["positions"][:, 0] == row]
        assert keep[mine[:, 1]].tolist() == [len(traj.prompt) + p - 1 for p in traj.positions]
        # the token at logit index + 1 is the completion token the step predicts
        for p in traj.positions:
            if len(traj.prompt) + p < n:
                assert batch["input_ids"][row, len(traj.prompt) + p].item() == traj.completion[p]


# --- packed == per-step ------------------------------------------------------------------------------


@pytest.mark.parametrize("expert", ["llama", "qwen2"])
def test_packed_equals_per_step(tiny_models, samples_dir, expert):
    cfg = train_config(tiny_models, expert=expert)
    model = lora_model(load_model(cfg.expert), cfg.training, dropout=0.0)
    torch.manual_seed(0)
    with torch.no_grad():  # LoRA B starts at zero (A would get no gradient): give it values
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    model.train()
    trajectories = load_samples(samples_dir).trajectories
    results = {}
    for layout in ("packed", "per-step"):
        model.zero_grad()
        examples = build_examples(trajectories, layout)
        loss = batch_loss(model, SoftLabelCollator(0)(examples))
        loss.backward()
        results[layout] = (loss.item(), lora_grads(model).clone(), len(examples))
    (lp, gp, n_packed), (ls, gs, n_steps) = results["packed"], results["per-step"]
    assert n_packed == len(trajectories) and n_steps == sum(len(t.positions) for t in trajectories)
    assert n_steps > n_packed
    assert abs(lp - ls) / abs(ls) <= 1e-5
    assert gp.abs().sum() > 0
    assert torch.nn.functional.cosine_similarity(gp, gs, dim=0).item() >= 0.9999


# --- training ----------------------------------------------------------------------------------------


def test_train_only_lora_changes_and_loss_drops(tiny_models, samples_dir, tmp_path):
    from peft import PeftModel
    from transformers import TrainerCallback

    captured = {}

    class Capture(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            captured["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    # One batch holds every trajectory, so each step sees the same (fixed) batch.
    cfg = train_config(tiny_models, **{"training.max_steps": 8, "training.batch_size": 8,
                                       "training.learning_rate": 1e-2, "training.save_steps": 100})
    out = tmp_path / "run"
    result = train(cfg, samples_dir, out, merge=True, progress=False, callbacks=[Capture()])
    m = result.manifest
    losses = [e["loss"] for e in m["loss_history"]]
    assert [e["step"] for e in m["loss_history"]] == list(range(1, 9))
    assert losses[-1] < losses[0] and m["final_loss"] == losses[-1]
    assert m["steps"] == 8 and m["stage"] == "train" and m["layout"] == "packed"
    kept = load_samples(samples_dir).num_steps
    assert m["tuned_tokens"] == 8 * kept
    assert m["samples_sha256"] == sha256_file(samples_dir / SAMPLES)
    assert m["expert"]["sha256"] and m["config"]["training"]["max_steps"] == 8
    for name in ("wall_seconds", "versions"):
        assert name in m
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "tokenizer" / "tokenizer_config.json").is_file()
    assert (out / "merged" / "config.json").is_file() and (out / "checkpoints").is_dir()
    assert json.loads((out / MANIFEST).read_text())["steps"] == 8

    base = load_model(cfg.expert).state_dict()
    trained = captured["state"]
    lora_keys = [k for k in trained if "lora_" in k]
    assert lora_keys
    for key, value in trained.items():
        if "lora_" in key:
            continue
        plain = key.replace("base_model.model.", "", 1).replace(".base_layer", "")
        assert torch.equal(value, base[plain]), key  # bit-identical
    assert any(not torch.equal(trained[k], torch.zeros_like(trained[k])) for k in lora_keys if "lora_B" in k)

    # The merged model computes what base + adapter compute.
    ids = torch.tensor([[2, 40, 41, 42, 43, 44]])
    tuned = PeftModel.from_pretrained(load_model(cfg.expert), out / "adapter").eval()
    merged = load_model(cfg.expert.model_copy(update={"model": str(out / "merged")}))
    with torch.no_grad():
        assert torch.allclose(tuned(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-4)
        assert not torch.allclose(tuned(input_ids=ids).logits, load_model(cfg.expert)(input_ids=ids).logits)


# --- the kept-samples schedule (the paper's 16 kept samples per update) -------------------------------


def test_split_by_step_cuts_the_kept_samples_in_order(samples_dir):
    trajectories = load_samples(samples_dir).trajectories
    order = [(t.problem_id, p) for t in trajectories for p in t.positions]
    groups = split_by_step(trajectories, 5)
    sizes = [sum(len(piece.positions) for piece in g) for g in groups]
    assert all(n == 5 for n in sizes[:-1]) and 1 <= sizes[-1] <= 5 and sum(sizes) == len(order)
    assert [(piece.problem_id, p) for g in groups for piece in g for p in piece.positions] == order
    assert any(len(g) > 1 for g in groups)  # trajectories packed together
    split = {piece.problem_id for g in groups for piece in g}
    assert len(split) == len(trajectories)
    # a trajectory with more kept steps than a group holds is split across groups
    assert any(sum(1 for g in groups for piece in g if piece.problem_id == t.problem_id) > 1 for t in trajectories)


def test_packed_and_per_step_see_the_same_samples_per_update(tiny_models, samples_dir, tmp_path):
    """Under training.samples_per_step both layouts make the same updates from the same kept samples: the
    same number per update, and (packed == per-step loss) the same loss curve."""
    kept = load_samples(samples_dir).num_steps
    sets = {"training.samples_per_step": 4, "training.gradient_accumulation_steps": 2, "training.max_steps": 6,
            "training.learning_rate": 1e-2, "training.save_steps": 100}
    runs = {layout: train(train_config(tiny_models, **{**sets, "training.layout": layout}), samples_dir,
                          tmp_path / layout, progress=False).manifest
            for layout in ("packed", "per-step")}
    packed, per_step = runs["packed"], runs["per-step"]
    assert packed["counts"]["sequences_per_epoch"] < per_step["counts"]["sequences_per_epoch"] == kept
    for m in (packed, per_step):
        sched = m["schedule"]
        assert m["steps"] == sched["updates"] == 6 and sched["samples_per_step"] == 4
        per_update = sched["kept_samples_per_update"]
        assert per_update["max"] == 4 and per_update["min"] >= 1 and per_update["mean"] <= 4
        assert sched["kept_samples_seen"] == m["tuned_tokens"]
        assert m["schedule"]["kept_samples_per_update"]["min"] == (4 if kept % 4 == 0 else per_update["min"])
    assert packed["schedule"] == per_step["schedule"]
    from lightreasoner import records

    logged = records.READERS["train"](tmp_path / "packed", tmp_path).metrics
    assert logged["train/updates"] == 6 and logged["train/kept_samples_per_update_max"] == 4
    assert logged["train/kept_samples_seen"] == packed["tuned_tokens"]
    for a, b in zip(packed["loss_history"], per_step["loss_history"], strict=True):
        assert a["step"] == b["step"] and a["loss"] == pytest.approx(b["loss"], rel=1e-3)


def test_shuffled_order_is_a_seeded_permutation_of_the_kept_steps_that_mixes_problems(samples_dir):
    trajectories = load_samples(samples_dir).trajectories
    everything = sorted((t.problem_id, p) for t in trajectories for p in t.positions)
    groups = shuffled_groups(trajectories, 5, seed=42, epoch=0)
    sizes = [sum(len(piece.positions) for piece in g) for g in groups]
    assert all(n == 5 for n in sizes[:-1]) and 1 <= sizes[-1] <= 5
    drawn = [(piece.problem_id, p) for g in groups for piece in g for p in piece.positions]
    assert sorted(drawn) == everything  # every kept step once
    by_id = {t.problem_id: t for t in trajectories}
    for g in groups:
        ids = [piece.problem_id for piece in g]
        assert len(ids) == len(set(ids))  # one piece (one packed sequence) per trajectory in a batch
        for piece in g:
            assert piece.positions == sorted(piece.positions)
            source = by_id[piece.problem_id]
            for pos, tid, w in zip(piece.positions, piece.target_ids, piece.target_weights, strict=True):
                i = source.positions.index(pos)
                assert (tid, w) == (source.target_ids[i], source.target_weights[i])
    assert shuffled_groups(trajectories, 5, seed=42, epoch=0) == groups  # deterministic for a seed and epoch
    assert shuffled_groups(trajectories, 5, seed=42, epoch=1) != groups  # a new draw every epoch
    assert shuffled_groups(trajectories, 5, seed=7, epoch=0) != groups
    assert drawn != [(t.problem_id, p) for t in trajectories for p in t.positions]

    def problems_per_batch(gs):
        return sum(len(g) for g in gs) / len(gs)

    assert problems_per_batch(groups) > problems_per_batch(split_by_step(trajectories, 5))  # batches mix problems


def test_shuffled_order_needs_samples_per_step(tiny_models):
    with pytest.raises(LightReasonerError, match="sample_order shuffled draws kept samples per update"):
        train_config(tiny_models, **{"training.sample_order": "shuffled"})


def test_shuffled_run_resumed_equals_the_uninterrupted_one(tiny_models, samples_dir, tmp_path):
    """Two epochs of the shuffled order; a run stopped in the second epoch and resumed from its checkpoint
    makes the same updates on the same samples (the order is a function of seed + epoch)."""
    from transformers import TrainerCallback

    kept = load_samples(samples_dir).num_steps
    per_epoch = math.ceil(math.ceil(kept / 2) / 2)  # 2 kept samples per pass, 2 passes per update
    epochs: list[int] = []

    class Seen(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kwargs):
            epochs.append(math.floor((state.epoch or 0) + 1e-6))

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == per_epoch + 2:
                raise RuntimeError("killed")

    sets = {"training.samples_per_step": 4, "training.gradient_accumulation_steps": 2,
            "training.sample_order": "shuffled", "training.max_steps": per_epoch + 3, "training.save_steps": per_epoch + 1,
            "training.learning_rate": 1e-2}
    cfg = train_config(tiny_models, **sets)
    full = train(cfg, samples_dir, tmp_path / "full", progress=False, callbacks=[Seen()]).manifest
    assert epochs == [0, 1] and full["sample_order"] == "shuffled"
    assert full["schedule"]["kept_samples_per_update"]["max"] == 4 and full["tuned_tokens"] > kept
    grouped = train(train_config(tiny_models, **{**sets, "training.sample_order": "grouped"}), samples_dir,
                    tmp_path / "grouped", progress=False).manifest
    assert [e["loss"] for e in grouped["loss_history"]] != [e["loss"] for e in full["loss_history"]]

    out = tmp_path / "killed"
    with pytest.raises(RuntimeError, match="killed"):
        train(cfg, samples_dir, out, progress=False, callbacks=[Kill()])
    epochs.clear()
    resumed = train(cfg, samples_dir, out, resume=True, progress=False, callbacks=[Seen()]).manifest
    assert resumed["resumed_from"] == f"checkpoint-{per_epoch + 1}" and epochs == [1]
    assert resumed["tuned_tokens"] == full["tuned_tokens"]
    # every counter came back with the Trainer's state (trainer_state.json), none from a file of ours
    assert resumed["tokens_processed"] == full["tokens_processed"] and resumed["schedule"] == full["schedule"]
    for a, b in zip(resumed["loss_history"], full["loss_history"], strict=True):
        assert a["step"] == b["step"] and a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    for run, m in ((out, resumed), (tmp_path / "full", full)):
        last = max((run / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        state = json.loads((last / "trainer_state.json").read_text())
        counters = state["stateful_callbacks"]["TrainingCounters"]["attributes"]
        assert state["global_step"] == m["steps"] and counters["tuned_tokens"] == m["tuned_tokens"]
        assert counters["updates"] == m["schedule"]["updates"] == m["steps"]
        assert json.loads((last / COMPLETE).read_text()) == {"step": m["steps"]}  # the marker: no counters


def test_a_checkpoint_with_the_counters_in_its_marker_resumes_with_them(tiny_models, samples_dir, tmp_path):
    """A checkpoint of the version that kept the counters in its marker file, not in trainer_state.json:
    resuming from it moves them there, and the run ends with the uninterrupted run's counters."""
    from transformers import TrainerCallback

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise RuntimeError("killed")

    cfg = train_config(tiny_models, **{"training.max_steps": 4, "training.batch_size": 2, "training.save_steps": 2})
    full = train(cfg, samples_dir, tmp_path / "full", progress=False).manifest
    out = tmp_path / "killed"
    with pytest.raises(RuntimeError, match="killed"):
        train(cfg, samples_dir, out, progress=False, callbacks=[Kill()])
    checkpoint = out / "checkpoints" / "checkpoint-2"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    counters = state["stateful_callbacks"].pop("TrainingCounters")["attributes"]
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    (checkpoint / COMPLETE).write_text(json.dumps(counters))  # the old layout
    resumed = train(cfg, samples_dir, out, resume=True, progress=False).manifest
    assert resumed["resumed_from"] == "checkpoint-2" and resumed["steps"] == full["steps"] == 4
    assert resumed["tuned_tokens"] == full["tuned_tokens"] and resumed["schedule"] == full["schedule"]
    assert resumed["tokens_processed"] == full["tokens_processed"]


def _counter_writes(tree: ast.AST) -> list[tuple[str, int]]:
    """(enclosing class, line) of every assignment to a counter, as an attribute or a subscript key."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, owner: str) -> None:
        for child in ast.iter_child_nodes(node):
            targets = []
            if isinstance(child, ast.Assign):
                targets = child.targets
            elif isinstance(child, ast.AugAssign | ast.AnnAssign):
                targets = [child.target]
            for target in targets:
                for t in ast.walk(target):
                    name = t.attr if isinstance(t, ast.Attribute) else (
                        t.slice.value if isinstance(t, ast.Subscript) and isinstance(t.slice, ast.Constant) else None)
                    if name in TrainingCounters.FIELDS:
                        found.append((owner, child.lineno))
            visit(child, child.name if isinstance(child, ast.ClassDef) else owner)

    visit(tree, "")
    return found


def test_the_training_counters_have_one_writer(tiny_models, samples_dir, tmp_path):
    """Only :class:`TrainingCounters` assigns a counter (in the whole package), the trainer holds exactly one,
    and what the trainer hands out is a copy."""
    package = Path(lightreasoner.__file__).parent
    writers = {(path.name, owner) for path in package.rglob("*.py")
               for owner, _ in _counter_writes(ast.parse(path.read_text()))}
    assert writers == {("trainer.py", "TrainingCounters")}
    src = "class C:\n    def f(self, c):\n        c['tuned_tokens'] += 1\n        self.sequences = 0\n"
    assert [owner for owner, _ in _counter_writes(ast.parse(src))] == ["C", "C"]  # the scan sees both forms

    cfg = train_config(tiny_models, **{"training.max_steps": 2, "training.save_steps": 100})
    from lightreasoner.trainer import fit_lora

    model = lora_model(load_model(cfg.expert), cfg.training)
    examples = build_examples(load_samples(samples_dir).trajectories, cfg.training.layout)
    fit = fit_lora(cfg, model, examples, tmp_path / "fit", torch.device("cpu"), 0, progress=False)
    trainer = fit.trainer
    assert sum(isinstance(cb, TrainingCounters) for cb in trainer.callback_handler.callbacks) == 1
    counters = trainer.counters
    assert counters["tuned_tokens"] > 0 and counters["updates"] == 2
    counters["tuned_tokens"] = -1
    assert trainer.counters["tuned_tokens"] > 0  # a copy: writing to it changes nothing


def test_samples_per_step_must_split_into_accumulation_steps(tiny_models):
    with pytest.raises(LightReasonerError, match="samples_per_step 5 must be a multiple"):
        train_config(tiny_models, **{"training.samples_per_step": 5, "training.gradient_accumulation_steps": 2})


def test_heldout_kl_is_reported_and_drops(tiny_models, samples_dir, tmp_path):
    trajectories = load_samples(samples_dir).trajectories
    train_set, held = split_holdout(trajectories, 0.34, 42)
    assert held and train_set and not {t.problem_id for t in held} & {t.problem_id for t in train_set}
    assert split_holdout(list(reversed(trajectories)), 0.34, 42)[1] == list(reversed(held))  # order-free

    cfg = train_config(tiny_models, **{"training.holdout_fraction": 0.34, "training.samples_per_step": 4,
                                       "training.max_steps": 10, "training.learning_rate": 2e-2,
                                       "training.save_steps": 100})
    m = train(cfg, samples_dir, tmp_path / "run", progress=False).manifest
    h = m["heldout"]
    assert h["problems"] == len(held) == m["counts"]["heldout_problems"]
    assert h["problem_ids"] == sorted(t.problem_id for t in held)
    assert m["counts"]["kept_steps"] + h["kept_steps"] == load_samples(samples_dir).num_steps
    # before: the base Expert's KL on the held-out samples; after: base + the saved adapter's
    from peft import PeftModel

    pad = 0
    base = load_model(cfg.expert)
    assert h["kl_before"] == pytest.approx(soft_label_kl(base, held, pad), rel=1e-5)
    tuned = PeftModel.from_pretrained(base, tmp_path / "run" / "adapter")
    assert h["kl_after"] == pytest.approx(soft_label_kl(tuned, held, pad), rel=1e-4)
    assert h["kl_after"] != pytest.approx(h["kl_before"], rel=1e-3)  # training moved it
    assert h["kl_drop"] == pytest.approx((h["kl_before"] - h["kl_after"]) / h["kl_before"])
    from lightreasoner import records

    logged = records.READERS["train"](tmp_path / "run", tmp_path).metrics
    assert logged["train/heldout_kl_before"] == pytest.approx(h["kl_before"])
    assert logged["train/heldout_kl_drop"] == pytest.approx(h["kl_drop"])
    no_holdout = train(train_config(tiny_models, **{"training.max_steps": 1}), samples_dir, tmp_path / "plain",
                       progress=False).manifest
    assert no_holdout["heldout"]["problems"] == 0 and no_holdout["heldout"]["kl_before"] is None


@pytest.mark.slow
def test_kill_and_resume_finishes_same_steps(tiny_models, samples_dir, tmp_path):
    from transformers import TrainerCallback

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise RuntimeError("killed")

    sets = {"training.max_steps": 5, "training.batch_size": 2, "training.save_steps": 2,
            "training.save_total_limit": 5}
    cfg = train_config(tiny_models, **sets)
    full = train(cfg, samples_dir, tmp_path / "full", progress=False).manifest

    out = tmp_path / "killed"
    with pytest.raises(RuntimeError, match="killed"):
        train(cfg, samples_dir, out, progress=False, callbacks=[Kill()])
    assert not (out / MANIFEST).exists() and not (out / "adapter").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2"]
    with pytest.raises(LightReasonerError, match="--resume"):
        train(cfg, samples_dir, out, progress=False)

    resumed = train(cfg, samples_dir, out, resume=True, progress=False).manifest
    assert resumed["resumed_from"] == "checkpoint-2"
    assert resumed["steps"] == full["steps"] == 5
    assert [e["step"] for e in resumed["loss_history"]] == [1, 2, 3, 4, 5]
    assert resumed["tuned_tokens"] == full["tuned_tokens"]
    assert resumed["final_loss"] == pytest.approx(full["final_loss"], rel=1e-4)
    # resuming a finished run returns it; a different config is refused
    assert train(cfg, samples_dir, out, resume=True, progress=False).manifest["wall_seconds"] == resumed["wall_seconds"]
    other = train_config(tiny_models, **{**sets, "training.learning_rate": 1e-3})
    with pytest.raises(LightReasonerError, match="different config"):
        train(other, samples_dir, out, resume=True, progress=False)


def test_cli_train_per_step(tiny_models, samples_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["train", "--samples", str(samples_dir), "--output", str(out), "--layout", "per-step"]
    for key, value in {**BETA, "expert.model": tiny_models["llama"], "training.max_steps": 2,
                       "amateur.model": tiny_models["llama_small"]}.items():
        argv += ["--set", f"{key}={value}"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "steps=2" in printed and "layout=per-step" in printed
    m = json.loads((out / MANIFEST).read_text())
    assert m["layout"] == "per-step" and m["config"]["training"]["layout"] == "per-step"
    assert m["tuned_tokens"] == 2 * 4  # per-step: one kept step per sequence, 4 sequences per batch

    assert main(["train", "--samples", str(tmp_path / "nowhere"), "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "nowhere" in err and "\n" not in err


# --- bad input ---------------------------------------------------------------------------------------


def _drop_column(table: pa.Table) -> pa.Table:
    return table.drop(["target_weights"])


def _wrong_type(table: pa.Table) -> pa.Table:
    return table.set_column(table.column_names.index("position"), "position",
                            pa.array([f"p{i}" for i in range(table.num_rows)]))


def _unnormalised(table: pa.Table) -> pa.Table:
    weights = table.column("target_weights").to_pylist()
    weights[3] = [w * 0.9 for w in weights[3]]
    return table.set_column(table.column_names.index("target_weights"), "target_weights",
                            pa.array(weights, pa.list_(pa.float32())))


def _outside(table: pa.Table) -> pa.Table:
    positions = table.column("position").to_pylist()
    positions[0] = 10_000
    return table.set_column(table.column_names.index("position"), "position", pa.array(positions, pa.int32()))


def _beyond_vocab(table: pa.Table) -> pa.Table:
    ids = table.column("target_token_ids").to_pylist()
    ids[0] = [10_000] + ids[0][1:]
    return table.set_column(table.column_names.index("target_token_ids"), "target_token_ids",
                            pa.array(ids, pa.list_(pa.int32())))


def _empty(table: pa.Table) -> pa.Table:
    return table.slice(0, 0)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (_drop_column, "schema mismatch, missing column(s) target_weights"),
        (_wrong_type, "schema mismatch, column position"),
        (_unnormalised, "row 3: target weights sum to"),
        (_outside, "row 0: position 10000 outside the completion"),
        (_beyond_vocab, "target id beyond the Expert's vocabulary"),
        (_empty, "no kept steps, nothing to train"),
    ],
    ids=["missing-column", "wrong-type", "weights-sum", "position-outside", "vocabulary", "empty"],
)
def test_bad_samples_refused(tiny_models, samples_dir, tmp_path, mutate, message):
    bad = rewrite_samples(samples_dir, tmp_path / "bad", mutate)
    out = tmp_path / "out"
    with pytest.raises(LightReasonerError) as info:
        train(train_config(tiny_models), bad, out, progress=False)
    text = str(info.value)
    assert message in text and str(bad / SAMPLES) in text and "\n" not in text
    assert not out.exists()  # refused before anything is written: no manifest, no adapter


@pytest.mark.parametrize("missing", [TRAJECTORIES, SAMPLES, MANIFEST])
def test_missing_file_refused(tiny_models, samples_dir, tmp_path, missing):
    bad = tmp_path / "bad"
    shutil.copytree(samples_dir, bad)
    (bad / missing).unlink()
    with pytest.raises(LightReasonerError, match=f"missing {missing}"):
        train(train_config(tiny_models), bad, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_changed_file_and_wrong_expert_refused(tiny_models, samples_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(samples_dir, bad)
    pq.write_table(pq.read_table(bad / TRAJECTORIES).slice(0, 2), bad / TRAJECTORIES)
    with pytest.raises(LightReasonerError, match="sha256 differs"):
        train(train_config(tiny_models), bad, tmp_path / "out", progress=False)
    with pytest.raises(LightReasonerError, match="not the Expert the samples") as info:
        train(train_config(tiny_models, expert="qwen2"), samples_dir, tmp_path / "out", progress=False)
    assert str(tiny_models["qwen2"]) in str(info.value)
    assert not (tmp_path / "out").exists()
