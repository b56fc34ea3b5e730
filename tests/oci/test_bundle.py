"""A bundle's config.json read as a keep's workload."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from motte.host.oci.bundle import CONFIG_ANNOTATION, DEFAULT_MEMORY, container_spec, workload_config
from motte.shared.enarx_config import default_config
from motte.shared.errors import MotteError
from tests.net.conftest import STDIO, listen_toml


def _bundle(tmp_path: Path, **overrides: Any) -> tuple[Path, dict[str, Any]]:
    (tmp_path / "rootfs" / "app").mkdir(parents=True)
    (tmp_path / "rootfs" / "app" / "main.wasm").write_bytes(b"\0asm\1\0\0\0")
    config: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "process": {"args": ["/app/main.wasm", "-v"], "env": ["PATH=/bin", "A=b=c"], "cwd": "/"},
        "root": {"path": "rootfs"},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        **overrides,
    }
    return tmp_path, config


def test_entry_args_env_and_rootfs(tmp_path: Path) -> None:
    bundle, config = _bundle(tmp_path)
    spec = container_spec(config, bundle)
    assert spec.entry == (bundle / "rootfs" / "app" / "main.wasm").resolve()
    assert spec.args == ("-v",)
    assert spec.env == {"PATH": "/bin", "A": "b=c"}
    assert spec.dirs == ((str((bundle / "rootfs").resolve()), "/"),)  # /proc is not preopened
    assert (spec.memory_limit, spec.backend) == (DEFAULT_MEMORY, "auto")


def test_relative_entry_starts_at_cwd(tmp_path: Path) -> None:
    bundle, config = _bundle(tmp_path)
    config["process"].update(args=["main.wasm"], cwd="/app")
    assert container_spec(config, bundle).entry.name == "main.wasm"


def test_bind_mounts_memory_and_backend(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "file").write_text("")
    bundle, config = _bundle(tmp_path, root={"path": "rootfs", "readonly": True},
                             annotations={"motte.backend": "nil"},
                             linux={"resources": {"memory": {"limit": 64 << 20}}})
    config["mounts"] += [
        {"destination": "/data", "type": "bind", "source": str(data), "options": ["rbind", "ro"]},
        {"destination": "/out", "type": "none", "source": str(data), "options": ["bind"]},
        {"destination": "/etc/hosts", "type": "bind", "source": str(tmp_path / "file"), "options": ["bind"]},
    ]
    spec = container_spec(config, bundle)
    assert spec.read_only_dirs == ((str((bundle / "rootfs").resolve()), "/"), (str(data), "/data"))
    assert spec.dirs == ((str(data), "/out"),)
    assert (spec.memory_limit, spec.backend) == (64 << 20, "nil")


def test_compat_annotation_allows_any_name(tmp_path: Path) -> None:
    bundle, config = _bundle(tmp_path)
    os.rename(bundle / "rootfs" / "app" / "main.wasm", bundle / "rootfs" / "app" / "main")
    config["process"]["args"] = ["/app/main"]
    with pytest.raises(MotteError, match=r"not a \.wasm module"):
        container_spec(config, bundle)
    config["annotations"] = {"module.wasm.image/variant": "compat"}
    assert container_spec(config, bundle).entry.name == "main"


@pytest.mark.parametrize(("change", "error"), [
    ({"annotations": {"motte.backend": "vmware"}}, "is not a backend"),
    ({"linux": {"resources": {"memory": {"limit": 4096}}}}, "below one wasm page"),
    ({"process": {"args": []}}, "non-empty list"),
    ({"process": {"args": ["/app/main.wasm"], "env": ["NOEQUALS"]}}, "not KEY=VALUE"),
])
def test_refusals(tmp_path: Path, change: dict[str, Any], error: str) -> None:
    bundle, config = _bundle(tmp_path, **change)
    with pytest.raises(MotteError, match=error):
        container_spec(config, bundle)


def test_symlink_out_of_rootfs_is_refused(tmp_path: Path) -> None:
    bundle, config = _bundle(tmp_path)
    outside = tmp_path / "outside.wasm"
    outside.write_bytes(b"\0asm")
    (bundle / "rootfs" / "escape.wasm").symlink_to(outside)
    config["process"]["args"] = ["/escape.wasm"]
    with pytest.raises(MotteError, match="leads out of the container's rootfs"):
        container_spec(config, bundle)


LISTEN = listen_toml(8443, name="https")


def test_the_enarx_toml_beside_the_entry_point_is_the_workload_config(tmp_path: Path) -> None:
    bundle, config = _bundle(tmp_path)
    assert container_spec(config, bundle).config_file is None
    assert workload_config(container_spec(config, bundle)).files == default_config().files
    (bundle / "rootfs" / "app" / "Enarx.toml").write_text('args = ["--from-config"]\n' + LISTEN)
    spec = container_spec(config, bundle)
    assert spec.config_file == bundle.resolve() / "rootfs" / "app" / "Enarx.toml"
    workload = workload_config(spec)
    assert [(f.kind, f.name) for f in workload.files][3] == ("listen", "https")
    assert workload.args == ("--from-config", "-v")  # the config's, then the container's
    assert workload.env["A"] == "b=c"


def test_the_annotation_names_the_workload_config(tmp_path: Path) -> None:
    bundle, config = _bundle(tmp_path, annotations={CONFIG_ANNOTATION: "/etc/motte/app.toml"})
    with pytest.raises(MotteError, match="no such file in the image"):
        container_spec(config, bundle)
    (bundle / "rootfs" / "etc" / "motte").mkdir(parents=True)
    (bundle / "rootfs" / "etc" / "motte" / "app.toml").write_text(LISTEN)
    (bundle / "rootfs" / "app" / "Enarx.toml").write_text("this one is not read")
    assert workload_config(container_spec(config, bundle)).files[3].name == "https"
    config["annotations"] = {CONFIG_ANNOTATION: "../../../../etc/passwd"}
    config["process"]["cwd"] = "/app"
    with pytest.raises(MotteError, match="leads out of the container's rootfs"):
        container_spec(config, bundle)


@pytest.mark.parametrize(("ca", "error"), [
    ("/etc/ssl/certs/ca-certificates.crt", "name it relative to the Enarx.toml"),
    ("../../../outside.pem", "leads out of the container's rootfs"),
    ("link.pem", "leads out of the container's rootfs"),
])
def test_the_workload_config_names_no_host_file(tmp_path: Path, ca: str, error: str) -> None:
    """The image is the tenant's: a CA bundle it names must be in it, not one of the host's files."""
    bundle, config = _bundle(tmp_path)
    (tmp_path / "outside.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    (bundle / "rootfs" / "app" / "link.pem").symlink_to(tmp_path / "outside.pem")
    connect = f'[[files]]\nkind = "connect"\nprot = "tls"\nhost = "example.com"\nport = 443\nca = "{ca}"\n'
    (bundle / "rootfs" / "app" / "Enarx.toml").write_text(STDIO + connect)
    with pytest.raises(MotteError, match=error):
        workload_config(container_spec(config, bundle))


def test_the_network_namespace_is_config_jsons(tmp_path: Path) -> None:
    bundle, config = _bundle(tmp_path)
    assert container_spec(config, bundle).network_namespace is None  # none asked for: the host's
    namespaces: list[dict[str, str]] = [{"type": "pid"}, {"type": "network"}]
    config["linux"] = {"namespaces": namespaces}
    assert container_spec(config, bundle).network_namespace == ""  # a new one
    namespaces[1]["path"] = "/var/run/netns/cni-1234"
    assert container_spec(config, bundle).network_namespace == "/var/run/netns/cni-1234"
    namespaces[1]["path"] = "netns/cni-1234"
    with pytest.raises(MotteError, match="not an absolute path"):
        container_spec(config, bundle)
