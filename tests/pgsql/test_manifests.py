"""The example Kubernetes manifests in deploy/: each object has the fields the Kubernetes API
requires of its kind, the references inside it resolve (selectors, volumes, ports, secrets), and
every container runs a motte command line motte accepts.

(``kubectl --dry-run=client`` cannot do this offline: it asks an API server for the schema.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from motte.cli.app import cli

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
API_VERSIONS = {"Deployment": "apps/v1", "DaemonSet": "apps/v1", "Service": "v1", "ConfigMap": "v1",
                "PersistentVolumeClaim": "v1", "Secret": "v1"}


def objects() -> list[dict[str, Any]]:
    found = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        found += [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return found


def require(obj: dict[str, Any], dotted: str) -> Any:
    value: Any = obj
    for part in dotted.split("."):
        assert isinstance(value, dict) and part in value, f"{obj.get('kind')} {obj['metadata']['name']}: no {dotted}"
        value = value[part]
    return value


def check_pod_template(obj: dict[str, Any], by_kind: dict[tuple[str, str], dict[str, Any]]) -> None:
    name = obj["metadata"]["name"]
    selector = require(obj, "spec.selector.matchLabels")
    labels = require(obj, "spec.template.metadata.labels")
    assert selector.items() <= labels.items(), f"{name}: the selector does not select its own pods"
    pod = require(obj, "spec.template.spec")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for volume in volumes.values():
        if "secret" in volume:
            assert volume["secret"]["secretName"]
        if "configMap" in volume:
            assert ("ConfigMap", volume["configMap"]["name"]) in by_kind, f"{name}: no ConfigMap for {volume}"
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            assert ("PersistentVolumeClaim", claim) in by_kind, f"{name}: no claim {claim}"
    assert pod["containers"], f"{name}: no containers"
    for container in pod["containers"]:
        assert container["name"] and container["image"], f"{name}: a container needs a name and an image"
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes and mount["mountPath"].startswith("/"), f"{name}: mount {mount}"
        for port in container.get("ports", []):
            assert isinstance(port["containerPort"], int) and 0 < port["containerPort"] < 65536
        for env in container.get("env", []):
            assert env["name"] and ("value" in env or "valueFrom" in env)
            if "valueFrom" in env:
                ref = env["valueFrom"]["secretKeyRef"]
                assert ref["name"] and ref["key"]
        args = container["args"]
        assert all(isinstance(a, str) for a in args), f"{name}: args must be strings (quote numbers)"
        result = CliRunner().invoke(cli, [*args, "--help"])
        assert result.exit_code == 0, f"{name}: motte {' '.join(args)}: {result.output}"


def test_the_manifests_have_what_the_kubernetes_api_requires() -> None:
    found = objects()
    by_kind = {(obj["kind"], obj["metadata"]["name"]): obj for obj in found}
    kinds = {kind for kind, _ in by_kind}
    assert {"Deployment", "DaemonSet", "Service"} <= kinds
    deployments = {name for kind, name in by_kind if kind == "Deployment"}
    assert deployments == {"motte-steward", "motte-registry"}
    assert [name for kind, name in by_kind if kind == "DaemonSet"] == ["motte-host"]
    for obj in found:
        assert obj["apiVersion"] == API_VERSIONS[obj["kind"]], f"{obj['kind']}: apiVersion {obj['apiVersion']}"
        assert obj["metadata"]["name"]
        if obj["kind"] in ("Deployment", "DaemonSet"):
            check_pod_template(obj, by_kind)
        if obj["kind"] == "Deployment":
            assert obj["spec"]["replicas"] >= 2, "the services run as replicas"
        if obj["kind"] == "Service":
            selector = require(obj, "spec.selector")
            targets = [o for o in found if o["kind"] == "Deployment"
                       and selector.items() <= o["spec"]["template"]["metadata"]["labels"].items()]
            assert len(targets) == 1, f"Service {obj['metadata']['name']} selects {len(targets)} Deployments"
            named = {p["name"] for c in targets[0]["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
            for port in require(obj, "spec.ports"):
                assert isinstance(port["port"], int) and port["targetPort"] in named
        if obj["kind"] == "PersistentVolumeClaim":
            assert require(obj, "spec.accessModes") and require(obj, "spec.resources.requests.storage")


@pytest.mark.parametrize("broken", ["no image", "unknown option"])
def test_the_check_notices_a_broken_manifest(broken: str, monkeypatch: pytest.MonkeyPatch) -> None:
    found = objects()
    deployment = next(o for o in found if o["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    if broken == "no image":
        container["image"] = ""
    else:
        container["args"] = [*container["args"], "--no-such-option"]
    monkeypatch.setattr(f"{__name__}.objects", lambda: found)
    with pytest.raises(AssertionError):
        test_the_manifests_have_what_the_kubernetes_api_requires()
