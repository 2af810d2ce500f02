"""Cluster preflight (``lightreasoner doctor``): read-only checks before installing or scheduling.

Checks: Kubernetes credentials work (kubeconfig or in-cluster), the namespace exists, the referenced Secrets
exist (their contents are never read into the report), some node has ``nvidia.com/gpu`` allocatable, and the
Kubeflow Pipelines and MLflow endpoints answer. Each check takes a CoreV1Api-like object (or an HTTP getter)
so the logic runs in tests against fakes built from the client's own model objects.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from .errors import LightReasonerError

GPU_RESOURCE = "nvidia.com/gpu"
KFP_HEALTH_PATH = "/apis/v2beta1/healthz"
MLFLOW_HEALTH_PATH = "/health"
SECRET_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
IN_CLUSTER_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

# (url, timeout seconds, headers) -> HTTP status code; raises OSError when nothing answers.
HttpGet = Callable[[str, float, dict[str, str]], int]


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    fix: str = ""


# --- Kubernetes ----------------------------------------------------------------------------------------


def _api_error(exc: Exception, what: str, fix_forbidden: str) -> tuple[str, str]:
    """(detail, fix) for a failed API call, without the response body."""
    status = getattr(exc, "status", None)
    if status == 401:
        return f"{what}: credentials rejected (401)", "refresh the kubeconfig credentials (log in again)"
    if status == 403:
        return f"{what}: forbidden (403)", fix_forbidden
    if status == 404:
        return f"{what}: not found (404)", ""
    reason = getattr(exc, "reason", None) or type(exc).__name__
    return f"{what}: {reason}" + (f" ({status})" if status else ""), "check that the API server is reachable"


def check_auth(api: Any, mode: str, timeout: float = 10.0) -> CheckResult:
    """The credentials work: API discovery answers."""
    name = "kubernetes auth"
    try:
        api.get_api_resources(_request_timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - any failure is a failed check with a fix
        detail, fix = _api_error(exc, mode, "the credentials may not list API resources; ask for a Role")
        return CheckResult(name, False, detail, fix or "check the kubeconfig context")
    return CheckResult(name, True, mode)


def check_namespace(api: Any, namespace: str, timeout: float = 10.0) -> CheckResult:
    name = f"namespace {namespace}"
    try:
        ns = api.read_namespace(namespace, _request_timeout=timeout)
    except Exception as exc:  # noqa: BLE001
        detail, fix = _api_error(exc, f"namespace {namespace!r}", f"grant `get namespaces` or check {namespace!r}")
        if getattr(exc, "status", None) == 404:
            fix = f"kubectl create namespace {namespace}  (or pass --namespace)"
        return CheckResult(name, False, detail, fix)
    phase = getattr(getattr(ns, "status", None), "phase", None) or "Active"
    if phase != "Active":
        return CheckResult(name, False, f"namespace {namespace!r} is {phase}",
                           "wait for the deletion to finish, then recreate it")
    return CheckResult(name, True, "exists")


OPTIONAL = ("optional: the pods read it when it exists, else boto3 takes the AWS credential chain (IRSA, "
            "Workload Identity, instance profile)")


def check_secret(api: Any, namespace: str, secret: str, timeout: float = 10.0, optional: bool = False) -> CheckResult:
    """The Secret exists. Only its name and key names are reported, never its values. An ``optional``
    Secret (the pipeline's S3 keys: every executor mounts them optionally) may be absent."""
    name = f"secret {secret}"
    try:
        obj = api.read_namespaced_secret(secret, namespace, _request_timeout=timeout)
    except Exception as exc:  # noqa: BLE001
        detail, fix = _api_error(exc, f"secret {secret!r} in {namespace!r}",
                                 f"grant `get secrets` (resourceNames: [{secret}]) in {namespace}")
        if getattr(exc, "status", None) == 404 and optional:
            return CheckResult(name, True, f"{detail}; {OPTIONAL}")
        if getattr(exc, "status", None) == 404:
            fix = (f"kubectl -n {namespace} create secret generic {secret} --from-literal=KEY=VALUE ... "
                   "(see the chart's values.yaml for the keys)")
        return CheckResult(name, False, detail, fix)
    keys = sorted((getattr(obj, "data", None) or {}).keys()) + sorted((getattr(obj, "string_data", None) or {}).keys())
    return CheckResult(name, True, "exists, keys: " + (", ".join(keys) if keys else "(none)"))


def _quantity(value: Any) -> float:
    from kubernetes.utils import parse_quantity

    try:
        return float(parse_quantity(value))
    except (ValueError, TypeError):
        return 0.0


def check_gpu_nodes(api: Any, timeout: float = 10.0) -> CheckResult:
    name = "gpu nodes"
    try:
        nodes = api.list_node(_request_timeout=timeout).items or []
    except Exception as exc:  # noqa: BLE001
        detail, fix = _api_error(exc, "list nodes", "grant `list nodes` (a ClusterRole) to run this check")
        return CheckResult(name, False, detail, fix)
    gpus: dict[str, float] = {}
    for node in nodes:
        allocatable = getattr(node.status, "allocatable", None) or {}
        count = _quantity(allocatable.get(GPU_RESOURCE, 0))
        if count > 0:
            gpus[node.metadata.name] = count
    if not gpus:
        return CheckResult(
            name, False, f"none of {len(nodes)} node(s) has {GPU_RESOURCE} allocatable",
            "add GPU nodes and install the NVIDIA device plugin (or GPU operator)")
    total = sum(gpus.values())
    listed = ", ".join(f"{n}={int(c)}" for n, c in sorted(gpus.items())[:5])
    more = f", +{len(gpus) - 5} more" if len(gpus) > 5 else ""
    return CheckResult(name, True, f"{len(gpus)} node(s), {int(total)} GPU(s): {listed}{more}")


# --- HTTP endpoints ------------------------------------------------------------------------------------


def validate_url(option: str, url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise LightReasonerError(f"{option} {url!r}: expected an http:// or https:// URL")
    return url.rstrip("/")


def urllib_get(url: str, timeout: float, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, headers=headers, method="GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http(s) only
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def check_endpoint(name: str, url: str, http_get: HttpGet, timeout: float = 10.0,
                   headers: dict[str, str] | None = None, auth_fix: str = "") -> CheckResult:
    try:
        status = http_get(url, timeout, headers or {})
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return CheckResult(name, False, f"{url}: no answer ({reason})",
                           "check the URL, the Service/Ingress and network policies (port-forward to test)")
    if 200 <= status < 300:
        return CheckResult(name, True, f"{url}: HTTP {status}")
    if status in (401, 403):
        return CheckResult(name, False, f"{url}: HTTP {status} (refused)", auth_fix or "check the credentials")
    return CheckResult(name, False, f"{url}: HTTP {status}", "check the server's logs; is the URL the API root?")


def check_kfp(host: str, http_get: HttpGet, timeout: float = 10.0, token: str | None = None) -> CheckResult:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return check_endpoint("kubeflow pipelines", host + KFP_HEALTH_PATH, http_get, timeout, headers,
                          auth_fix="set KFP_TOKEN to a token the KFP API accepts")


def check_mlflow(uri: str, http_get: HttpGet, timeout: float = 10.0) -> CheckResult:
    return check_endpoint("mlflow", uri + MLFLOW_HEALTH_PATH, http_get, timeout,
                          auth_fix="set MLFLOW_TRACKING_USERNAME/PASSWORD or open the ingress to this client")


# --- orchestration -------------------------------------------------------------------------------------


def run_checks(api: Any, mode: str, namespace: str, secrets: Iterable[str] = (), kfp_host: str | None = None,
               mlflow_uri: str | None = None, http_get: HttpGet = urllib_get, timeout: float = 10.0,
               kfp_token: str | None = None, optional_secrets: Iterable[str] = ()) -> list[CheckResult]:
    """All checks in order. ``api`` None (no credentials) fails the auth check and skips the other
    Kubernetes checks; the HTTP checks still run. ``optional_secrets`` may be absent."""
    results: list[CheckResult] = []
    optional = set(optional_secrets) - set(secrets)  # named as required too: required
    secrets = [*secrets, *optional_secrets]
    k8s_ok = False
    if api is None:
        results.append(CheckResult("kubernetes auth", False, mode,
                                   "set KUBECONFIG / --context, or run inside a pod with a ServiceAccount"))
    else:
        auth = check_auth(api, mode, timeout)
        results.append(auth)
        k8s_ok = auth.ok
    if k8s_ok:
        results.append(check_namespace(api, namespace, timeout))
        results.extend(check_secret(api, namespace, s, timeout, s in optional) for s in dict.fromkeys(secrets))
        results.append(check_gpu_nodes(api, timeout))
    else:
        skipped = [f"namespace {namespace}", *(f"secret {s}" for s in dict.fromkeys(secrets)), "gpu nodes"]
        results.extend(CheckResult(n, False, "skipped: no working Kubernetes credentials",
                                   "fix `kubernetes auth` first") for n in skipped)
    if kfp_host:
        results.append(check_kfp(kfp_host, http_get, timeout, kfp_token))
    if mlflow_uri:
        results.append(check_mlflow(mlflow_uri, http_get, timeout))
    return results


def connect(context: str | None = None) -> tuple[Any, str, str | None]:
    """(CoreV1Api or None, how it authenticated or why not, the context's default namespace)."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    if context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            config.load_incluster_config()
            namespace = None
            if os.path.isfile(IN_CLUSTER_NAMESPACE_FILE):
                with open(IN_CLUSTER_NAMESPACE_FILE) as f:
                    namespace = f.read().strip() or None
            return client.CoreV1Api(), "in-cluster ServiceAccount", namespace
        except ConfigException as exc:
            return None, f"in-cluster config: {exc}", None
    # KUBECONFIG is read now, not when the kubernetes package was imported.
    config_file = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    try:
        contexts, current = config.list_kube_config_contexts(config_file=config_file)
    except (ConfigException, OSError) as exc:
        return None, f"kubeconfig: {str(exc).splitlines()[0]}", None
    names = [c["name"] for c in contexts or []]
    if context is not None and context not in names:
        raise LightReasonerError(f"--context {context!r}: not in the kubeconfig (contexts: {', '.join(names) or 'none'})")
    chosen = next((c for c in contexts if c["name"] == context), current) if context else current
    try:
        api_client = config.new_client_from_config(config_file=config_file, context=context)
    except (ConfigException, OSError) as exc:
        return None, f"kubeconfig: {str(exc).splitlines()[0]}", None
    namespace = ((chosen or {}).get("context") or {}).get("namespace")
    return client.CoreV1Api(api_client), f"kubeconfig context {(chosen or {}).get('name', '?')}", namespace


def render(results: list[CheckResult], console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title="lightreasoner doctor", show_lines=False)
    table.add_column("check", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("detail", overflow="fold")
    table.add_column("fix", overflow="fold")
    for r in results:
        table.add_row(r.name, "[green]PASS[/green]" if r.ok else "[red]FAIL[/red]", r.detail, r.fix)
    console.print(table)
    failed = sum(not r.ok for r in results)
    console.print(f"{len(results) - failed} passed, {failed} failed")


def doctor(namespace: str | None = None, kfp_host: str | None = None, mlflow_uri: str | None = None,
           secrets: Iterable[str] = (), context: str | None = None, timeout: float = 10.0,
           console=None, optional_secrets: Iterable[str] = ()) -> int:
    """Run every check, print the table; 0 when all pass, 1 otherwise."""
    if kfp_host:
        kfp_host = validate_url("--kfp-host", kfp_host)
    if mlflow_uri:
        mlflow_uri = validate_url("--mlflow-uri", mlflow_uri)
    if timeout <= 0:
        raise LightReasonerError(f"--timeout {timeout}: must be > 0")
    for flag, names in (("--secret", secrets), ("--optional-secret", optional_secrets)):
        for s in names:
            if len(s) > 253 or not SECRET_NAME.fullmatch(s):
                raise LightReasonerError(f"{flag} {s!r}: not a valid Secret name")
    api, mode, default_ns = connect(context)
    results = run_checks(api, mode, namespace or default_ns or "default", secrets, kfp_host, mlflow_uri,
                         timeout=timeout, kfp_token=os.environ.get("KFP_TOKEN") or None,
                         optional_secrets=optional_secrets)
    render(results, console)
    return 0 if all(r.ok for r in results) else 1
