"""Command line: ``lightreasoner <command>``. Each command is a thin wrapper over a stage function.

Bad input raises :class:`LightReasonerError`; ``main`` prints it as one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from contextlib import ExitStack

from .errors import LightReasonerError, write_error
from .stages import METHODS
from .storage import is_s3, local_input, local_output

# The page holding the generated config reference: `config --update-readme` without a path, in the repository.
CONFIG_REFERENCE_PAGE = "docs/configuration.md"

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    def register(fn):
        COMMANDS[name] = fn
        return fn

    return register


RUN_NAME_HELP = "name of the MLflow parent run (default: <method>-<date>-<time>)"


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (defaults apply to everything it leaves out)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set sampling.beta=auto:0.2 (repeatable)")


def config_from_args(args: argparse.Namespace):
    from .config import load_config

    return load_config(args.config, args.overrides)


# --- commands ---------------------------------------------------------------------------------------


@command("prepare-data")
def cmd_prepare_data(args: argparse.Namespace) -> int:
    from .data import prepare_data

    cfg = config_from_args(args)
    if not is_s3(args.output):
        print(prepare_data(cfg.data, args.output))
        return 0
    with local_output(args.output) as out:
        prepare_data(cfg.data, out)
    print(args.output)
    return 0


@command("sample")
def cmd_sample(args: argparse.Namespace) -> int:
    from .sampling import sample

    cfg = config_from_args(args)
    shard = parse_shard(args.shard) if args.shard else None
    with local_output(args.output, resume=True) as out:
        result = sample(cfg, out, reference=args.reference, overwrite=args.overwrite, shard=shard)
        result.output = args.output
    if shard is not None:
        print(f"shard={shard[0]}/{shard[1]} batches={len(result.manifest['batches'])} output={result.output}")
        return 0
    print_sample_summary(result)
    return 0


def parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise LightReasonerError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    if count < 1:
        raise LightReasonerError(f"--shard {text!r}: N must be at least 1")
    return index, count


def print_sample_summary(result) -> None:
    counts = result.manifest["counts"]
    print(
        f"problems={counts['problems']} steps={counts['steps']} selected={counts['selected']} "
        f"kept_fraction={counts['kept_fraction']:.3f} effective_beta={result.manifest['effective_beta']:.4f} "
        f"output={result.output}"
    )


@command("merge-samples")
def cmd_merge_samples(args: argparse.Namespace) -> int:
    from .sampling import merge_shards

    cfg = config_from_args(args)
    with ExitStack() as stack:
        shards = [stack.enter_context(local_input(s)) for s in args.shards]
        out = stack.enter_context(local_output(args.output))
        result = merge_shards(cfg, shards, out, overwrite=args.overwrite)
        result.output = args.output
    print_sample_summary(result)
    return 0


@command("train")
def cmd_train(args: argparse.Namespace) -> int:
    from .training import train

    if args.layout:
        args.overrides = [*args.overrides, f"training.layout={args.layout}"]
    cfg = config_from_args(args)
    with local_input(args.samples) as samples, local_output(args.output, resume=args.resume) as out:
        result = train(cfg, samples, out, resume=args.resume, merge=args.merge)
        result.output = args.output
    m = result.manifest
    loss = m["final_loss"]
    print(
        f"steps={m['steps']} tuned_tokens={m['tuned_tokens']} final_loss="
        f"{'n/a' if loss is None else f'{loss:.4f}'} layout={m['layout']} output={result.output}"
    )
    return 0


@command("evaluate")
def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate

    for flag, key in (("benchmarks", "evaluation.benchmarks"), ("benchmark_dir", "evaluation.benchmark_dir"),
                      ("protocol", "evaluation.protocol")):
        if getattr(args, flag, None) is not None:
            args.overrides = [*args.overrides, f"{key}={getattr(args, flag)}"]
    if args.side and not args.shard:
        raise LightReasonerError("--side: only with --shard I/N")
    cfg = config_from_args(args)
    with ExitStack() as stack:
        adapter = stack.enter_context(local_input(args.adapter)) if args.adapter else None
        out = stack.enter_context(local_output(args.output))
        if args.shard:
            from .evaluation import evaluate_shard

            shard = parse_shard(args.shard)
            manifest = evaluate_shard(cfg, args.model, adapter, out, shard, limit=args.limit,
                                      sides=(args.side,) if args.side else None)
            print(f"shard={shard[0]}/{shard[1]} sides={','.join(manifest['sides'])} "
                  f"problems={sum(manifest['problems'].values())} output={args.output}")
            return 0
        result = evaluate(cfg, model=args.model, adapter=adapter, output=out, limit=args.limit)
        result.output = args.output
    print_evaluation(result)
    return 0


@command("evaluate-merge")
def cmd_evaluate_merge(args: argparse.Namespace) -> int:
    from .evaluation import merge_evaluation

    with ExitStack() as stack:
        shards = [stack.enter_context(local_input(s)) for s in args.shards]
        out = stack.enter_context(local_output(args.output))
        result = merge_evaluation(shards, out)
        result.output = args.output
    print_evaluation(result)
    return 0


def print_evaluation(result) -> None:
    m = result.metrics

    def fmt(value, spec=".4f"):
        return "null" if value is None else format(value, spec)

    print(
        f"n={m['n']} accuracy_base={fmt(m['accuracy_base'])} accuracy_tuned={fmt(m['accuracy_tuned'])} "
        f"delta={fmt(m['delta'], '+.4f')} ci95=[{fmt(m['delta_ci_low'], '+.4f')}, {fmt(m['delta_ci_high'], '+.4f')}] "
        f"mcnemar_p={fmt(m['mcnemar_p'], '.4g')} output={result.output}"
    )
    from .presentation import benchmark_markdown

    table = benchmark_markdown(m)
    if table:
        print(f"protocol {m['protocol']['name']} (accuracy in %; the average is over the benchmarks)")
        print(table, end="")


@command("benchmarks")
def cmd_benchmarks(args: argparse.Namespace) -> int:
    from .benchmarks import BENCHMARKS, load_benchmark, row_count_note

    for flag, key in (("benchmarks", "evaluation.benchmarks"), ("benchmark_dir", "evaluation.benchmark_dir")):
        if getattr(args, flag, None) is not None:
            args.overrides = [*args.overrides, f"{key}={getattr(args, flag)}"]
    ecfg = config_from_args(args).evaluation
    for name in ecfg.benchmarks or list(BENCHMARKS):
        data = load_benchmark(name, ecfg.benchmark_dir)
        version = data.version()
        note = row_count_note(name, version)
        print(f"{name}  {data.source}  {len(data.problems):,} rows  sha256 {data.problems_sha256}  "
              f"{data.benchmark.answer_type}" + (f"  (the paper's set has {data.benchmark.paper_rows:,})" if note else ""))
    return 0


@command("doctor")
def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import doctor

    return doctor(namespace=args.namespace, kfp_host=args.kfp_host, mlflow_uri=args.mlflow_uri,
                  secrets=args.secrets, context=args.context, timeout=args.timeout,
                  optional_secrets=args.optional_secrets)


@command("register")
def cmd_register(args: argparse.Namespace) -> int:
    from .registry import register
    from .tracking import is_embedded, ui_command

    cfg = config_from_args(args)
    with ExitStack() as stack:
        training, evaluation = (stack.enter_context(local_input(p)) for p in (args.training, args.evaluation))
        samples = stack.enter_context(local_input(args.samples)) if args.samples else None
        result = register(cfg, training, evaluation, samples, parent_run_id=args.parent_run_id)
    print(f"registered {result.name} version {result.version} (alias {result.alias}) run={result.run_id} "
          f"delta={result.tags.get('delta', '?')} mcnemar_p={result.tags.get('mcnemar_p', '?')}")
    if is_embedded(cfg):
        print(f"browse: {ui_command(cfg)}")
    return 0


@command("promote")
def cmd_promote(args: argparse.Namespace) -> int:
    from .registry import promote

    cfg = config_from_args(args)
    promote(cfg, args.model, args.min_delta, args.max_p)
    return 0


@command("compare")
def cmd_compare(args: argparse.Namespace) -> int:
    from .registry import compare

    cfg = config_from_args(args)
    table = compare(cfg, args.run_ids, echo=not args.json)
    if args.json:
        print_json(table.as_dict())
    return 0


@command("pipeline")
def cmd_pipeline(args: argparse.Namespace) -> int:
    try:
        from lightreasoner.pipelines import client
        from lightreasoner.pipelines.lightreasoner_pipeline import BUILD, compile_pipeline
    except ImportError as exc:
        raise LightReasonerError(f"pipeline commands need kfp and the pipelines package ({exc})") from None

    from .stages import parse_timeout

    action = args.pipeline_command
    timeouts = dict(parse_timeout(item) for item in getattr(args, "step_timeout", None) or [])
    if action == "compile":
        print(compile_pipeline(args.output or BUILD, args.image, args.hf_cache_pvc, timeouts))
        return 0
    if action == "run-local":
        from .runner import demo_config
        from .tracking import ui_command_for

        # --quick: exactly `run --quick` (the demo with its small sizes), else the config or the defaults
        cfg = demo_config(args.config, args.overrides, True) if args.quick else config_from_args(args)
        params = {"run_name": args.run_name} if args.run_name else None
        run = client.run_local(cfg, args.workdir, shards=args.shards, promote=not args.no_promote,
                               method=args.method, params=params)
        print(f"local run finished: {run.root}")
        for name, path in sorted(run.outputs.items()):
            print(f"  {name}: {path}")
        if run.tracking_uri:
            print(f"browse the run: {ui_command_for(run.tracking_uri)}")
        return 0
    if action == "unschedule":
        count = client.unschedule(args.host, experiment=args.experiment, name=args.name, namespace=args.namespace,
                                  token=client.read_token(args.token_file))
        print(f"deleted {count} recurring run(s) named {args.name} on {args.host} (experiment {args.experiment})")
        return 0
    params = client.parse_params(args.param)
    token = client.read_token(args.token_file)
    if action == "submit":
        run_id = client.submit(args.host, params, experiment=args.experiment, run_name=args.run_name,
                               namespace=args.namespace, token=token, package=args.package, image=args.image,
                               hf_cache_pvc=args.hf_cache_pvc, timeouts=timeouts)
        print(f"submitted run {run_id} to {args.host} (experiment {args.experiment})")
        return 0
    job = client.schedule(args.host, args.cron, params, experiment=args.experiment, name=args.name,
                          namespace=args.namespace, token=token, package=args.package, image=args.image,
                          hf_cache_pvc=args.hf_cache_pvc, timeouts=timeouts)
    print(f"scheduled {args.name} ({args.cron}) as recurring run {job} on {args.host} (experiment {args.experiment})")
    return 0


@command("run")
def cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .runner import demo_config, run_all, summary_table

    cfg = demo_config(args.config, args.overrides, args.quick)
    summary = run_all(cfg, args.workdir, promote=not args.no_promote, method=args.method, run_name=args.run_name)
    console = Console()
    console.print(summary_table(summary))
    if summary.report is not None:
        from .report import report_table

        console.print(report_table(summary.report))
    console.print(f"outputs: {summary.workdir}")
    if summary.ui_command:
        console.print(f"browse the run: {summary.ui_command}", soft_wrap=True)
    return 0


@command("sft")
def cmd_sft(args: argparse.Namespace) -> int:
    from .sft import sft

    cfg = config_from_args(args)
    with local_output(args.output) as out:
        result = sft(cfg, out)
        result.output = args.output
    m = result.manifest
    c = m["counts"]
    loss = m["final_loss"]
    print(
        f"problems={c['problems']} samples={c['samples']} kept_solutions={c['kept_solutions']} "
        f"tuned_tokens={m['tuned_tokens']} steps={m['steps']} final_loss={'n/a' if loss is None else f'{loss:.4f}'} "
        f"output={result.output}"
    )
    return 0


@command("config")
def cmd_config(args: argparse.Namespace) -> int:
    from .config import config_reference_markdown, to_yaml, update_readme_reference

    if args.update_readme:
        print(update_readme_reference(args.update_readme))
    elif args.reference:
        print(config_reference_markdown(), end="")
    else:
        print(to_yaml(config_from_args(args)), end="")
    return 0


def add_step_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--step-timeout", action="append", default=[], metavar="NAME=DURATION",
                        help="bound every attempt of a Kubeflow step: a stage (prepare, sample, train, evaluate, "
                             "register, sft, evaluate_sft, report) or 'step' (the bookkeeping steps), e.g. "
                             "train=12h, step=20m; defaults in lightreasoner/stages.py")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="lightreasoner", description="LightReasoner: small models teach large ones.")
    parser.add_argument("--version", action="version", version=f"lightreasoner {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging; on an error, the full traceback with its causes")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="the whole method locally: sample, train, evaluate, register (the demo)")
    add_config_args(p)
    p.add_argument("--quick", action="store_true", help="a tiny run: 8 problems, 32 tokens (10 minutes measured on 2 busy CPU cores; less when idle)")
    p.add_argument("--workdir", default="lightreasoner-runs", help="outputs and the local MLflow store")
    p.add_argument("--no-promote", action="store_true", help="register only, no promotion check")
    p.add_argument("--method", choices=METHODS, default="lightreasoner",
                   help="lightreasoner (default), the SFT baseline, or both and the efficiency report")
    p.add_argument("--run-name", help=RUN_NAME_HELP)

    p = sub.add_parser("config", help="print the resolved config (or the reference of every key)")
    add_config_args(p)
    p.add_argument("--reference", action="store_true", help="every key with its default and meaning (Markdown)")
    p.add_argument("--update-readme", metavar="FILE", nargs="?", const=CONFIG_REFERENCE_PAGE,
                   help=f"rewrite the reference block of this Markdown file (default: {CONFIG_REFERENCE_PAGE})")

    p = sub.add_parser("prepare-data", help="load problems and write a normalised problems.parquet")
    add_config_args(p)
    p.add_argument("--output", required=True, help="output folder (or .parquet file)")

    p = sub.add_parser("sample", help="stage 1: contrastive sampling (Expert vs Amateur)")
    add_config_args(p)
    p.add_argument("--output", required=True, help="output folder for trajectories, samples and manifest")
    p.add_argument("--reference", action="store_true", help="the paper's slow per-prefix scoring (oracle)")
    p.add_argument("--overwrite", action="store_true", help="replace samples of a different config")
    p.add_argument("--shard", metavar="I/N", help="run only shard I of N (join them with merge-samples)")

    p = sub.add_parser("merge-samples", help="join the folders of a sharded sampling run")
    add_config_args(p)
    p.add_argument("shards", nargs="+", help="shard output folders")
    p.add_argument("--output", required=True, help="merged samples folder")
    p.add_argument("--overwrite", action="store_true", help="replace samples of a different config")

    p = sub.add_parser("train", help="stage 2: LoRA fine-tuning of the Expert on the soft labels")
    add_config_args(p)
    p.add_argument("--samples", required=True, help="samples folder written by `sample`")
    p.add_argument("--output", required=True, help="output folder for adapter, tokenizer, checkpoints, manifest")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the output folder")
    p.add_argument("--merge", action="store_true", help="also write the merged model to OUTPUT/merged")
    p.add_argument("--layout", choices=["packed", "per-step"], help="override training.layout")

    p = sub.add_parser("evaluate", help="stage 3: pass@1 of the base Expert and Expert + adapter, paired metrics")
    add_config_args(p)
    p.add_argument("--model", help="the Expert (overrides expert.model)")
    p.add_argument("--adapter", help="training output folder or LoRA adapter folder; omit to score the base only")
    p.add_argument("--output", required=True, help="output folder for predictions, metrics, plot and manifest")
    p.add_argument("--limit", type=int, help="evaluate only the first N problems (of each benchmark)")
    p.add_argument("--benchmarks", help="comma-separated benchmarks, any of gsm8k,math,svamp,asdiv,minerva_math,"
                   "olympiadbench,mmlu_stem (sets evaluation.benchmarks)")
    p.add_argument("--benchmark-dir", help="folder or s3:// prefix with <benchmark>/test.jsonl files "
                   "(sets evaluation.benchmark_dir; default: the Hugging Face data sets)")
    p.add_argument("--protocol", choices=["qwen25-math-cot", "sampling-prompt"], help="sets evaluation.protocol")
    p.add_argument("--shard", metavar="I/N", help="score only shard I of N of every benchmark (join the shards "
                   "with evaluate-merge)")
    p.add_argument("--side", choices=["base", "tuned"], help="with --shard: score only this model (default: "
                   "base, and tuned given --adapter)")

    p = sub.add_parser("evaluate-merge", help="join the folders of a sharded evaluation (evaluate --shard)")
    p.add_argument("shards", nargs="+", help="shard output folders or s3:// URIs")
    p.add_argument("--output", required=True, help="evaluation folder (as evaluate writes it)")

    p = sub.add_parser("benchmarks", help="list what evaluate would score: per benchmark its source, rows, digest "
                       "and answer type (the paper's row count where it differs)")
    add_config_args(p)
    p.add_argument("--benchmarks", help="comma-separated benchmarks (default: evaluation.benchmarks, else all seven)")
    p.add_argument("--benchmark-dir", help="folder or s3:// prefix with <benchmark>/test.jsonl files "
                   "(sets evaluation.benchmark_dir; default: the Hugging Face data sets)")

    p = sub.add_parser("doctor", help="read-only cluster preflight: auth, namespace, Secrets, GPUs, KFP, MLflow")
    p.add_argument("--namespace", help="namespace to check (default: the context's, else default)")
    p.add_argument("--kfp-host", help="Kubeflow Pipelines API URL to probe (token from env KFP_TOKEN)")
    p.add_argument("--mlflow-uri", help="MLflow tracking server URL to probe")
    p.add_argument("--secret", dest="secrets", action="append", default=[], metavar="NAME",
                   help="a Secret that must exist in the namespace (repeatable; values are never read out)")
    p.add_argument("--optional-secret", dest="optional_secrets", action="append", default=[], metavar="NAME",
                   help="a Secret that may be absent (the pipeline's S3 keys, with IRSA / Workload Identity); "
                        "repeatable")
    p.add_argument("--context", help="kubeconfig context (default: the current one, or in-cluster)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per check (default 10)")

    p = sub.add_parser("register", help="register the adapter in the MLflow model registry (alias challenger)")
    add_config_args(p)
    p.add_argument("--training", required=True, help="training output folder or s3:// URI (adapter, manifest)")
    p.add_argument("--evaluation", required=True, help="evaluation output folder or s3:// URI (metrics.json)")
    p.add_argument("--samples", help="samples folder or s3:// URI (lineage: effective beta, sha256 check)")
    p.add_argument("--parent-run-id", help="MLflow pipeline run to nest the register run under")

    p = sub.add_parser("promote", help="move alias champion to the challenger when it beats the champion")
    add_config_args(p)
    p.add_argument("--model", help="registered model name (default: registry.model_name)")
    p.add_argument("--min-delta", type=float, help="required accuracy gain (default: registry.min_delta)")
    p.add_argument("--max-p", type=float, help="largest McNemar p-value accepted (default: registry.max_p)")

    p = sub.add_parser("compare", help="side-by-side table of MLflow runs (params, stage metrics)")
    add_config_args(p)
    p.add_argument("run_ids", nargs="+", metavar="RUN_ID", help="MLflow run ids (pipeline or stage runs)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")

    p = sub.add_parser("pipeline", help="Kubeflow: compile, run locally, submit a run, schedule runs")
    psub = p.add_subparsers(dest="pipeline_command", required=True)
    q = psub.add_parser("compile", help="write the pipeline's IR YAML")
    q.add_argument("-o", "--output", default=None,
                   help="output file (default: build/lightreasoner_pipeline.yaml; submit/schedule --package FILE "
                        "read it)")
    q.add_argument("--image", help="container image of every component (default: lightreasoner.images)")
    q.add_argument("--hf-cache-pvc", help="PersistentVolumeClaim mounted as the GPU steps' model cache")
    add_step_timeout(q)
    q = psub.add_parser("run-local", help="run the pipeline end to end here through kfp.local")
    add_config_args(q)
    q.add_argument("--workdir", default="lightreasoner-runs", help="folder for outputs and the local MLflow store "
                   "(WORKDIR/mlflow.db unless tracking.tracking_uri or MLFLOW_TRACKING_URI names another)")
    q.add_argument("--quick", action="store_true", help="the small sizes of `run --quick` (the demo, shrunk)")
    q.add_argument("--run-name", help=RUN_NAME_HELP)
    q.add_argument("--shards", type=int, default=1, help="sampling shards (ParallelFor)")
    q.add_argument("--no-promote", action="store_true", help="register only, no promotion check")
    q.add_argument("--method", choices=["lightreasoner", "sft", "both"], default="lightreasoner",
                   help="pipeline branch: lightreasoner (default), the SFT baseline, or both and the report")
    for action, text in (("submit", "submit one run"), ("schedule", "create a recurring run")):
        q = psub.add_parser(action, help=f"{text} on a Kubeflow Pipelines endpoint")
        q.add_argument("--host", required=True, help="Kubeflow Pipelines API URL")
        q.add_argument("--experiment", default="lightreasoner", help="KFP experiment")
        q.add_argument("--namespace", help="Kubeflow namespace (multi-user installs)")
        q.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="pipeline parameter")
        q.add_argument("--token-file", help="file holding the API token (default: env KFP_TOKEN)")
        q.add_argument("--package", help="compiled pipeline YAML (default: the committed one)")
        q.add_argument("--image", help="compile for this image instead of using the committed YAML")
        q.add_argument("--hf-cache-pvc", help="compile with this PVC as the GPU steps' model cache")
        add_step_timeout(q)
        if action == "submit":
            q.add_argument("--run-name", help="run name (default: lightreasoner-<time>)")
        else:
            q.add_argument("--cron", required=True, help='five-field cron, e.g. "0 3 * * *"')
            q.add_argument("--name", default="lightreasoner-nightly", help="recurring run name")

    q = psub.add_parser("unschedule", help="delete a recurring run (the Helm chart's pre-delete hook)")
    q.add_argument("--host", required=True, help="Kubeflow Pipelines API URL")
    q.add_argument("--experiment", default="lightreasoner", help="KFP experiment")
    q.add_argument("--namespace", help="Kubeflow namespace (multi-user installs)")
    q.add_argument("--token-file", help="file holding the API token (default: env KFP_TOKEN)")
    q.add_argument("--name", default="lightreasoner-nightly", help="recurring run name")

    p = sub.add_parser("sft", help="SFT baseline: rejection sampling by the Expert, LoRA on the correct solutions")
    add_config_args(p)
    p.add_argument("--output", required=True, help="output folder for solutions, adapter, tokenizer, manifest")

    # Later stages add their sub-parsers above this line, one block each.
    return parser


def _close_progress_bars() -> None:
    """Progress bars a failed stage left open (the Trainer's) are closed before the error line, so that
    they do not redraw after it at exit: the error stays the last line."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:  # noqa: BLE001,S110 - cosmetic only
            pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from .tracking import configure_process, pinned_tracking_uri

    configure_process()  # MLflow telemetry off, bounded retries (before MLflow is imported)
    with pinned_tracking_uri():  # MLFLOW_TRACKING_URI read once for the whole command
        return _run_command(args)


def _run_command(args: argparse.Namespace) -> int:
    try:
        return COMMANDS[args.command](args)
    except LightReasonerError as exc:
        _close_progress_bars()
        _traceback(exc, args.verbose)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _close_progress_bars()
        print("error: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno is None:
            raise
        _close_progress_bars()
        # Disk full, a read-only or missing folder ...: one line naming the file, not a traceback.
        _traceback(exc, args.verbose)
        # pyarrow and plain writes often name no file: then the output being written.
        where = getattr(args, "output", None) or getattr(args, "workdir", None) or "output"
        print(f"error: {write_error(exc, where)}", file=sys.stderr)  # the message of every failed write
        return 2


def _traceback(exc: BaseException, verbose: bool) -> None:
    """With ``-v``, the full traceback of a one-line error, causes included (secrets masked)."""
    if verbose:
        import traceback

        from .redaction import redact_text

        print(redact_text("".join(traceback.format_exception(exc))), file=sys.stderr, end="")


def print_json(data) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


if __name__ == "__main__":
    sys.exit(main())
