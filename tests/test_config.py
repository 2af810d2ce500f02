from pathlib import Path

import pytest

from lightreasoner.config import Config, load_config
from lightreasoner.errors import LightReasonerError


def test_defaults_are_the_papers():
    cfg = Config()
    assert cfg.sampling.alpha == 0.2 and cfg.sampling.beta == 0.4 and cfg.sampling.max_new_tokens == 128
    assert cfg.prompt.system_prompt == "Please reason step by step." and cfg.prompt.chat_template
    assert (cfg.training.lora_r, cfg.training.lora_alpha, cfg.training.learning_rate) == (8, 16, 5e-5)
    assert cfg.training.target_modules == ["q_proj", "v_proj"]
    # our own runs: the greedy trajectory and consecutive kept steps per update (the paper configs differ)
    assert (cfg.sampling.decoding, cfg.sampling.seed, cfg.training.sample_order) == ("greedy", 0, "grouped")


def test_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("expert:\n  model: some/model\nsampling:\n  beta: 0.5\n")
    cfg = load_config(f, ["sampling.beta=auto:0.2", "data.limit=10", "amateur.keep_layers=3", "sampling.batch_size=2"])
    assert cfg.expert.model == "some/model"
    assert cfg.sampling.beta == "auto:0.2" and cfg.data.limit == 10 and cfg.amateur.keep_layers == 3
    assert cfg.dump()["sampling"]["batch_size"] == 2


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["sampling.bogus=1"], "unknown key 'sampling.bogus'"),
        (["nosuch.key=1"], "unknown key 'nosuch'"),
        (["sampling.beta=auto:2"], "fraction must be in (0, 1]"),
        (["sampling.beta=lots"], "expected a number or auto"),
        (["sampling.alpha=0"], "sampling.alpha"),
        (["data.limit=-1"], "data.limit"),
        (["novalue"], "expected key=value"),
        (["sampling.decoding=sampled"], "sampling.decoding"),
        (["training.sample_order=random"], "training.sample_order"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(overrides, message):
    with pytest.raises(LightReasonerError) as err:
        load_config(None, overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_yaml_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("sampling: [1, 2\n")
    with pytest.raises(LightReasonerError, match="bad.yaml: not valid YAML"):
        load_config(f)
    with pytest.raises(LightReasonerError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
PAPER_EXPERTS = {"Qwen/Qwen2.5-Math-1.5B", "Qwen/Qwen2.5-Math-7B", "Qwen/Qwen2.5-Math-1.5B-Instruct",
                 "Qwen/Qwen2.5-Math-7B-Instruct", "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.dump()["expert"]["model"]


def test_the_papers_five_pairs_and_schedule():
    paper = [load_config(p) for p in CONFIGS if p.name.startswith("paper-")]
    assert {c.expert.model for c in paper} == PAPER_EXPERTS
    for c in paper:
        t = c.training
        assert c.amateur.model == "Qwen/Qwen2.5-0.5B" and c.sampling.skip_first_step
        assert (t.samples_per_step, t.max_steps, t.learning_rate, t.lr_scheduler, t.warmup_ratio) == (
            16, 1000, 5e-5, "linear", 0.0)
        assert (c.sampling.alpha, c.sampling.beta, c.sampling.max_new_tokens, c.data.limit) == (0.2, 0.4, 128, 1000)
        # as the authors ran: generate() with the Expert's own generation config, a shuffled DataLoader
        assert (c.sampling.decoding, t.sample_order) == ("generation-config", "shuffled")


def _float_fields(model: type, prefix: str = "") -> list[tuple[str, object]]:
    """Every setting of the config whose type admits a float, found by walking the models."""
    import typing

    from pydantic import BaseModel

    found = []
    for name, info in model.model_fields.items():
        kinds = typing.get_args(info.annotation) or (info.annotation,)
        nested = [k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)]
        if nested:
            found += _float_fields(nested[0], f"{prefix}{name}.")
        elif float in kinds:
            found.append((f"{prefix}{name}", info))
    return found


FLOAT_FIELDS = _float_fields(Config)


def test_float_fields_are_discovered():
    keys = {key for key, _ in FLOAT_FIELDS}
    assert {"training.learning_rate", "training.epochs", "registry.min_delta", "sampling.beta",
            "evaluation.data.limit"} - keys == {"evaluation.data.limit"}  # an int is not a float setting
    assert len(keys) >= 10


@pytest.mark.parametrize("key, info", FLOAT_FIELDS, ids=[k for k, _ in FLOAT_FIELDS])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", ".nan", ".inf", "-.inf", "1e400"])
def test_every_float_setting_is_finite(key, info, value):
    """One rule for the whole config: nan, inf and -inf (however written) are refused in one line naming
    the key, unless the setting's description says it accepts them."""
    if "non-finite" in (info.description or ""):
        pytest.skip(f"{key}: its description allows non-finite values")
    with pytest.raises(LightReasonerError) as err:
        load_config(None, [f"{key}={value}"])
    line = str(err.value)
    assert key in line and "finite" in line and "\n" not in line, line
    # the same from a mapping (YAML file, pipeline parameters): a float, not text
    data: dict = {}
    node = data
    *sections, name = key.split(".")
    for section in sections:
        node = node.setdefault(section, {})
    node[name] = float(value.replace(".", "")) if value != "1e400" else float("inf")
    from lightreasoner.config import config_from_dict

    with pytest.raises(LightReasonerError, match="finite"):
        config_from_dict(data)


def test_issue_24_settings():
    for setting in ("training.learning_rate=inf", "registry.min_delta=nan", "training.epochs=inf"):
        with pytest.raises(LightReasonerError, match=f"{setting.split('=')[0]}: .*must be a finite number"):
            load_config(None, [setting])
