"""`lightreasoner doctor`: each check against a fake CoreV1Api built from the kubernetes client's own models."""

from __future__ import annotations

import http.server
import io
import threading

import pytest
from kubernetes.client import (
    V1APIResourceList,
    V1Namespace,
    V1NamespaceStatus,
    V1Node,
    V1NodeList,
    V1NodeStatus,
    V1ObjectMeta,
    V1Secret,
)
from kubernetes.client.exceptions import ApiException
from rich.console import Console

from lightreasoner import doctor as d
from lightreasoner.errors import LightReasonerError

SECRET_VALUE = "c3VwZXItc2VjcmV0LXBhc3N3b3Jk"  # base64 of a password: must never be printed


def gpu_node(name: str, gpus: str | None) -> V1Node:
    allocatable = {"cpu": "16", "memory": "64Gi"}
    if gpus is not None:
        allocatable["nvidia.com/gpu"] = gpus
    return V1Node(metadata=V1ObjectMeta(name=name), status=V1NodeStatus(allocatable=allocatable))


class FakeCoreV1Api:
    """The four CoreV1Api calls doctor makes; an ApiException in `fail` is raised by that call."""

    def __init__(self, namespaces=("ml",), secrets=None, nodes=(), fail=None):
        self.namespaces = {n: V1Namespace(metadata=V1ObjectMeta(name=n), status=V1NamespaceStatus(phase="Active"))
                           for n in namespaces}
        self.secrets = secrets if secrets is not None else {}
        self.nodes = list(nodes)
        self.fail = fail or {}
        self.calls: list[str] = []

    def _maybe_fail(self, call: str):
        self.calls.append(call)
        if call in self.fail:
            raise self.fail[call]

    def get_api_resources(self, **kwargs):
        self._maybe_fail("get_api_resources")
        return V1APIResourceList(group_version="v1", resources=[])

    def read_namespace(self, name, **kwargs):
        self._maybe_fail("read_namespace")
        if name not in self.namespaces:
            raise ApiException(status=404, reason="Not Found")
        return self.namespaces[name]

    def read_namespaced_secret(self, name, namespace, **kwargs):
        self._maybe_fail("read_namespaced_secret")
        key = (namespace, name)
        if key not in self.secrets:
            raise ApiException(status=404, reason="Not Found")
        return self.secrets[key]

    def list_node(self, **kwargs):
        self._maybe_fail("list_node")
        return V1NodeList(items=self.nodes)


def healthy_api() -> FakeCoreV1Api:
    secret = V1Secret(metadata=V1ObjectMeta(name="mlflow-db", namespace="ml"), data={"uri": SECRET_VALUE})
    return FakeCoreV1Api(secrets={("ml", "mlflow-db"): secret},
                         nodes=[gpu_node("cpu-1", None), gpu_node("gpu-1", "8"), gpu_node("gpu-2", "0")])


def http_ok(url, timeout, headers):
    return 200


def by_name(results):
    return {r.name: r for r in results}


# --- single checks ---------------------------------------------------------------------------------------


def test_auth_passes_and_fails_with_a_fix():
    assert d.check_auth(healthy_api(), "kubeconfig context dev").ok
    r = d.check_auth(FakeCoreV1Api(fail={"get_api_resources": ApiException(status=401, reason="Unauthorized")}),
                     "kubeconfig context dev")
    assert not r.ok and "401" in r.detail and "log in" in r.fix


def test_namespace_exists_missing_and_terminating():
    assert d.check_namespace(healthy_api(), "ml").ok
    r = d.check_namespace(healthy_api(), "nope")
    assert not r.ok and "kubectl create namespace nope" in r.fix
    api = healthy_api()
    api.namespaces["ml"].status.phase = "Terminating"
    assert not d.check_namespace(api, "ml").ok


def test_secret_exists_reports_keys_not_values():
    r = d.check_secret(healthy_api(), "ml", "mlflow-db")
    assert r.ok and "uri" in r.detail and SECRET_VALUE not in r.detail
    r = d.check_secret(healthy_api(), "ml", "missing")
    assert not r.ok and "create secret generic missing" in r.fix
    forbidden = FakeCoreV1Api(fail={"read_namespaced_secret": ApiException(status=403, reason="Forbidden")})
    r = d.check_secret(forbidden, "ml", "mlflow-db")
    assert not r.ok and "403" in r.detail and "get secrets" in r.fix


def test_an_optional_secret_may_be_absent():
    """The pipeline's S3 Secret: with IRSA / Workload Identity there is none, and that passes."""
    r = d.check_secret(healthy_api(), "ml", "missing", optional=True)
    assert r.ok and "not found" in r.detail and "IRSA" in r.detail
    assert d.check_secret(healthy_api(), "ml", "mlflow-db", optional=True).detail.startswith("exists")
    forbidden = FakeCoreV1Api(fail={"read_namespaced_secret": ApiException(status=403, reason="Forbidden")})
    assert not d.check_secret(forbidden, "ml", "s3", optional=True).ok  # unreadable is still a failure
    results = d.run_checks(healthy_api(), "test", "ml", ["mlflow-db"], optional_secrets=["s3", "mlflow-db"])
    by_name = {r.name: r for r in results}
    assert by_name["secret s3"].ok and by_name["secret mlflow-db"].ok
    results = d.run_checks(healthy_api(), "test", "ml", ["s3"], optional_secrets=["s3"])
    assert not {r.name: r for r in results}["secret s3"].ok  # named as required too: required


def test_gpu_nodes_counts_allocatable():
    r = d.check_gpu_nodes(healthy_api())
    assert r.ok and "1 node(s), 8 GPU(s)" in r.detail and "gpu-1=8" in r.detail
    r = d.check_gpu_nodes(FakeCoreV1Api(nodes=[gpu_node("cpu-1", None), gpu_node("gpu-0", "0")]))
    assert not r.ok and "none of 2 node(s)" in r.detail and "device plugin" in r.fix
    r = d.check_gpu_nodes(FakeCoreV1Api(fail={"list_node": ApiException(status=403, reason="Forbidden")}))
    assert not r.ok and "list nodes" in r.fix


def test_endpoints_answer_refuse_or_are_unreachable():
    seen = {}

    def get(url, timeout, headers):
        seen[url] = headers
        return 200

    r = d.check_kfp("http://kfp:8888", get, token="tok-123")
    assert r.ok and "http://kfp:8888/apis/v2beta1/healthz" in seen
    assert "tok-123" not in r.detail  # the token is sent, never shown
    assert d.check_mlflow("http://mlflow:5000", get).ok and "http://mlflow:5000/health" in seen

    assert not d.check_kfp("http://kfp:8888", lambda u, t, h: 403).ok
    assert "KFP_TOKEN" in d.check_kfp("http://kfp:8888", lambda u, t, h: 401).fix
    assert not d.check_mlflow("http://mlflow:5000", lambda u, t, h: 503).ok

    def refused(url, timeout, headers):
        raise ConnectionRefusedError(111, "Connection refused")

    r = d.check_mlflow("http://mlflow:5000", refused)
    assert not r.ok and "no answer" in r.detail and "port-forward" in r.fix


def test_urllib_get_against_a_local_server():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        assert d.check_mlflow(base, d.urllib_get, timeout=5).ok
        r = d.check_kfp(base, d.urllib_get, timeout=5)
        assert not r.ok and "HTTP 404" in r.detail
    finally:
        server.shutdown()
        server.server_close()


# --- the whole run -----------------------------------------------------------------------------------------


def test_run_checks_all_pass():
    results = d.run_checks(healthy_api(), "kubeconfig context dev", "ml", ["mlflow-db"],
                           kfp_host="http://kfp:8888", mlflow_uri="http://mlflow:5000", http_get=http_ok)
    assert [r.name for r in results] == ["kubernetes auth", "namespace ml", "secret mlflow-db", "gpu nodes",
                                         "kubeflow pipelines", "mlflow"]
    assert all(r.ok for r in results)


def test_run_checks_without_credentials_skips_cluster_checks():
    results = by_name(d.run_checks(None, "kubeconfig: no configuration found", "ml", ["a"],
                                   mlflow_uri="http://mlflow:5000", http_get=http_ok))
    assert not results["kubernetes auth"].ok and "KUBECONFIG" in results["kubernetes auth"].fix
    assert "skipped" in results["secret a"].detail and "skipped" in results["gpu nodes"].detail
    assert results["mlflow"].ok  # the HTTP checks still run


def test_run_checks_stops_cluster_checks_when_auth_fails():
    api = FakeCoreV1Api(fail={"get_api_resources": ApiException(status=401, reason="Unauthorized")})
    results = d.run_checks(api, "ctx", "ml", ["a", "a"])
    assert api.calls == ["get_api_resources"]
    assert [r.name for r in results] == ["kubernetes auth", "namespace ml", "secret a", "gpu nodes"]


def test_doctor_prints_a_table_and_exits_nonzero_on_failure(monkeypatch):
    api = healthy_api()
    monkeypatch.setattr(d, "connect", lambda context: (api, "kubeconfig context dev", "ml"))
    monkeypatch.setattr(d, "urllib_get", lambda url, timeout, headers: 200)
    monkeypatch.setenv("KFP_TOKEN", "very-secret-token")
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    code = d.doctor(secrets=["mlflow-db", "missing"], kfp_host="http://kfp:8888/", console=console)
    text = out.getvalue()
    assert code == 1
    assert "secret missing" in text and "FAIL" in text and "create secret generic missing" in text
    assert "namespace ml" in text and "PASS" in text  # the context's namespace is the default
    assert SECRET_VALUE not in text and "very-secret-token" not in text

    out.truncate(0)
    assert d.doctor(secrets=["mlflow-db"], console=console) == 0


@pytest.mark.parametrize("kwargs, needle", [
    ({"kfp_host": "kfp:8888"}, "--kfp-host 'kfp:8888'"),
    ({"mlflow_uri": "sqlite:///mlflow.db"}, "--mlflow-uri 'sqlite:///mlflow.db'"),
    ({"secrets": ["Bad_Name"]}, "--secret 'Bad_Name'"),
    ({"optional_secrets": ["Bad_Name"]}, "--optional-secret 'Bad_Name'"),
    ({"timeout": 0}, "--timeout 0"),
])
def test_bad_input_is_one_line_naming_the_option(kwargs, needle):
    with pytest.raises(LightReasonerError) as info:
        d.doctor(**kwargs)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_unknown_context_is_bad_input(tmp_path, monkeypatch):
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: dev\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: dev, context: {cluster: c, user: u, namespace: team}}]\n")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(LightReasonerError, match="--context 'prod'"):
        d.connect("prod")
    api, mode, namespace = d.connect(None)
    assert api is not None and mode == "kubeconfig context dev" and namespace == "team"


def test_cli_doctor_exit_codes(monkeypatch, capsys):
    from lightreasoner.cli import main

    monkeypatch.setattr(d, "connect", lambda context: (healthy_api(), "kubeconfig context dev", "ml"))
    assert main(["doctor", "--secret", "mlflow-db"]) == 0
    assert main(["doctor", "--secret", "nope"]) == 1
    assert main(["doctor", "--secret", "mlflow-db", "--optional-secret", "nope"]) == 0
    assert main(["doctor", "--mlflow-uri", "not-a-url"]) == 2
    assert "error: --mlflow-uri 'not-a-url'" in capsys.readouterr().err
