"""The pipeline DAG, inside an exit handler that always ends the MLflow parent run:

    configure -> prepare -> sample (N shards in parallel) -> merge -> train -> evaluate -> register
                                            [exit handler: finish_run, FINISHED or FAILED]

``method`` picks the branch (``dsl.If``): lightreasoner (the DAG above, the default), sft (the SFT
baseline: rejection sampling + LoRA -> evaluate) or both (the two from the same prepared problems, then
the efficiency report LightReasoner / SFT). Each finished stage is recorded in MLflow by its own small
``log_stage`` step, so the stages themselves stay pure and cacheable.

The parameters are not written here: :mod:`lightreasoner.parameters` derives them (names, types and
defaults: the paper's config) from the config models, and this module builds the signature from that table.

    python -m lightreasoner.pipelines.lightreasoner_pipeline [-o FILE] [--image IMG] [--hf-cache-pvc NAME]
"""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

from kfp import compiler, dsl
from kfp import kubernetes as k8s

from lightreasoner import parameters, stages
from lightreasoner.images import image as default_image

from ..components import make_components

COMPILED = Path(__file__).with_name("lightreasoner_pipeline.yaml")
PIPELINE_NAME = "lightreasoner"
HF_CACHE = "/cache/huggingface"


def _gpu(task, p, memory: str, cpu: str, hf_cache_pvc: str | None):
    """GPU stage: one accelerator, CPU/memory requests and limits, GPU nodes, the model cache (a shared
    PVC when given, else a scratch volume), HF_TOKEN from an optional Secret."""
    task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
    task.set_cpu_request(cpu).set_cpu_limit(cpu).set_memory_request(memory).set_memory_limit(memory)
    k8s.add_node_selector_json(task, p["gpu_node_selector"])
    k8s.add_toleration_json(task, p["gpu_tolerations"])
    if hf_cache_pvc:
        k8s.mount_pvc(task, pvc_name=hf_cache_pvc, mount_path=HF_CACHE)
    else:
        k8s.empty_dir_mount(task, volume_name="hf-cache", mount_path=HF_CACHE, size_limit="50Gi")
    task.set_env_variable("HF_HOME", HF_CACHE)
    k8s.use_secret_as_env(task, p["hf_token_secret"], {"HF_TOKEN": "HF_TOKEN"}, optional=True)
    # A preempted GPU pod retries; the stages resume from their own checkpoints.
    task.set_retry(num_retries=2, backoff_duration="60s", backoff_factor=2.0)
    return task


def _secrets(task, p):
    """S3 and MLflow credentials from Kubernetes Secrets, as environment variables (never parameters)."""
    s3, mlflow = p["s3_secret"], p["mlflow_secret"]
    k8s.use_secret_as_env(task, s3, {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
                                     "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"})
    k8s.use_secret_as_env(task, s3, {"AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL",
                                     "MLFLOW_S3_ENDPOINT_URL": "MLFLOW_S3_ENDPOINT_URL"}, optional=True)
    k8s.use_secret_as_env(task, mlflow, {"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI",
                                         "MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
                                         "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD",
                                         "MLFLOW_TRACKING_TOKEN": "MLFLOW_TRACKING_TOKEN"}, optional=True)
    return task


def _small(task):
    task.set_cpu_request("1").set_cpu_limit("2").set_memory_request("4Gi").set_memory_limit("8Gi")
    return task


S = stages.STAGES  # titles, GPU memory and the methods that run each stage: lightreasoner.stages


def branch(method, methods: tuple[str, ...], name: str):
    """The ``dsl.If`` that runs a group of tasks for ``methods`` (a subset of the stage graph's methods)."""
    others = [m for m in stages.METHODS if m not in methods]
    if len(methods) == 1:
        return dsl.If(method == methods[0], name=name)
    if len(others) == 1:
        return dsl.If(method != others[0], name=name)
    raise ValueError(f"no single condition selects the methods {methods}")


def _signature() -> inspect.Signature:
    return inspect.Signature([
        inspect.Parameter(p.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=p.default, annotation=p.type)
        for p in parameters.table()
    ])


def build_pipeline(image: str | None = None, kubernetes: bool = True, hf_cache_pvc: str | None = None):
    """The pipeline function for ``image``. ``kubernetes=False`` leaves out the platform settings
    (secrets, GPUs, node selectors, volumes), which a local run ignores anyway. ``hf_cache_pvc``: an
    existing PersistentVolumeClaim mounted as the Hugging Face cache of every GPU step (models are
    downloaded once, not per pod); empty: a scratch volume per pod."""
    c = make_components(image or default_image())
    signature = _signature()

    def lightreasoner_pipeline(*args, **kwargs):
        p = signature.bind(*args, **kwargs).arguments  # KFP passes the parameters' channels positionally
        settings = parameters.settings_text(p)  # name={{placeholder}} lines: filled in by Kubeflow
        finish = c.finish_run(config_yaml=p["config_yaml"], settings=settings,
                              kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        finish.set_display_name("end the MLflow run").set_caching_options(False)
        pure, side, gpu = [], [], []  # tasks by kind, for the platform settings below
        with dsl.ExitHandler(finish, name="lightreasoner-run"):
            conf = c.configure_run(config_yaml=p["config_yaml"], settings=settings, run_name=p["run_name"],
                                   kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, method=p["method"])
            conf.set_display_name("check settings, open the MLflow run")
            parent, full = conf.outputs["parent_run_id"], conf.outputs["full"]
            side.append(conf)

            def logged(task, stage: str, output: str):
                log = c.log_stage(config=full, stage=stage, output=task.outputs[output], parent_run_id=parent)
                log.set_display_name(f"log {stage} to MLflow")
                side.append(log)
                return log

            prep = c.prepare_data(config=conf.outputs["prepare"])
            prep.set_display_name(S["prepare"].title)
            pure.append(prep)
            logged(prep, "prepare", "problems")
            problems = prep.outputs["problems"]

            def sft_branch():
                baseline = c.sft_baseline(config=conf.outputs["sft"], problems=problems)
                baseline.set_display_name(S["sft"].title)
                scored_sft = c.evaluate(config=conf.outputs["evaluate"], adapter=baseline.outputs["adapter"])
                scored_sft.set_display_name(S["evaluate_sft"].title)
                pure.extend([baseline, scored_sft])
                gpu.extend([(baseline, S["sft"].gpu_memory), (scored_sft, S["evaluate_sft"].gpu_memory)])
                logs = [logged(baseline, "sft", "adapter"), logged(scored_sft, "evaluate_sft", "evaluation")]
                return baseline, scored_sft, logs

            # The LightReasoner branch comes first so that its tasks keep their names (evaluate, not evaluate-2).
            with branch(p["method"], S["sample"].methods, "method-lightreasoner"):
                # Over a pipeline parameter, not a task output: kfp.local runs only the former.
                with dsl.ParallelFor(items=p["sampling_shards"], name="sampling-shards") as shard_index:
                    shard = c.sample_contrastive(config=conf.outputs["sample"], problems=problems,
                                                 shard_index=shard_index, shards=p["sampling_shards"])
                    shard.set_display_name(S["sample"].title)
                merged = c.merge_samples(config=conf.outputs["sample"], shards=dsl.Collected(shard.outputs["shard"]))
                merged.set_display_name("merge samples")
                samples = merged.outputs["samples"]
                tuned = c.finetune_lora(config=conf.outputs["train"], samples=samples)
                tuned.set_display_name(S["train"].title)
                scored = c.evaluate(config=conf.outputs["evaluate"], adapter=tuned.outputs["adapter"],
                                    samples=samples)
                scored.set_display_name(S["evaluate"].title)
                pure.extend([shard, merged, tuned, scored])
                gpu.extend([(shard, S["sample"].gpu_memory), (tuned, S["train"].gpu_memory),
                            (scored, S["evaluate"].gpu_memory)])
                lr_logs = [logged(merged, "sample", "samples"), logged(tuned, "train", "adapter")]
                log_eval = logged(scored, "evaluate", "evaluation")
                reg = c.register_model(config=full, samples=samples, adapter=tuned.outputs["adapter"],
                                       evaluation=scored.outputs["evaluation"], parent_run_id=parent,
                                       promote=p["promote"])
                reg.set_display_name(S["register"].title).after(log_eval)
                # register is idempotent (a retry finds the version it made), so it may retry.
                reg.set_retry(num_retries=2, backoff_duration="30s")
                side.append(reg)
                # Inside the LightReasoner branch: the report reads both branches' outputs.
                with branch(p["method"], S["report"].methods, "method-both"):
                    baseline, scored_sft, sft_logs = sft_branch()
                    report = c.efficiency_report(
                        config=full, samples=samples, lr_adapter=tuned.outputs["adapter"],
                        lr_evaluation=scored.outputs["evaluation"], sft_adapter=baseline.outputs["adapter"],
                        sft_evaluation=scored_sft.outputs["evaluation"], parent_run_id=parent)
                    # The report reads the stages' metrics from the MLflow run: after every log step.
                    report.set_display_name(S["report"].title)
                    for task in (reg, *lr_logs, *sft_logs):
                        report.after(task)
                    side.append(report)
            with branch(p["method"], tuple(m for m in S["sft"].methods if m not in S["report"].methods),
                        "method-sft"):
                sft_branch()

        for task in pure:
            task.set_caching_options(True)
        for task in side:
            task.set_caching_options(False)
        if kubernetes:
            for task, memory in gpu:
                _gpu(task, p, memory=memory, cpu="8", hf_cache_pvc=hf_cache_pvc)
            for task in (*pure, *side, finish):
                _secrets(task, p)
            for task in (*side, finish, prep, merged):
                _small(task)

    lightreasoner_pipeline.__signature__ = signature
    return dsl.pipeline(name=PIPELINE_NAME,
                        description="LightReasoner: contrastive sampling, LoRA, evaluation, registry")(
        lightreasoner_pipeline)


def compile_pipeline(output: str | Path = COMPILED, image: str | None = None, hf_cache_pvc: str | None = None) -> Path:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(image, hf_cache_pvc=hf_cache_pvc), str(output))
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default=str(COMPILED))
    parser.add_argument("--image", default=None, help="container image (default: lightreasoner.images)")
    parser.add_argument("--hf-cache-pvc", default=None, help="PVC mounted as the GPU steps' model cache")
    args = parser.parse_args(argv)
    print(compile_pipeline(args.output, args.image, args.hf_cache_pvc))


if __name__ == "__main__":
    main()
