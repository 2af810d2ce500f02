"""Chunked teacher-forced scoring, fast generation (static cache, torch.compile) and auto batch sizes."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import tiny_config
from scoring_oracle import score_fast

from lightreasoner import models, sampling
from lightreasoner.errors import LightReasonerError
from lightreasoner.models import auto_batch_size, generate_greedy, load_pair, prompt_token_ids
from lightreasoner.sampling import (
    _completion_hidden,
    _pad_batch,
    contrast,
    contrast_step_reference,
    sample,
    score_chunked,
    score_reference,
)


def _batch(cfg, pair, n=4):
    from lightreasoner.data import load_problems

    problems = load_problems(cfg.data)[:n]
    prompts = [prompt_token_ids(pair.tokenizer, p.question, cfg.prompt.system_prompt) for p in problems]
    return [p.problem_id for p in problems], prompts


@pytest.mark.parametrize("expert, amateur", [("llama", "llama_small"), ("qwen2", "qwen2_small"), ("qwen2", None)])
def test_chunked_scorer_equals_scoring_with_generation_logits(tiny_models, expert, amateur):
    """Today's fast path (Expert logits kept from generation, one [B, T, V] contrast) is the oracle.
    amateur None: the Expert's first layer, whose hidden states come out of the Expert's own pass."""
    cfg = tiny_config(tiny_models, expert, amateur)
    pair = load_pair(cfg)
    assert (sampling.shared_trunk(pair.expert, pair.amateur) is None) == (amateur is not None)
    ids, prompts = _batch(cfg, pair)
    completions, logits = generate_greedy(pair.expert, pair.tokenizer, prompts, 12, return_logits=True)
    assert max(len(c) for c in completions) > 5
    kept = score_fast(pair, ids, prompts, completions, logits, 0.2, 0.4)
    for chunk in (1, 5, 7, 13, 512):  # 5 and 7: less than one row of 12 steps; 13: a row and a bit
        chunked = score_chunked(pair, ids, prompts, completions, 0.2, 0.4, chunk_tokens=chunk)
        for a, b in zip(kept, chunked, strict=True):
            assert (a.problem_id, a.completion) == (b.problem_id, b.completion)
            np.testing.assert_allclose(b.step_kl, a.step_kl, atol=1e-5)
            assert b.cand_position == a.cand_position
            for ta, tb, wa, wb in zip(a.cand_targets, b.cand_targets, a.cand_weights, b.cand_weights, strict=True):
                assert tb.tolist() == ta.tolist()
                np.testing.assert_allclose(wb, wa, atol=1e-5)
            assert b.argmax_mismatch == 0


@pytest.mark.parametrize("expert, amateur", [("llama", "llama_small"), ("qwen2", "qwen2_small"), ("qwen2", None),
                                             ("llama", None)])
def test_scoring_from_generation_hidden_states_equals_the_teacher_forced_pass(tiny_models, expert, amateur):
    """The CPU fast path (hidden states kept while the Expert generates, no second Expert pass) against the
    straightforward one (teacher-forced passes over prompt + completion), with rows of different lengths."""
    cfg = tiny_config(tiny_models, expert, amateur)
    pair = load_pair(cfg)
    ids, prompts = _batch(cfg, pair, 5)
    completions, hidden = sampling.generate_for_scoring(pair, prompts, 12)
    plain, _ = generate_greedy(pair.expert, pair.tokenizer, prompts, 12)
    assert completions == plain and max(len(c) for c in completions) > 5
    assert hidden[0].shape[:2] == (5, max(len(c) for c in completions)) and (hidden[1] is None) == (amateur is not None)
    assert not pair.expert.get_output_embeddings()._forward_pre_hooks  # the capture hooks are gone
    for chunk in (3, 512):
        teacher = score_chunked(pair, ids, prompts, completions, 0.2, 0.4, chunk_tokens=chunk, skip_first_step=True)
        kept = score_chunked(pair, ids, prompts, completions, 0.2, 0.4, chunk_tokens=chunk, skip_first_step=True,
                             hidden=hidden)
        for a, b in zip(teacher, kept, strict=True):
            assert (a.problem_id, a.completion) == (b.problem_id, b.completion)
            np.testing.assert_allclose(b.step_kl, a.step_kl, atol=1e-5)
            assert b.cand_position == a.cand_position and 0 not in b.cand_position
            for ta, tb, wa, wb in zip(a.cand_targets, b.cand_targets, a.cand_weights, b.cand_weights, strict=True):
                assert tb.tolist() == ta.tolist()
                np.testing.assert_allclose(wb, wa, atol=1e-5)
            assert a.argmax_mismatch == b.argmax_mismatch == 0
    with pytest.raises(LightReasonerError, match="do not cover"):
        score_chunked(pair, ids[:2], prompts[:2], completions[:2], 0.2, 0.4, hidden=hidden)


def test_sampling_with_and_without_kept_hidden_states_gives_the_same_samples(tiny_models, tmp_path):
    base = {"data.limit": 5, "sampling.batch_size": 3, "sampling.beta": "auto:0.3"}
    cfg = tiny_config(tiny_models, "llama", None, **base)  # the demo's kind of Amateur: the Expert's first layer
    teacher = tiny_config(tiny_models, "llama", None, **base, **{"performance.score_from_generation": False})
    pair = load_pair(cfg)
    a = sample(cfg, tmp_path / "kept", pair=pair, progress=False)
    b = sample(teacher, tmp_path / "teacher", pair=pair, progress=False)
    assert a.manifest["fingerprint"] == b.manifest["fingerprint"]  # a performance key: same job
    ta, tb = (pq.read_table(r.output / "trajectories.parquet").to_pylist() for r in (a, b))
    sa, sb = (pq.read_table(r.output / "samples.parquet").to_pylist() for r in (a, b))
    assert [t["completion_token_ids"] for t in ta] == [t["completion_token_ids"] for t in tb]
    for x, y in zip(ta, tb, strict=True):
        np.testing.assert_allclose(x["step_kl"], y["step_kl"], atol=1e-5)
    assert [(s["problem_id"], s["position"], s["target_token_ids"]) for s in sa] == \
        [(s["problem_id"], s["position"], s["target_token_ids"]) for s in sb]
    for x, y in zip(sa, sb, strict=True):
        np.testing.assert_allclose(x["target_weights"], y["target_weights"], atol=1e-5)


def test_truncated_amateur_hidden_states_from_the_expert_pass_equal_its_own(tiny_models):
    cfg = tiny_config(tiny_models, "llama", None)
    pair = load_pair(cfg)
    trunk = sampling.shared_trunk(pair.expert, pair.amateur)
    assert trunk is not None and trunk[0] == 1
    _, prompts = _batch(cfg, pair, 3)
    completions = [[5, 9, 30], [41, 7], [12]]
    batch, mask, p_len, t_len = _pad_batch(prompts, completions, pair.tokenizer.pad_token_id, pair.expert.device)
    with torch.inference_mode():
        expert_h, amateur_h = _completion_hidden(pair.expert, batch, mask, p_len, t_len, trunk)
        torch.testing.assert_close(expert_h, _completion_hidden(pair.expert, batch, mask, p_len, t_len))
        torch.testing.assert_close(amateur_h, _completion_hidden(pair.amateur, batch, mask, p_len, t_len))


def test_largest_logits_tensor_respects_the_chunk_size(tiny_models, tmp_path):
    """No [B, T, V] tensor: every output-layer call makes at most max(chunk, batch rows) logits rows."""
    chunk, batch = 5, 4
    cfg = tiny_config(tiny_models, **{"data.limit": 6, "sampling.batch_size": batch,
                                      "performance.score_chunk_tokens": chunk, "sampling.beta": "auto:0.3"})
    pair = load_pair(cfg)
    largest = {"rows": 0, "calls": 0}

    def record(_module, _inputs, output):
        largest["rows"] = max(largest["rows"], output.numel() // output.shape[-1])
        largest["calls"] += 1

    hooks = [m.get_output_embeddings().register_forward_hook(record) for m in (pair.expert, pair.amateur)]
    try:
        result = sample(cfg, tmp_path / "o", pair=pair, progress=False)
    finally:
        for h in hooks:
            h.remove()
    assert largest["calls"] > 0 and largest["rows"] <= max(chunk, batch), largest
    counts = result.manifest["counts"]
    assert counts["steps"] > 2 * chunk and counts["argmax_mismatch_steps"] == 0


def test_manifest_counts_teacher_forced_argmax_mismatches(tiny_models, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_models, **{"data.limit": 2, "sampling.max_new_tokens": 4})
    pair = load_pair(cfg)
    real = sampling.generate_greedy

    def one_token_off(*args, **kwargs):
        completions, logits = real(*args, **kwargs)
        for c in completions:  # pretend generation picked another token at the first step (a near-tie)
            c[0] = (c[0] + 1) % pair.vocab_size
        return completions, logits

    monkeypatch.setattr(sampling, "generate_greedy", one_token_off)
    manifest = sample(cfg, tmp_path / "o", pair=pair, progress=False).manifest
    assert manifest["counts"]["argmax_mismatch_steps"] >= 2


class AcceleratorTensor(torch.Tensor):
    """Behaves like a tensor on a GPU where it matters here: ``.numpy()`` refuses, ``.cpu()`` gives a host tensor."""

    def numpy(self, *args, **kwargs):
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor "
                        "to host memory first.")

    def cpu(self, *args, **kwargs):
        return super().cpu(*args, **kwargs).as_subclass(torch.Tensor)


def test_reference_and_fast_contrast_move_device_tensors_to_the_host(tiny_models):
    g = torch.Generator().manual_seed(3)
    e, a = torch.randn(5, 40, generator=g) * 3, torch.randn(5, 40, generator=g) * 3
    de, da = e.as_subclass(AcceleratorTensor), a.as_subclass(AcceleratorTensor)
    with pytest.raises(TypeError, match="cuda"):
        de.numpy()
    for i in range(5):
        kl, ids, w = contrast_step_reference(de[i], da[i], 0.2)
        kl0, ids0, w0 = contrast_step_reference(e[i], a[i], 0.2)
        assert kl == pytest.approx(kl0) and ids.tolist() == ids0.tolist()
        np.testing.assert_array_equal(w, w0)
    fast = contrast(de, da, 0.2, floor=None)
    assert [t.tolist() for t in fast.targets] == [t.tolist() for t in contrast(e, a, 0.2, floor=None).targets]

    cfg = tiny_config(tiny_models)
    pair = load_pair(cfg)
    ids, prompts = _batch(cfg, pair, 1)
    completions, logits = generate_greedy(pair.expert, pair.tokenizer, prompts, 6, return_logits=True)
    plain = score_reference(pair, ids[0], prompts[0], completions[0], logits[0], 0.2, 0.4)
    real = sampling.per_prefix_logits
    try:
        sampling.per_prefix_logits = lambda *a, **k: real(*a, **k).as_subclass(AcceleratorTensor)
        moved = score_reference(pair, ids[0], prompts[0], completions[0], logits[0].as_subclass(AcceleratorTensor),
                                0.2, 0.4)
    finally:
        sampling.per_prefix_logits = real
    np.testing.assert_allclose(moved.step_kl, plain.step_kl)
    assert moved.cand_position == plain.cand_position and moved.argmax_mismatch == plain.argmax_mismatch == 0


@pytest.mark.slow
def test_static_cache_and_fixed_shapes_give_the_same_completions(tiny_models):
    """compile=True pads rows to a power of two and prompts to a bucket and uses a static cache; with
    torch.compile itself disabled this runs fast and checks that the padding changes nothing."""
    import torch._dynamo

    cfg = tiny_config(tiny_models, "qwen2", "qwen2_small")
    pair = load_pair(cfg)
    _, prompts = _batch(cfg, pair, 3)  # 3 rows: padded to 4
    plain, _ = generate_greedy(pair.expert, pair.tokenizer, prompts, 12)
    with torch._dynamo.config.patch(disable=True):
        fixed, _ = generate_greedy(pair.expert, pair.tokenizer, prompts, 12, compile=True)
    assert fixed == plain
    assert models.padded_rows(3) == 4 and models.padded_rows(1) == 1 and models.padded_rows(16) == 16
    assert models.padded_width(65) == 128


def _compile_runs_here() -> str | None:
    try:
        torch.compile(lambda x: x * 2 + 1)(torch.ones(3))
    except Exception as exc:  # noqa: BLE001 - no compiler, unsupported platform, ...
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


@pytest.mark.slow
def test_compile_on_and_off_give_the_same_completions(tiny_models):
    reason = _compile_runs_here()
    if reason:
        pytest.skip(f"torch.compile cannot run here ({reason})")
    cfg = tiny_config(tiny_models)
    pair = load_pair(cfg)
    _, prompts = _batch(cfg, pair, 4)
    plain, _ = generate_greedy(pair.expert, pair.tokenizer, prompts, 8)
    compiled, _ = generate_greedy(pair.expert, pair.tokenizer, prompts, 8, compile=True)
    assert compiled == plain
    again, _ = generate_greedy(pair.expert, pair.tokenizer, prompts[:3], 8, compile=True)  # same shapes: no recompile
    assert again == plain[:3]


def test_compile_switch_resolution():
    assert models.resolve_compile("auto", torch.device("cpu")) is False
    assert models.resolve_compile("auto", torch.device("cuda")) is True
    assert models.resolve_compile(True, torch.device("cpu")) is True
    assert models.resolve_compile(False, torch.device("cuda")) is False


class _FakeGPUModel:
    def __init__(self, model):
        self.config, self.dtype, self.device = model.config, torch.bfloat16, torch.device("cuda")


def test_auto_batch_size_from_free_memory(tiny_models, monkeypatch):
    cfg = tiny_config(tiny_models)
    pair = load_pair(cfg)
    assert auto_batch_size(12, [pair.expert], 100) == 12
    assert auto_batch_size("auto", [pair.expert], 100) == 16  # CPU
    fake = [_FakeGPUModel(pair.expert), _FakeGPUModel(pair.amateur)]
    per_problem = sum(models.bytes_per_row(m, 300) for m in fake)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(per_problem * 50 / 0.8), 1 << 40))
    assert auto_batch_size("auto", fake, 300) == 32  # 50 rows fit: the power of two below
    assert auto_batch_size("auto", fake, 300, cap=8) == 8
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10, 1 << 40))
    assert auto_batch_size("auto", fake, 300) == 1


def test_auto_sampling_batch_size_is_kept_for_a_resumed_run(tiny_models, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_models, **{"data.limit": 4, "sampling.batch_size": "auto", "sampling.max_new_tokens": 4})
    pair = load_pair(cfg)
    out = tmp_path / "o"
    seen = []
    real = sampling.generate_greedy

    def dies_on_second_batch(model, tok, prompts, *args, **kwargs):
        seen.append(len(prompts))
        if len(seen) == 2:
            raise KeyboardInterrupt
        return real(model, tok, prompts, *args, **kwargs)

    monkeypatch.setattr(sampling, "auto_batch_size", lambda *a, **k: 2)
    monkeypatch.setattr(sampling, "generate_greedy", dies_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        sample(cfg, out, pair=pair, progress=False)
    assert json.loads((out / "shards" / "plan.json").read_text()) == {"batch_size": 2}
    monkeypatch.setattr(sampling, "auto_batch_size", lambda *a, **k: 4)  # more memory free now: still 2
    monkeypatch.setattr(sampling, "generate_greedy", real)
    sample(cfg, out, pair=pair, progress=False)
    assert pq.read_table(out / "trajectories.parquet").num_rows == 4
    assert json.loads((out / "manifest.json").read_text())["timing"]["batch_size"] == 2
    whole = tmp_path / "whole"
    sample(cfg.model_copy(update={"sampling": cfg.sampling.model_copy(update={"batch_size": 2})}), whole,
           pair=pair, progress=False)
    assert pq.read_table(out / "samples.parquet").equals(pq.read_table(whole / "samples.parquet"))
    with pytest.raises(LightReasonerError, match="batch_size auto: set a number for a sharded run"):
        sample(cfg, tmp_path / "shard", pair=pair, progress=False, shard=(0, 2))
    assert not (tmp_path / "shard").exists()  # nothing left that would block the corrected rerun


@pytest.mark.slow
def test_gpu_benchmark_runs_on_cpu_with_tiny_shapes(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"
    spec = importlib.util.spec_from_file_location("gpu_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--tiny"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert "same completions 2/2" in "\n".join(lines)
    assert lines[-1].split()[0].startswith("sampling_s_per_1000=")
    assert set(result) == {"sampling_s_per_1000", "overhead", "eval_tokens_per_s", "train_s", "peak_gib"}
    assert all(v == v and v > -1 for v in result.values())  # numbers, not NaN


def test_batch_sizes_take_a_number_or_auto():
    from lightreasoner.config import load_config

    cfg = load_config(None, ["sampling.batch_size=auto", "evaluation.batch_size=8", "sft.batch_size=2.0"])
    assert (cfg.sampling.batch_size, cfg.evaluation.batch_size, cfg.sft.batch_size) == ("auto", 8, 2)
    assert cfg.performance.compile == "auto"
    for bad in ("0", "-3", "lots", "2.5", "true"):
        with pytest.raises(LightReasonerError) as err:
            load_config(None, [f"sampling.batch_size={bad}"])
        assert "sampling.batch_size" in str(err.value) and "positive integer or auto" in str(err.value)
        assert "\n" not in str(err.value)
