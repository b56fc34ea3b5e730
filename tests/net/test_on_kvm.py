"""The core of keep networking on the VM keep too: the same channel streams, TLS in the guest."""

from __future__ import annotations

import os
import socket

import pytest
from cryptography import x509

from motte.host.platform import kvm_usable
from tests.net.conftest import Served, connect, free_port, listen_toml, recv_all, recv_exactly

_usable, _reason = kvm_usable()
pytestmark = [
    pytest.mark.vm,
    pytest.mark.timeout(240),
    pytest.mark.skipif(not _usable, reason=f"kvm backend unavailable: {_reason}"),
]


def test_tls_echo_in_a_vm_keep(serve) -> None:
    port = free_port()
    server: Served = serve("net_echo", listen_toml(port), "1", backend="kvm")
    server.expect("listening", timeout=120)
    client = connect(port)
    assert client.version() == "TLSv1.3"
    certificate = x509.load_der_x509_certificate(client.getpeercert(binary_form=True))
    assert certificate.subject == certificate.issuer  # the keep's own self-signed identity
    message = os.urandom(256 << 10)
    client.sendall(message)
    assert recv_exactly(client, len(message)) == message
    client.close()
    server.expect("served 1", timeout=60)
    assert server.wait(timeout=60) == 0


def test_plain_tcp_and_the_enarx_fd3_contract_in_a_vm_keep(serve) -> None:
    port = free_port()
    server: Served = serve("accept_fd3", listen_toml(port, prot="tcp", name="TEST_TCP_LISTEN"), backend="kvm")
    server.expect("FD_COUNT=4", timeout=120)
    server.expect("FD_NAMES=stdin:stdout:stderr:TEST_TCP_LISTEN")
    client = connect(port, prot="tcp")
    client.sendall(b"hi there\n")
    client.shutdown(socket.SHUT_WR)
    assert recv_all(client) == b"you said: hi there\n"
    server.expect("done", timeout=60)
    assert server.wait(timeout=60) == 0


def test_tls_connect_verified_inside_a_vm_keep(serve, tmp_path) -> None:
    from tests.net.conftest import connect_toml
    from tests.net.test_connect import RESPONSE, Upstream

    upstream = Upstream(tmp_path, tls=True)
    try:
        toml = connect_toml("localhost", upstream.port, ca="certs/ca.pem")
        server: Served = serve("connect_get", toml, "/vm", "localhost", backend="kvm")
        assert server.wait(timeout=120) == 0, server.stderr
        assert "\n".join(server.lines_so_far()).encode() + b"\n" == RESPONSE
        assert upstream.requests == [b"GET /vm HTTP/1.0\r\nHost: localhost\r\n\r\n"]
        assert upstream.versions == ["TLSv1.3"]
    finally:
        upstream.close()
