"""Every kubeconfig form against the HTTPS Kubernetes API (kmock behind TLS, certificates from trustme).

Each test loads credentials the way the operator does (`load_credentials`), makes a real request through
`KubeClient` and asserts what reached the server: the client certificate's common name (`Cluster.peers`)
and the Authorization header (`Cluster.auths`). kopf gets the same credentials through `connection_info`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from harmony_operator.kube import KubeClient, Unreachable, connection_info, load_credentials
from operator_harness import CLIENT_CN, TLS, Cluster, Fault, add_deployment  # type: ignore[import-not-found]


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


async def _scale_via(kubeconfig: Path) -> int:
    async with KubeClient(lambda: load_credentials(str(kubeconfig))) as kube:
        return (await kube.get_scale("shop", "deployments", "web")).spec_replicas


async def test_embedded_ca_and_client_certificate(cluster: Cluster, tls: TLS, tmp_path: Path) -> None:
    add_deployment(cluster, "shop", "web", replicas=3)
    config = _write(tmp_path / "config", tls.kubeconfig(str(cluster.url).rstrip("/")))
    assert await _scale_via(config) == 3
    assert cluster.peers == [CLIENT_CN]
    assert cluster.auths == [""]
    info = await connection_info(await load_credentials(str(config)))
    # kopf reads the same CA and client certificate (materialised as files by the loader).
    assert info.ca_path and Path(str(info.ca_path)).read_bytes() == tls.ca.cert_pem.bytes()
    assert info.certificate_path and info.private_key_path and info.token is None


async def test_certificate_files_relative_to_the_kubeconfig(
    cluster: Cluster, tls: TLS, tmp_path: Path
) -> None:
    add_deployment(cluster, "shop", "web", replicas=2)
    certs = tmp_path / "certs"
    certs.mkdir()
    _write(certs / "ca.crt", tls.ca.cert_pem.bytes())
    _write(certs / "client.crt", tls.client.cert_chain_pems[0].bytes())
    _write(certs / "client.key", tls.client.private_key_pem.bytes())
    config = _write(
        tmp_path / "config",
        tls.kubeconfig(
            str(cluster.url).rstrip("/"),
            cluster={"server": str(cluster.url).rstrip("/"), "certificate-authority": "certs/ca.crt"},
            user={"client-certificate": "certs/client.crt", "client-key": "certs/client.key"},
        ),
    )
    assert await _scale_via(config) == 2
    assert cluster.peers == [CLIENT_CN]


async def test_bearer_token_and_token_file(cluster: Cluster, tls: TLS, tmp_path: Path) -> None:
    add_deployment(cluster, "shop", "web", replicas=1)
    server = str(cluster.url).rstrip("/")
    assert await _scale_via(_write(tmp_path / "a", tls.kubeconfig(server, user={"token": "t0ken"}))) == 1
    token_file = _write(tmp_path / "token", "from-file")
    assert (
        await _scale_via(_write(tmp_path / "b", tls.kubeconfig(server, user={"tokenFile": str(token_file)})))
        == 1
    )
    assert cluster.auths == ["Bearer t0ken", "Bearer from-file"]
    assert cluster.peers == ["", ""]  # no client certificate in these kubeconfigs


def _exec_plugin(tmp_path: Path, status: dict[str, str]) -> dict[str, object]:
    script = _write(
        tmp_path / "plugin.py",
        (
            "import json, os\n"
            "info = json.loads(os.environ['KUBERNETES_EXEC_INFO'])\n"
            f"print(json.dumps({{'apiVersion': info['apiVersion'], 'kind': 'ExecCredential', 'status': {status!r}}}))\n"
        ),
    )
    return {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(script)],
            "interactiveMode": "Never",
        }
    }


async def test_exec_plugin_token(cluster: Cluster, tls: TLS, tmp_path: Path) -> None:
    add_deployment(cluster, "shop", "web", replicas=4)
    user = _exec_plugin(tmp_path, {"token": "exec-token", "expirationTimestamp": "2099-01-01T00:00:00Z"})
    config = _write(tmp_path / "config", tls.kubeconfig(str(cluster.url).rstrip("/"), user=user))
    assert await _scale_via(config) == 4
    assert cluster.auths == ["Bearer exec-token"]
    info = await connection_info(await load_credentials(str(config)))
    assert (info.scheme, info.token) == ("Bearer", "exec-token")
    assert info.expiration is not None and info.expiration.year == 2099


async def test_exec_plugin_client_certificate(cluster: Cluster, tls: TLS, tmp_path: Path) -> None:
    add_deployment(cluster, "shop", "web", replicas=5)
    user = _exec_plugin(
        tmp_path,
        {
            "clientCertificateData": tls.client.cert_chain_pems[0].bytes().decode(),
            "clientKeyData": tls.client.private_key_pem.bytes().decode(),
        },
    )
    config = _write(tmp_path / "config", tls.kubeconfig(str(cluster.url).rstrip("/"), user=user))
    assert await _scale_via(config) == 5
    assert cluster.peers == [CLIENT_CN]


async def test_in_cluster_service_account(cluster: Cluster, tls: TLS, tmp_path: Path) -> None:
    add_deployment(cluster, "shop", "web", replicas=6)
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    _write(sa / "token", "sa-token-1")
    _write(sa / "ca.crt", tls.ca.cert_pem.bytes())
    env = {
        "KUBERNETES_SERVICE_HOST": cluster.url.host or "",
        "KUBERNETES_SERVICE_PORT": str(cluster.url.port),
    }
    creds = await load_credentials(service_account_dir=str(sa), environ=env)
    async with KubeClient(lambda: load_credentials(service_account_dir=str(sa), environ=env)) as kube:
        assert (await kube.get_scale("shop", "deployments", "web")).spec_replicas == 6
    assert cluster.auths == ["Bearer sa-token-1"]
    info = await connection_info(creds)
    assert info.server == str(cluster.url).rstrip("/") and info.token == "sa-token-1"
    assert info.expiration is not None  # the projected token rotates: kopf asks again


async def test_a_401_logs_in_again_once(cluster: Cluster, tls: TLS, tmp_path: Path) -> None:
    add_deployment(cluster, "shop", "web", replicas=2)
    token = _write(tmp_path / "token", "old")
    config = _write(
        tmp_path / "config", tls.kubeconfig(str(cluster.url).rstrip("/"), user={"tokenFile": str(token)})
    )
    cluster.faults = [Fault("GET", "/deployments/web/scale", 401, times=1)]
    async with KubeClient(lambda: load_credentials(str(config))) as kube:
        assert (await kube.get_scale("shop", "deployments", "web")).spec_replicas == 2
        _write(token, "rotated")
        cluster.faults = [Fault("GET", "/deployments/web/scale", 401, times=1)]
        assert (await kube.get_scale("shop", "deployments", "web")).spec_replicas == 2
    assert cluster.auths == ["Bearer old", "Bearer old", "Bearer old", "Bearer rotated"]


async def test_no_credentials_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(Unreachable, match=r"not in a cluster, and kubeconfig .*missing"):
        await load_credentials(str(tmp_path / "missing"), environ={})
    bad = _write(tmp_path / "bad", json.dumps({"apiVersion": "v1", "kind": "Config", "clusters": []}))
    with pytest.raises(Unreachable, match="kubeconfig"):
        await load_credentials(str(bad), environ={})
