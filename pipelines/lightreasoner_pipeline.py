"""The pipeline DAG: prepare -> sample (N shards in parallel) -> merge -> train -> evaluate -> register.

``method`` picks the branch (``dsl.If``): lightreasoner (the DAG above, the default), sft (the SFT
baseline: rejection sampling + LoRA -> evaluate) or both (the two from the same prepared problems, then
the efficiency report LightReasoner / SFT).

Every parameter a user tunes is a pipeline parameter with the paper's default (Qwen2.5-Math-1.5B Expert,
Qwen2.5-0.5B Amateur, 1,000 GSM8K problems). Each maps to one config key (:data:`PARAMETERS`); the
components receive the base config YAML plus these values as ``key=value`` lines, so the config every
stage sees (and records in its manifest) is the one validated config of the library.

    python -m pipelines.lightreasoner_pipeline [-o pipelines/lightreasoner_pipeline.yaml] [--image IMG]
"""


import argparse
from pathlib import Path

from kfp import compiler, dsl
from kfp import kubernetes as k8s

from components import make_components
from lightreasoner.images import image as default_image

COMPILED = Path(__file__).with_name("lightreasoner_pipeline.yaml")
PIPELINE_NAME = "lightreasoner"

# pipeline parameter -> config key (keep these names: schedules and the Helm chart pass them).
PARAMETERS: dict[str, str] = {
    "expert": "expert.model",
    "amateur": "amateur.model",
    "amateur_keep_layers": "amateur.keep_layers",
    "dataset": "data.path",
    "dataset_split": "data.split",
    "num_problems": "data.limit",
    "alpha": "sampling.alpha",
    "beta": "sampling.beta",
    "max_new_tokens": "sampling.max_new_tokens",
    "sampling_batch_size": "sampling.batch_size",
    "lora_r": "training.lora_r",
    "lora_alpha": "training.lora_alpha",
    "learning_rate": "training.learning_rate",
    "epochs": "training.epochs",
    "max_steps": "training.max_steps",
    "train_batch_size": "training.batch_size",
    "eval_dataset": "evaluation.data.path",
    "eval_split": "evaluation.data.split",
    "eval_limit": "evaluation.data.limit",
    "eval_max_new_tokens": "evaluation.max_new_tokens",
    "registered_model": "registry.model_name",
    "min_delta": "registry.min_delta",
    "max_p": "registry.max_p",
    "mlflow_experiment": "tracking.experiment",
    "mlflow_tracking_uri": "tracking.tracking_uri",
    "sft_num_problems": "sft.num_problems",
    "sft_samples_per_problem": "sft.samples_per_problem",
    "sft_temperature": "sft.temperature",
    "sft_max_new_tokens": "sft.max_new_tokens",
}
METHODS = ("lightreasoner", "sft", "both")

GPU_STAGES = ("sample_contrastive", "finetune_lora", "evaluate", "sft_baseline")
HF_CACHE = "/cache/huggingface"


def _gpu(task, node_selector, tolerations, memory: str, cpu: str):
    """GPU stage: one accelerator, CPU/memory requests and limits, GPU nodes, a scratch model cache."""
    task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
    task.set_cpu_request(cpu).set_cpu_limit(cpu).set_memory_request(memory).set_memory_limit(memory)
    k8s.add_node_selector_json(task, node_selector)
    k8s.add_toleration_json(task, tolerations)
    k8s.empty_dir_mount(task, volume_name="hf-cache", mount_path=HF_CACHE, size_limit="50Gi")
    task.set_env_variable("HF_HOME", HF_CACHE)
    task.set_retry(num_retries=2, backoff_duration="60s", backoff_factor=2.0)
    return task


def _secrets(task, s3_secret, mlflow_secret):
    """S3 and MLflow credentials from Kubernetes Secrets, as environment variables (never parameters)."""
    k8s.use_secret_as_env(task, s3_secret, {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
                                            "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"})
    k8s.use_secret_as_env(task, s3_secret, {"AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL",
                                            "MLFLOW_S3_ENDPOINT_URL": "MLFLOW_S3_ENDPOINT_URL"}, optional=True)
    k8s.use_secret_as_env(task, mlflow_secret, {"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI",
                                                "MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
                                                "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD",
                                                "MLFLOW_TRACKING_TOKEN": "MLFLOW_TRACKING_TOKEN"}, optional=True)
    return task


def build_pipeline(image: "str | None" = None, kubernetes: bool = True):
    """The pipeline function for ``image``. ``kubernetes=False`` leaves out the platform settings
    (secrets, GPUs, node selectors), which a local run ignores anyway."""
    c = make_components(image or default_image())

    @dsl.pipeline(name=PIPELINE_NAME, description="LightReasoner: contrastive sampling, LoRA, evaluation, registry")
    def lightreasoner_pipeline(
        expert: str = "Qwen/Qwen2.5-Math-1.5B",
        amateur: str = "Qwen/Qwen2.5-0.5B",
        amateur_keep_layers: int = 0,
        dataset: str = "openai/gsm8k",
        dataset_split: str = "train",
        num_problems: int = 1000,
        alpha: float = 0.2,
        beta: str = "0.4",
        max_new_tokens: int = 128,
        sampling_batch_size: int = 64,
        sampling_shards: list = [0, 1, 2, 3],  # noqa: B006 - one sampling pod per entry (use num_shards=N)
        lora_r: int = 8,
        lora_alpha: int = 16,
        learning_rate: float = 5e-5,
        epochs: float = 1.0,
        max_steps: int = -1,
        train_batch_size: int = 16,
        eval_dataset: str = "openai/gsm8k",
        eval_split: str = "test",
        eval_limit: int = 0,
        eval_max_new_tokens: int = 512,
        registered_model: str = "lightreasoner-expert",
        min_delta: float = 0.0,
        max_p: float = 0.05,
        promote: bool = True,
        mlflow_experiment: str = "lightreasoner",
        mlflow_tracking_uri: str = "",
        method: str = "lightreasoner",
        sft_num_problems: int = 0,
        sft_samples_per_problem: int = 4,
        sft_temperature: float = 0.7,
        sft_max_new_tokens: int = 512,
        config_yaml: str = "",
        run_name: str = "",
        s3_secret: str = "lightreasoner-s3",
        mlflow_secret: str = "lightreasoner-mlflow",
        gpu_node_selector: dict = {"nvidia.com/gpu.present": "true"},  # noqa: B006 - KFP reads the default
        gpu_tolerations: list = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],  # noqa: B006
    ):
        overrides = (
            f"expert.model={expert}\namateur.model={amateur}\namateur.keep_layers={amateur_keep_layers}\n"
            f"data.path={dataset}\ndata.split={dataset_split}\ndata.limit={num_problems}\n"
            f"sampling.alpha={alpha}\nsampling.beta={beta}\nsampling.max_new_tokens={max_new_tokens}\n"
            f"sampling.batch_size={sampling_batch_size}\ntraining.lora_r={lora_r}\ntraining.lora_alpha={lora_alpha}\n"
            f"training.learning_rate={learning_rate}\ntraining.epochs={epochs}\ntraining.max_steps={max_steps}\n"
            f"training.batch_size={train_batch_size}\nevaluation.data.path={eval_dataset}\n"
            f"evaluation.data.split={eval_split}\nevaluation.data.limit={eval_limit}\n"
            f"evaluation.max_new_tokens={eval_max_new_tokens}\nregistry.model_name={registered_model}\n"
            f"registry.min_delta={min_delta}\nregistry.max_p={max_p}\ntracking.experiment={mlflow_experiment}\n"
            f"tracking.tracking_uri={mlflow_tracking_uri}\nsft.num_problems={sft_num_problems}\n"
            f"sft.samples_per_problem={sft_samples_per_problem}\nsft.temperature={sft_temperature}\n"
            f"sft.max_new_tokens={sft_max_new_tokens}"
        )
        prep = c.prepare_data(config_yaml=config_yaml, overrides=overrides, run_name=run_name,
                              kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        prep.set_display_name("prepare data").set_caching_options(True)
        parent = prep.outputs["parent_run_id"]
        problems = prep.outputs["problems"]

        def sft_branch(close_parent: bool):
            baseline = c.sft_baseline(config_yaml=config_yaml, overrides=overrides, problems=problems,
                                      parent_run_id=parent)
            baseline.set_display_name("SFT baseline (rejection sampling + LoRA)").set_caching_options(False)
            scored_sft = c.evaluate(config_yaml=config_yaml, overrides=overrides,
                                    adapter=baseline.outputs["adapter"], parent_run_id=parent,
                                    stage_name="evaluate_sft", close_parent=close_parent)
            scored_sft.set_display_name("evaluate base and SFT").set_caching_options(False)
            sft_tasks.extend([baseline, scored_sft])
            return baseline, scored_sft

        sft_tasks: list = []
        # The LightReasoner branch comes first so that its tasks keep their names (evaluate, not evaluate-2).
        with dsl.If(method != "sft", name="method-lightreasoner"):
            # Over a pipeline parameter, not a task output: kfp.local runs only the former.
            with dsl.ParallelFor(items=sampling_shards, name="sampling-shards") as shard_index:
                shard = c.sample_contrastive(config_yaml=config_yaml, overrides=overrides,
                                             problems=problems, shard_index=shard_index,
                                             shards=sampling_shards)
                shard.set_display_name("contrastive sampling shard").set_caching_options(True)
            merged = c.merge_samples(config_yaml=config_yaml, overrides=overrides,
                                     shards=dsl.Collected(shard.outputs["shard"]), parent_run_id=parent)
            merged.set_display_name("merge samples").set_caching_options(False)
            tuned = c.finetune_lora(config_yaml=config_yaml, overrides=overrides, samples=merged.outputs["samples"],
                                    parent_run_id=parent)
            tuned.set_display_name("LoRA fine-tuning").set_caching_options(False)
            scored = c.evaluate(config_yaml=config_yaml, overrides=overrides, adapter=tuned.outputs["adapter"],
                                parent_run_id=parent)
            scored.set_display_name("evaluate base and tuned").set_caching_options(False)
            reg = c.register_model(config_yaml=config_yaml, overrides=overrides, samples=merged.outputs["samples"],
                                   adapter=tuned.outputs["adapter"], evaluation=scored.outputs["evaluation"],
                                   parent_run_id=parent, promote=promote)
            reg.set_display_name("register and promote").set_caching_options(False)
            reg.set_retry(num_retries=2, backoff_duration="30s")
            with dsl.If(method == "both", name="method-both"):
                baseline, scored_sft = sft_branch(close_parent=False)
                report = c.efficiency_report(config_yaml=config_yaml, overrides=overrides,
                                             samples=merged.outputs["samples"], lr_adapter=tuned.outputs["adapter"],
                                             lr_evaluation=scored.outputs["evaluation"],
                                             sft_adapter=baseline.outputs["adapter"],
                                             sft_evaluation=scored_sft.outputs["evaluation"], parent_run_id=parent)
                report.set_display_name("efficiency report: LightReasoner vs SFT").set_caching_options(False)
                report.after(reg)
        with dsl.If(method == "sft", name="method-sft"):
            sft_branch(close_parent=True)
        if kubernetes:
            _gpu(shard, gpu_node_selector, gpu_tolerations, memory="48Gi", cpu="8")
            _gpu(tuned, gpu_node_selector, gpu_tolerations, memory="64Gi", cpu="8")
            _gpu(scored, gpu_node_selector, gpu_tolerations, memory="48Gi", cpu="8")
            for task in sft_tasks[0::2]:
                _gpu(task, gpu_node_selector, gpu_tolerations, memory="64Gi", cpu="8")
            for task in sft_tasks[1::2]:
                _gpu(task, gpu_node_selector, gpu_tolerations, memory="48Gi", cpu="8")
            for task in (prep, shard, merged, tuned, scored, reg, report, *sft_tasks):
                _secrets(task, s3_secret, mlflow_secret)
            for task in (prep, merged, reg, report):
                task.set_cpu_request("1").set_cpu_limit("2").set_memory_request("4Gi").set_memory_limit("8Gi")

    return lightreasoner_pipeline


def compile_pipeline(output: str | Path = COMPILED, image: str | None = None) -> Path:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(image), str(output))
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default=str(COMPILED))
    parser.add_argument("--image", default=None, help="container image (default: lightreasoner.images)")
    args = parser.parse_args(argv)
    print(compile_pipeline(args.output, args.image))


if __name__ == "__main__":
    main()
