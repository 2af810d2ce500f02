import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import tiny_config
from hypothesis import given, settings
from hypothesis import strategies as st

from lightreasoner import sampling
from lightreasoner.cli import main
from lightreasoner.errors import LightReasonerError
from lightreasoner.models import load_pair, load_tokenizer, truncated_amateur
from lightreasoner.sampling import (
    contrast,
    contrast_step_reference,
    effective_beta,
    sample,
    score_reference,
)


def read(folder):
    return (pq.read_table(folder / "trajectories.parquet").to_pylist(),
            pq.read_table(folder / "samples.parquet").to_pylist(),
            json.loads((folder / "manifest.json").read_text()))


@pytest.mark.parametrize("expert, amateur", [("llama", "llama_small"), ("qwen2", "qwen2_small")])
def test_fast_equals_reference_on_the_same_trajectories(tiny_models, tmp_path, expert, amateur):
    cfg = tiny_config(tiny_models, expert, amateur, **{"sampling.beta": 0.4, "data.limit": 5})
    pair = load_pair(cfg)
    sample(cfg, tmp_path / "fast", pair=pair, progress=False)
    trajectories, samples, manifest = read(tmp_path / "fast")
    assert manifest["counts"]["selected"] == len(samples) > 0
    by_problem = {}
    for s in samples:
        by_problem.setdefault(s["problem_id"], []).append(s)
    for traj in trajectories:
        ref = score_reference(pair, traj["problem_id"], traj["prompt_token_ids"], traj["completion_token_ids"],
                              None, cfg.sampling.alpha, 0.4)
        fast = by_problem.get(traj["problem_id"], [])
        assert [s["position"] for s in fast] == ref.cand_position
        assert traj["num_selected"] == len(fast)
        for s, ids, w in zip(fast, ref.cand_targets, ref.cand_weights, strict=True):
            assert s["target_token_ids"] == ids.tolist()
            np.testing.assert_allclose(s["target_weights"], w, atol=1e-4)
        np.testing.assert_allclose(traj["step_kl"], ref.step_kl, atol=1e-4)


def test_reference_mode_output_matches_fast_mode(tiny_models, tmp_path):
    cfg = tiny_config(tiny_models, **{"data.limit": 3, "sampling.max_new_tokens": 6})
    pair = load_pair(cfg)
    sample(cfg, tmp_path / "fast", pair=pair, progress=False)
    sample(cfg, tmp_path / "ref", pair=pair, reference=True, progress=False)
    (tf, sf, _), (tr, sr, mr) = read(tmp_path / "fast"), read(tmp_path / "ref")
    assert mr["mode"] == "reference"
    assert [t["completion_token_ids"] for t in tf] == [t["completion_token_ids"] for t in tr]
    assert [(s["problem_id"], s["position"]) for s in sf] == [(s["problem_id"], s["position"]) for s in sr]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), alpha=st.floats(0.05, 1.0), scale=st.floats(0.5, 6.0))
def test_contrast_properties_and_oracle(seed, alpha, scale):
    g = torch.Generator().manual_seed(seed)
    e, a = torch.randn(6, 40, generator=g) * scale, torch.randn(6, 40, generator=g) * scale
    res = contrast(e, a, alpha, floor=None, chunk=4)
    for i in range(6):
        kl, ids, w = contrast_step_reference(e[i], a[i], alpha)
        assert res.kl[i] >= 0 and abs(res.kl[i] - kl) < 1e-4
        assert res.targets[i].tolist() == ids.tolist()
        np.testing.assert_allclose(res.weights[i], w, atol=1e-5)
        assert abs(res.weights[i].sum() - 1) < 1e-5
        pe = torch.softmax(e[i], -1)
        assert bool((pe[res.targets[i]] >= alpha * pe.max() - 1e-7).all())


def test_floor_drops_low_kl_steps():
    e = torch.randn(8, 30)
    res = contrast(e, e.clone(), 0.2, floor=0.1)
    assert all(t is None for t in res.targets) and np.allclose(res.kl, 0, atol=1e-5)


def test_auto_beta_keeps_the_fraction(tiny_models, tmp_path):
    cfg = tiny_config(tiny_models, **{"sampling.beta": "auto:0.25", "data.limit": 4})
    sample(cfg, tmp_path / "o", progress=False)
    trajs, samples, manifest = read(tmp_path / "o")
    beta = manifest["effective_beta"]
    all_kl = np.concatenate([t["step_kl"] for t in trajs])
    assert abs(len(samples) / len(all_kl) - 0.25) < 0.1
    kept = {(s["problem_id"], s["position"]) for s in samples}
    for t in trajs:
        for pos, kl in enumerate(t["step_kl"]):
            assert ((t["problem_id"], pos) in kept) == (kl > beta)
    for s in samples:
        assert abs(sum(s["target_weights"]) - 1) < 1e-4 and s["kl"] > beta
    assert effective_beta(0.4, all_kl) == 0.4


def test_resume_after_interruption_equals_uninterrupted(tiny_models, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_models, **{"data.limit": 6, "sampling.batch_size": 2})
    pair = load_pair(cfg)
    sample(cfg, tmp_path / "whole", pair=pair, progress=False)

    real, calls = sampling.generate_greedy, {"n": 0}

    def dies_on_third_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sampling, "generate_greedy", dies_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        sample(cfg, tmp_path / "resumed", pair=pair, progress=False)
    assert not (tmp_path / "resumed" / "manifest.json").exists()
    assert len(list((tmp_path / "resumed" / "shards").glob("batch-*.parquet"))) == 2
    monkeypatch.setattr(sampling, "generate_greedy", real)
    calls["n"] = 0
    sample(cfg, tmp_path / "resumed", pair=pair, progress=False)
    for name in ("trajectories.parquet", "samples.parquet"):
        assert pq.read_table(tmp_path / "whole" / name).equals(pq.read_table(tmp_path / "resumed" / name))

    other = tiny_config(tiny_models, **{"data.limit": 6, "sampling.batch_size": 2, "sampling.alpha": 0.5})
    with pytest.raises(LightReasonerError, match="different config"):
        sample(other, tmp_path / "resumed", pair=pair, progress=False)
    sample(other, tmp_path / "resumed", pair=pair, progress=False, overwrite=True)
    assert read(tmp_path / "resumed")[2]["config"]["sampling"]["alpha"] == 0.5


def test_truncated_amateur_shares_weights_and_equals_a_shallower_model(tiny_models):
    from transformers import AutoModelForCausalLM

    expert = AutoModelForCausalLM.from_pretrained(tiny_models["llama"]).eval()
    amateur = truncated_amateur(expert, 1)
    assert amateur.model.embed_tokens.weight.data_ptr() == expert.model.embed_tokens.weight.data_ptr()
    assert len(amateur.model.layers) == 1 and len(expert.model.layers) == 2
    shallow = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], num_hidden_layers=1).eval()
    ids = torch.tensor([[5, 9, 30, 41, 7]])
    with torch.no_grad():
        torch.testing.assert_close(amateur(ids).logits, shallow(ids).logits)
    with pytest.raises(LightReasonerError, match="keep_layers 2"):
        truncated_amateur(expert, 2)


def test_mismatched_tokenizers_are_refused(tiny_models, tmp_path):
    cfg = tiny_config(tiny_models, "llama", "llama_othertok")
    with pytest.raises(LightReasonerError, match="tokenizer differs from the Expert's"):
        sample(cfg, tmp_path / "o", progress=False)
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_tokenizer_special_tokens_compared(tiny_models):
    from lightreasoner.config import ModelConfig
    from lightreasoner.models import tokenizers_match

    a = load_tokenizer(ModelConfig(model=str(tiny_models["llama"])))
    b = load_tokenizer(ModelConfig(model=str(tiny_models["llama"])))
    assert tokenizers_match(a, b) is None
    b.eos_token = "<pad>"
    assert "special tokens differ" in tokenizers_match(a, b)


def test_cli_errors_are_one_line_with_nonzero_exit(tiny_models, tmp_path, capsys):
    out = tmp_path / "o"
    rc = main(["sample", "--set", f"expert.model={tmp_path / 'missing-model'}", "--output", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: expert.model") and "model path not found" in err and "\n" not in err
    assert not (out / "manifest.json").exists()
    rc = main(["sample", "--set", "sampling.nope=1", "--output", str(out)])
    assert rc == 2 and "unknown key 'sampling.nope'" in capsys.readouterr().err


def test_cli_sample_runs(tiny_models, tmp_path, capsys):
    out = tmp_path / "o"
    args = ["sample", "--set", f"expert.model={tiny_models['llama']}", "--set", "amateur.keep_layers=1",
            "--set", "data.limit=2", "--set", "sampling.max_new_tokens=4", "--set", "sampling.beta=auto:0.5",
            "--output", str(out)]
    assert main(args) == 0
    assert "problems=2 steps=" in capsys.readouterr().out
    assert (out / "manifest.json").is_file() and not (out / "shards").exists()
    assert main(args) == 0  # a finished run is recognised, not redone


def test_sharded_run_merged_equals_single_run(tiny_models, tmp_path):
    from lightreasoner.sampling import merge_shards

    cfg = tiny_config(tiny_models, **{"data.limit": 6, "sampling.batch_size": 2, "sampling.beta": "auto:0.3"})
    pair = load_pair(cfg)
    sample(cfg, tmp_path / "single", pair=pair, progress=False)
    shard_dirs = [tmp_path / f"shard{i}" for i in range(2)]
    for i, folder in enumerate(shard_dirs):
        sample(cfg, folder, pair=pair, progress=False, shard=(i, 2))
        assert (folder / "shard.json").is_file() and not (folder / "manifest.json").exists()
    with pytest.raises(LightReasonerError, match="expected 0..2 once each"):
        merge_shards(cfg, shard_dirs[:1], tmp_path / "partial")
    assert not (tmp_path / "partial" / "manifest.json").exists()
    result = merge_shards(cfg, shard_dirs, tmp_path / "merged")
    single = read(tmp_path / "single")[2]
    assert result.manifest["effective_beta"] == single["effective_beta"]
    for name in ("trajectories.parquet", "samples.parquet"):
        assert pq.read_table(tmp_path / "single" / name).equals(pq.read_table(tmp_path / "merged" / name))
    with pytest.raises(LightReasonerError, match="index must be in"):
        sample(cfg, tmp_path / "bad", pair=pair, shard=(2, 2))
