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
                              None, cfg.sampling.alpha, 0.4, skip_first_step=True)
        assert 0 not in ref.cand_position
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
    all_kl = np.concatenate([t["step_kl"][1:] for t in trajs])  # t = 0 is never a candidate step
    assert abs(len(samples) / len(all_kl) - 0.25) < 0.1 and manifest["counts"]["steps"] == len(all_kl)
    kept = {(s["problem_id"], s["position"]) for s in samples}
    for t in trajs:
        for pos, kl in enumerate(t["step_kl"]):
            assert ((t["problem_id"], pos) in kept) == (kl > beta and pos > 0)
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
    from lightreasoner.models import tokenizer_differences, tokenizers_match

    a = load_tokenizer(ModelConfig(model=str(tiny_models["llama"])))
    b = load_tokenizer(ModelConfig(model=str(tiny_models["llama"])))
    assert tokenizers_match(a, b) is None and tokenizer_differences(a, b) == (None, [])
    b.eos_token = "<pad>"  # another eos: allowed, both ids whose role differs are left out
    assert tokenizers_match(a, b) is None
    assert tokenizer_differences(a, b)[1] == sorted({a.convert_tokens_to_ids("<pad>"), a.eos_token_id})


# --- the paper's five pairs: one Amateur (Qwen2.5-0.5B) for Experts whose special tokens differ ------


def _qwen_like(eos: str, specials: tuple[str, ...] = ("<|endoftext|>",), added: tuple[str, ...] = ()):
    from conftest import build_tokenizer

    tok = build_tokenizer(extra_special=specials)
    tok.eos_token = eos
    if added:
        tok.add_tokens(list(added), special_tokens=True)
    return tok


def test_instruct_pair_other_eos_is_allowed_and_its_ids_left_out():
    from lightreasoner.models import tokenizer_differences

    amateur = _qwen_like("<|endoftext|>")  # Qwen2.5-0.5B: eos <|endoftext|>
    expert = _qwen_like("<|im_end|>")  # Qwen2.5-Math-*-Instruct: eos <|im_end|>, same vocabulary
    problem, excluded = tokenizer_differences(expert, amateur)
    assert problem is None
    assert excluded == sorted(expert.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"]))


def test_deepseek_pair_other_added_tokens_are_allowed_and_left_out():
    from lightreasoner.models import tokenizer_differences

    amateur = _qwen_like("<|endoftext|>")
    # DeepSeek-R1-Distill-Qwen: the Qwen vocabulary, other text for the special ids, extra added tokens
    expert = _qwen_like("<|end_of_sentence|>", specials=("<|end_of_sentence|>",), added=("<think>", "</think>"))
    problem, excluded = tokenizer_differences(expert, amateur)
    assert problem is None
    ids = expert.convert_tokens_to_ids(["<|end_of_sentence|>", "<think>", "</think>"])
    assert set(ids) <= set(excluded)
    ordinary = set(expert.get_vocab().values()) - set(expert.convert_tokens_to_ids(
        ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "<|end_of_sentence|>", "<think>", "</think>"]))
    assert not ordinary & set(excluded)
    # an Amateur with the Expert's vocabulary plus one added token is allowed too (nothing to leave out)
    bigger = _qwen_like("<|endoftext|>", added=("<extra>",))
    assert tokenizer_differences(amateur, bigger) == (None, [])


def test_truly_different_vocabulary_is_refused(tiny_models):
    from conftest import build_tokenizer

    from lightreasoner.models import tokenizer_differences

    problem, _ = tokenizer_differences(build_tokenizer(), build_tokenizer(vocab_size=300))
    assert problem and problem.startswith("vocabularies differ")


def test_deepseek_like_pair_samples_without_the_excluded_ids(tmp_path):
    from conftest import save_model

    from lightreasoner.config import load_config

    amateur_tok = _qwen_like("<|endoftext|>")
    expert_tok = _qwen_like("<|end_of_sentence|>", specials=("<|end_of_sentence|>",), added=("<think>",))
    save_model(tmp_path / "expert", "llama", expert_tok, seed=0)
    save_model(tmp_path / "amateur", "llama", amateur_tok, seed=1, layers=1, vocab_pad=8)
    cfg = load_config(None, [f"expert.model={tmp_path / 'expert'}", f"amateur.model={tmp_path / 'amateur'}",
                             "data.limit=3", "sampling.max_new_tokens=10", "sampling.beta=0",
                             "sampling.alpha=0.01", "tracking.enabled=false"])
    pair = load_pair(cfg)
    excluded = set(pair.excluded_ids)
    assert expert_tok.convert_tokens_to_ids("<think>") in excluded
    assert expert_tok.convert_tokens_to_ids("<|end_of_sentence|>") in excluded
    # the contrast and its oracle agree with excluded ids; excluded ids never become targets
    g = torch.Generator().manual_seed(0)
    e, a = torch.randn(4, pair.vocab_size, generator=g) * 3, torch.randn(4, pair.vocab_size, generator=g) * 3
    e[:, sorted(excluded)] += 20.0  # the Expert's favourite tokens are the excluded ones
    res = contrast(e, a, 0.2, None, excluded_ids=sorted(excluded))
    for i in range(4):
        kl, ids, w = contrast_step_reference(e[i], a[i], 0.2, sorted(excluded))
        assert abs(res.kl[i] - kl) < 1e-4 and res.targets[i].tolist() == ids.tolist()
        np.testing.assert_allclose(res.weights[i], w, atol=1e-5)
        assert not set(ids.tolist()) & excluded
    sample(cfg, tmp_path / "o", pair=pair, progress=False)
    _, samples, manifest = read(tmp_path / "o")
    assert manifest["models"]["excluded_token_ids"] == sorted(excluded)
    assert samples and not any(set(s["target_token_ids"]) & excluded for s in samples)


def test_skip_first_step():
    e, a = torch.randn(5, 30) * 3, torch.randn(5, 30) * 3
    candidates = torch.tensor([False, True, True, True, True])
    res = contrast(e, a, 0.2, None, candidates=candidates)
    assert res.targets[0] is None and all(t is not None for t in res.targets[1:]) and res.kl[0] > 0


def test_first_step_kept_only_when_not_skipped(tiny_models, tmp_path):
    cfg = tiny_config(tiny_models, **{"sampling.beta": 0, "data.limit": 3, "sampling.max_new_tokens": 6})
    pair = load_pair(cfg)
    sample(cfg, tmp_path / "skip", pair=pair, progress=False)
    sample(cfg.model_copy(update={"sampling": cfg.sampling.model_copy(update={"skip_first_step": False})}),
           tmp_path / "all", pair=pair, progress=False)
    skip, every = read(tmp_path / "skip")[1], read(tmp_path / "all")[1]
    assert 0 not in {s["position"] for s in skip} and 0 in {s["position"] for s in every}
    assert {(s["problem_id"], s["position"]) for s in every if s["position"] > 0} == {
        (s["problem_id"], s["position"]) for s in skip}


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


def test_generation_is_greedy_even_when_the_models_own_config_samples(tiny_models):
    """DeepSeek-R1-Distill's generation config samples (temperature 0.6, top_p 0.95): the Expert still
    writes the greedy trajectory."""
    from lightreasoner.config import ModelConfig
    from lightreasoner.models import generate_greedy, load_model

    cfg = ModelConfig(model=str(tiny_models["llama"]))
    model, tok = load_model(cfg), load_tokenizer(cfg)
    prompt = [tok.bos_token_id, 40, 41, 42]
    greedy, _ = generate_greedy(model, tok, [prompt], 8, stop_at_eos=False)
    model.generation_config.do_sample, model.generation_config.temperature = True, 5.0
    model.generation_config.top_p, model.generation_config.top_k = 0.95, 0
    for seed in range(3):
        torch.manual_seed(seed)
        assert generate_greedy(model, tok, [prompt], 8, stop_at_eos=False)[0] == greedy
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(8):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    assert greedy[0] == ids[len(prompt):]


# --- sampling.decoding: generation-config ---------------------------------------------------------------


def _sampling_expert(pair, temperature=0.6, top_p=0.95, top_k=None, repetition_penalty=None):
    """The Expert's generation config samples, as DeepSeek-R1-Distill's (temperature 0.6, top-p 0.95)."""
    gen = pair.expert.generation_config
    gen.do_sample, gen.temperature, gen.top_p, gen.top_k = True, temperature, top_p, top_k
    gen.repetition_penalty = repetition_penalty
    return pair


def test_resolve_decoding_follows_the_models_generation_config(tiny_models):
    from lightreasoner.sampling import Decoding, resolve_decoding

    cfg = tiny_config(tiny_models)
    pair = load_pair(cfg)
    pair.expert.generation_config.do_sample = False
    assert resolve_decoding("generation-config", 3, pair.expert) == Decoding("generation-config", seed=3)
    assert not resolve_decoding("generation-config", 3, pair.expert).processed  # a base model: greedy as before
    _sampling_expert(pair)
    d = resolve_decoding("generation-config", 7, pair.expert)
    # top_k unset in the file: generate()'s default 50 applies, as in the authors' script
    assert (d.do_sample, d.temperature, d.top_p, d.top_k, d.repetition_penalty, d.seed) == (True, 0.6, 0.95, 50,
                                                                                              1.0, 7)
    assert d.record()["expert_scores"] == "processed"
    assert resolve_decoding("greedy", 7, pair.expert) == Decoding(seed=7)  # greedy ignores the model's config
    pair.expert.generation_config.min_p = 0.1
    with pytest.raises(LightReasonerError, match="min_p=0.1, which the contrast does not reproduce"):
        resolve_decoding("generation-config", 0, pair.expert)


@pytest.mark.parametrize("sample_, penalty", [(True, 1.0), (True, 1.3), (False, 1.3)])
def test_processed_scores_equal_transformers_logits_processors(sample_, penalty):
    from lightreasoner.sampling import Decoding, process_scores, reference_processors

    torch.manual_seed(0)
    d = Decoding("generation-config", sample_, 0.6 if sample_ else 1.0, 20 if sample_ else 0,
                 0.9 if sample_ else 1.0, penalty)
    logits = torch.randn(12, 300) * 3
    history = [torch.randint(0, 300, (int(n),)).tolist() for n in torch.randint(1, 40, (12,))]
    width = max(len(h) for h in history)
    padded = torch.tensor([h + [h[-1]] * (width - len(h)) for h in history])
    fast = process_scores(logits, d, padded)
    steps = reference_processors(d)
    for i, h in enumerate(history):
        ref = steps(torch.tensor([h]), logits[i : i + 1].clone())[0]
        assert torch.equal(torch.isneginf(fast[i]), torch.isneginf(ref))
        finite = ~torch.isneginf(ref)
        torch.testing.assert_close(fast[i][finite], ref[finite])
    if sample_:
        assert torch.isneginf(fast).any(dim=-1).all()  # top-k / top-p filtered every row


def test_contrast_of_processed_scores_has_no_mass_outside_their_support():
    from lightreasoner.sampling import Decoding, process_scores

    torch.manual_seed(1)
    e, a = torch.randn(6, 200) * 4, torch.randn(6, 200)
    pe = process_scores(e, Decoding("generation-config", True, 0.6, 0, 0.9))
    result = contrast(pe, a, 0.2, None)
    assert np.isfinite(result.kl).all()
    for i in range(6):
        kl, ids, w = contrast_step_reference(pe[i], a[i], 0.2)
        assert abs(kl - result.kl[i]) < 1e-6
        assert result.targets[i].tolist() == ids.tolist()
        assert not torch.isneginf(pe[i, ids]).any()


@pytest.mark.parametrize("from_generation", [True, False])
def test_generation_config_fast_equals_reference_on_the_same_trajectories(tiny_models, tmp_path, from_generation):
    from lightreasoner.sampling import Decoding

    cfg = tiny_config(tiny_models, **{"sampling.beta": 0.1, "data.limit": 5, "sampling.decoding": "generation-config",
                                      "sampling.seed": 5, "performance.score_from_generation": from_generation})
    pair = _sampling_expert(load_pair(cfg), top_k=40, repetition_penalty=1.2)
    sample(cfg, tmp_path / "fast", pair=pair, progress=False)
    trajectories, samples, manifest = read(tmp_path / "fast")
    assert manifest["decoding"] == {"mode": "generation-config", "do_sample": True, "temperature": 0.6, "top_k": 40,
                                    "top_p": 0.95, "repetition_penalty": 1.2, "seed": 5, "expert_scores": "processed"}
    assert manifest["counts"]["argmax_mismatch_steps"] == 0  # every sampled token lies in the processed support
    assert manifest["counts"]["selected"] == len(samples) > 0
    decoding = Decoding(**{k: v for k, v in manifest["decoding"].items() if k != "expert_scores"})
    by_problem = {}
    for s in samples:
        by_problem.setdefault(s["problem_id"], []).append(s)
    for traj in trajectories:
        ref = score_reference(pair, traj["problem_id"], traj["prompt_token_ids"], traj["completion_token_ids"],
                              None, cfg.sampling.alpha, 0.1, skip_first_step=True, decoding=decoding)
        assert ref.argmax_mismatch == 0
        fast = by_problem.get(traj["problem_id"], [])
        assert [s["position"] for s in fast] == ref.cand_position
        for s, ids, w in zip(fast, ref.cand_targets, ref.cand_weights, strict=True):
            assert s["target_token_ids"] == ids.tolist()
            np.testing.assert_allclose(s["target_weights"], w, atol=1e-4)
        np.testing.assert_allclose(traj["step_kl"], ref.step_kl, atol=1e-4)
    greedy = tiny_config(tiny_models, **{"sampling.beta": 0.1, "data.limit": 5})
    sample(greedy, tmp_path / "greedy", pair=pair, progress=False)
    assert read(tmp_path / "greedy")[2]["decoding"]["mode"] == "greedy"
    assert read(tmp_path / "greedy")[2]["fingerprint"] != manifest["fingerprint"]
    assert ([t["completion_token_ids"] for t in read(tmp_path / "greedy")[0]]
            != [t["completion_token_ids"] for t in trajectories])  # sampled, not the argmax


def test_generation_config_sampling_is_seeded_resumable_and_shardable(tiny_models, tmp_path, monkeypatch):
    from lightreasoner.sampling import merge_shards

    sets = {"data.limit": 6, "sampling.batch_size": 2, "sampling.decoding": "generation-config", "sampling.seed": 1}
    cfg = tiny_config(tiny_models, **sets)
    pair = _sampling_expert(load_pair(cfg), temperature=1.5, top_p=1.0)
    sample(cfg, tmp_path / "whole", pair=pair, progress=False)
    real, calls = sampling.generate_trajectories, {"n": 0}

    def dies_on_third_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sampling, "generate_trajectories", dies_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        sample(cfg, tmp_path / "resumed", pair=pair, progress=False)
    monkeypatch.setattr(sampling, "generate_trajectories", real)
    torch.manual_seed(12345)  # the global RNG elsewhere does not matter: each batch draws from seed + index
    sample(cfg, tmp_path / "resumed", pair=pair, progress=False)
    for i in range(2):
        sample(cfg, tmp_path / f"shard{i}", pair=pair, progress=False, shard=(i, 2))
    merge_shards(cfg, [tmp_path / "shard0", tmp_path / "shard1"], tmp_path / "merged")
    for folder in ("resumed", "merged"):
        for name in ("trajectories.parquet", "samples.parquet"):
            assert pq.read_table(tmp_path / "whole" / name).equals(pq.read_table(tmp_path / folder / name))
    assert read(tmp_path / "merged")[2]["decoding"]["seed"] == 1
    other = tiny_config(tiny_models, **{**sets, "sampling.seed": 2})
    sample(other, tmp_path / "seed2", pair=pair, progress=False)
    assert ([t["completion_token_ids"] for t in read(tmp_path / "seed2")[0]]
            != [t["completion_token_ids"] for t in read(tmp_path / "whole")[0]])
