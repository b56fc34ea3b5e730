"""Keep networking: a TLS echo server in a nil keep against an asyncio + ssl echo server, one run.

    .venv/bin/python bench/bench_net.py [--seconds 30] [--quick]

Both servers are processes of their own: motte's is ``motte run --backend nil`` with the
``net_echo`` workload behind a ``prot = "tls"`` listen socket (TLS ends in the keep; the host
relays ciphertext), the baseline is Python's asyncio with ``ssl`` on the host, with the same kind
of key (P-256, self-signed) and TLS 1.3. The clients run in this process, the same for both.

The round trips are measured in alternating half-second slices on the two servers (the load of a
shared machine drifts and must weigh on both alike). Prints both measurements and their ratio,
and the load average at the start and the end (other work moves both, and their ratio).
Targets: throughput of 64 KiB messages >= 0.5x the baseline, p50 round trip of 1 KiB
messages <= 2x; 256 concurrent TLS connections doing request/response: no errors (requests/s
reported).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import selectors
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.workloads import workload  # noqa: E402

BASELINE = r"""
import asyncio, ssl, sys

async def echo(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()

async def main():
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(sys.argv[2], sys.argv[3])
    server = await asyncio.start_server(echo, "127.0.0.1", int(sys.argv[1]), ssl=context, backlog=512)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"""

CONFIG = """
[[files]]
kind = "stdin"
[[files]]
kind = "stdout"
[[files]]
kind = "stderr"
[[files]]
kind = "listen"
prot = "tls"
addr = "127.0.0.1"
port = {port}
name = "echo"
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def self_signed(directory: Path) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "baseline")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def start(command: list[str]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert process.stdout is not None
    line = process.stdout.readline()
    if b"listening" not in line:
        process.kill()
        raise SystemExit(f"server did not start: {command}")
    return process


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # both servers are self-signed; this measures transport
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


def connect(port: int) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client_context().wrap_socket(raw, server_hostname="localhost")


def throughput(port: int, seconds: float, size: int = 64 << 10) -> float:
    """MB/s echoed: 64 KiB messages streamed in and read back at once, on one connection.

    One thread, a non-blocking socket and a selector: an SSL socket must not be used by two
    threads at once, and a pipelined stream measures throughput rather than round trips.
    """
    conn = connect(port)
    conn.setblocking(False)
    message = memoryview(os.urandom(size))
    pending = message
    received = 0
    with selectors.DefaultSelector() as selector:
        selector.register(conn, selectors.EVENT_READ | selectors.EVENT_WRITE)
        started = time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            selector.select(1.0)
            try:
                sent = conn.send(pending)
                pending = pending[sent:] if sent < len(pending) else message
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                pass
            try:
                while data := conn.recv(1 << 20):
                    received += len(data)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                pass
    conn.close()
    return received / elapsed / 1e6


def ping_pong(port: int, seconds: float, size: int = 1024) -> list[float]:
    """Round trips of one ``size``-byte message, in seconds (the first few, warming up, left out)."""
    conn = connect(port)
    message = os.urandom(size)
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        conn.sendall(message)
        got = 0
        while got < size:
            got += len(conn.recv(size - got))
        times.append(time.perf_counter() - started)
    conn.close()
    return times[10:] or times


def interleaved_ping_pong(ports: tuple[int, int], seconds: float, rounds: int = 10) -> tuple[float, float]:
    """Median round trips on both servers, measured in alternating slices: the load of a shared
    machine drifts, and must weigh on both alike."""
    samples: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for port, times in zip(ports, samples, strict=True):
            times += ping_pong(port, seconds / rounds)
    return statistics.median(samples[0]), statistics.median(samples[1])


async def _many(port: int, connections: int, seconds: float, size: int) -> tuple[int, int]:
    context = client_context()
    message = os.urandom(size)
    done = 0
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def one() -> None:
        nonlocal done, errors
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost"), 30)
            while time.perf_counter() < stop_at:
                writer.write(message)
                await writer.drain()
                await asyncio.wait_for(reader.readexactly(size), 30)
                done += 1
            writer.close()
        except (TimeoutError, OSError, ssl.SSLError, asyncio.IncompleteReadError):
            errors += 1

    await asyncio.gather(*(one() for _ in range(connections)))
    return done, errors


def concurrent(port: int, connections: int, seconds: float, size: int = 1024) -> tuple[float, int]:
    started = time.perf_counter()
    done, errors = asyncio.run(_many(port, connections, seconds, size))
    return done / (time.perf_counter() - started), errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="duration of each throughput measurement")
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test of the benchmark)")
    args = parser.parse_args()
    seconds = 2.0 if args.quick else args.seconds
    short = 1.5 if args.quick else 5.0

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        cert, key = self_signed(directory)
        motte_port, base_port = free_port(), free_port()
        config = directory / "Enarx.toml"
        config.write_text(CONFIG.format(port=motte_port))
        servers = [
            start([sys.executable, "-m", "motte", "run", "--backend", "nil", "--wasmcfgfile", str(config),
                   str(workload("net_echo"))]),
            start([sys.executable, "-c", BASELINE, str(base_port), cert, key]),
        ]
        try:
            print(f"TLS echo, motte nil keep (port {motte_port}) vs asyncio + ssl on the host (port {base_port})")
            # Other work on the machine moves the round trips of both, and their ratio: say how much there was.
            print(f"load average (1 min) {os.getloadavg()[0]:.2f} at the start", flush=True)
            ours, theirs = throughput(motte_port, seconds), throughput(base_port, seconds)
            print(f"{'throughput, 64 KiB messages':<34} motte {ours:8.1f} MB/s   asyncio {theirs:8.1f} MB/s"
                  f"   ratio {ours / theirs:5.2f}x  (target >= 0.5x)")
            ours, theirs = interleaved_ping_pong((motte_port, base_port), short)
            print(f"{'p50 round trip, 1 KiB':<34} motte {ours * 1e6:8.0f} us     asyncio {theirs * 1e6:8.0f} us"
                  f"     ratio {ours / theirs:5.2f}x  (target <= 2x)")
            (ours, our_errors), (theirs, their_errors) = (concurrent(motte_port, 256, short),
                                                          concurrent(base_port, 256, short))
            print(f"{'256 connections, request/response':<34} motte {ours:8.0f} req/s  asyncio {theirs:8.0f} req/s"
                  f"  ratio {ours / theirs if theirs else float('nan'):5.2f}x  errors: motte {our_errors},"
                  f" asyncio {their_errors}")
            print(f"load average (1 min) {os.getloadavg()[0]:.2f} at the end")
        finally:
            for server in servers:
                server.terminate()
                try:
                    server.wait(10)
                except subprocess.TimeoutExpired:
                    server.kill()


if __name__ == "__main__":
    main()
