"""OCI image layout tarballs made with the standard library, for ``ctr image import``.

One uncompressed layer holding the given files; the image's platform is this host's (containerd
unpacks an image for the platform it runs on), its entry point the given command.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import tarfile
from pathlib import Path
from typing import Any

ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64"}


def host_architecture() -> str:
    machine = platform.machine()
    return ARCHITECTURES.get(machine, machine)


def _tar(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(members.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _descriptor(media_type: str, blob: bytes, blobs: dict[str, bytes], **extra: Any) -> dict[str, Any]:
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    blobs[f"blobs/sha256/{digest.removeprefix('sha256:')}"] = blob
    return {"mediaType": media_type, "digest": digest, "size": len(blob), **extra}


def write_image(path: Path, name: str, files: dict[str, bytes], entrypoint: list[str],
                env: tuple[str, ...] = ()) -> None:
    """Write the image ``name`` (e.g. ``docker.io/motte/hello:1``) as an OCI image layout tarball."""
    blobs: dict[str, bytes] = {}
    layer = _tar(files)
    layer_descriptor = _descriptor("application/vnd.oci.image.layer.v1.tar", layer, blobs)
    config = {
        "architecture": host_architecture(),
        "os": "linux",
        "config": {"Entrypoint": entrypoint, "Env": list(env), "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_descriptor["digest"]]},
    }
    config_descriptor = _descriptor("application/vnd.oci.image.config.v1+json", json.dumps(config).encode(), blobs)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_descriptor,
        "layers": [layer_descriptor],
    }
    tag = name.rpartition(":")[2]
    manifest_descriptor = _descriptor(
        "application/vnd.oci.image.manifest.v1+json", json.dumps(manifest).encode(), blobs,
        annotations={"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag},
    )
    index = {"schemaVersion": 2, "manifests": [manifest_descriptor]}
    layout = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps(index).encode(),
        **blobs,
    }
    path.write_bytes(_tar(layout))
