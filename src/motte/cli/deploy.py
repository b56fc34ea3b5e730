"""``motte deploy``: provision a workload into a keep the tenant has verified, through a host agent."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from motte.cli.agent_options import agent_client, agent_options
from motte.cli.run import parse_size
from motte.shared.errors import MotteError

if TYPE_CHECKING:
    from collections.abc import Callable

    from motte.outside.agent_api import KeepRecord
    from motte.shared.provision import Frame, Secret
    from motte.tenant.agent_client import AgentClient
    from motte.tenant.deploy.package import Package
    from motte.tenant.deploy.policy import TenantPolicy
    from motte.tenant.deploy.session import DeployOutcome

MAX_SECRET_FILE = 64 << 10


def read_secrets(values: tuple[str, ...], kind: str, option: str) -> list[Secret]:
    """``NAME=@FILE`` -> the secret (its file read now: a bad one fails before any keep starts)."""
    from motte.outside.user_files import read_user_file
    from motte.shared.control import secret_name
    from motte.shared.provision import Secret

    secrets = []
    for item in values:
        name, sep, source = item.partition("=")
        if not sep or not source.startswith("@"):
            raise click.BadParameter(f"{item!r} is not NAME=@FILE", param_hint=option)
        try:
            secret_name(name)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint=option) from None
        value = read_user_file(source[1:], what=f"{option} {name}", limit=MAX_SECRET_FILE)
        secrets.append(Secret(kind, name, value))
    return secrets


def _package(name: str, policy: TenantPolicy, registry_ca: Path | None) -> Package:
    """A local package (a path that exists) or one fetched from a registry (a tag slug)."""
    from motte.tenant.deploy.package import load_package

    path = Path(name)
    if path.exists() or ":" not in name:
        return load_package(path)
    from motte.registry.formats import parse_tag_slug
    from motte.tenant.registry.client import RegistryTrust
    from motte.tenant.registry.fetch import fetch_package

    slug = parse_tag_slug(name, os.environ.get("MOTTE_REGISTRY") or None)
    return fetch_package(slug, RegistryTrust(ca_file=registry_ca), policy.registry).package


class _Output:
    """The workload's output, as it arrives, to motte's own stdout and stderr."""

    def __init__(self) -> None:
        from motte.shared.provision import Frame

        self._stdout = Frame.STDOUT

    def __call__(self, frame: Frame, data: bytes) -> None:
        target = sys.stdout.buffer if frame is self._stdout else sys.stderr.buffer
        target.write(data)
        target.flush()


@click.command()
@click.argument("package")
@click.option("--policy", "policy_path", type=click.Path(path_type=Path), required=True,
              help="The tenant policy (TOML): which keeps to trust. See docs/deploy.md.")
@agent_options
@click.option("--backend", default=None, help="The keep's backend [default: the strongest the host runs].")
@click.option("--max-memory", default="1G", show_default=True, metavar="SIZE", help="Cap on the workload's memory.")
@click.option("--timeout", type=click.FloatRange(min=0.001, max=1e7), metavar="SECONDS",
              help="Wall-clock deadline for the workload.")
@click.option("--wait", "wait_s", type=click.FloatRange(min=1, max=3600), default=60, show_default=True,
              metavar="SECONDS", help="How long the empty keep waits to be provisioned.")
@click.option("--secret", "file_secrets", multiple=True, metavar="NAME=@FILE",
              help="A secret the workload reads as /run/secrets/NAME (read-only, in keep memory).")
@click.option("--secret-env", "env_secrets", multiple=True, metavar="NAME=@FILE",
              help="A secret the workload gets as the environment variable NAME.")
@click.option("--detach", is_flag=True, help="Leave once the workload started; it runs on, its output is dropped.")
@click.option("--json", "as_json", is_flag=True, help="Print what was deployed as JSON on stdout (with --detach).")
@click.option("--registry-ca", type=click.Path(dir_okay=False, path_type=Path), envvar="MOTTE_REGISTRY_CA",
              help="For a registry package: the CA its TLS certificate chains to [env MOTTE_REGISTRY_CA].")
def deploy(package: str, policy_path: Path, agent: str | None, token_file: Path | None, backend: str | None,
           max_memory: str, timeout: float | None, wait_s: float, file_secrets: tuple[str, ...],
           env_secrets: tuple[str, ...], detach: bool, as_json: bool, registry_ca: Path | None) -> None:
    """Deploy PACKAGE (a .wasm, a folder with main.wasm and Enarx.toml, or a registry package
    [HOST/]USER/REPO:TAG) to a keep that first proves, on the tenant's own TLS session, that it is
    what POLICY trusts. A registry package's digests and tag signature are checked against the
    policy's publishers before anything is sent; the keep's certificate then names it.

    Nothing is sent to the keep before its evidence passed the policy; the workload, its config,
    its secrets and its output travel only inside TLS that ends inside the keep. The workload's
    exit status becomes motte's (124 deadline, 125 motte error, 134 trap, 137 memory limit);
    1 means the keep failed the policy and nothing was sent.

    \b
    Examples:
      motte deploy --policy tenant.toml ./app
      motte deploy --policy tenant.toml --secret db=@db.pass --backend nil app.wasm
      motte deploy --policy tenant.toml registry.example/alice/app:1.0
    """
    if as_json and not detach:
        raise click.BadParameter("--json goes with --detach (without it, stdout is the workload's)",
                                 param_hint="--json")
    from motte.outside.agent_api import KeepRequest

    memory = parse_size(max_memory)
    timeout_ms = None if timeout is None else max(1, round(timeout * 1000))
    client = agent_client(agent, token_file)
    # The launch request goes first: the agent hands out (or launches) the keep, and the keep
    # prepares for its tenant, while this process loads the rest. A bad input stops that keep.
    created = client.create_later(KeepRequest(backend=backend, memory=memory, timeout_ms=timeout_ms,
                                              wait_ms=round(wait_s * 1000), detach=detach))
    try:
        from motte.tenant.deploy.policy import read_tenant_policy

        policy = read_tenant_policy(policy_path)
        loaded = _package(package, policy, registry_ca)
        secrets = (*read_secrets(file_secrets, "file", "--secret"),
                   *read_secrets(env_secrets, "env", "--secret-env"))
    except BaseException:
        _abandon(client, created)
        raise
    record = created()
    outcome = _deploy(client, record, loaded, policy, secrets, timeout_ms, detach)
    if detach:
        _report_detached(record, outcome, as_json)
        return
    assert outcome.exit is not None
    exit_ = outcome.exit
    if exit_.reason != "exit" or exit_.message:
        from motte.shared.printable import printable

        click.echo(f"motte: {exit_.reason}: {printable(exit_.message)}", err=True)
        for line in exit_.backtrace:
            click.echo(f"  {printable(line)}", err=True)
    sys.exit(exit_.status)


def _deploy(client: AgentClient, record: KeepRecord, package: Package, policy: TenantPolicy,
            secrets: tuple[Secret, ...], timeout_ms: int | None, detach: bool) -> DeployOutcome:
    from motte.tenant.deploy.session import Limits, deploy

    say = _progress()
    say(f"keep {record.id} on {record.backend}: verifying it before sending anything")
    ended = False
    try:
        with client.session(record.id) as session:
            outcome = deploy(session, package, policy, Limits(record.memory, timeout_ms), secrets=secrets,
                             output=_Output(), detach=detach, progress=say)
        ended = True
        return outcome
    finally:
        if not ended:  # refused, failed or interrupted: nothing is left running
            _stop(client, record.id)


def _abandon(client: AgentClient, created: Callable[[], KeepRecord]) -> None:
    """Stop the keep whose launch request went out (the input turned out wrong)."""
    try:
        record = created()
    except MotteError:
        return  # no keep was launched
    _stop(client, record.id)


def _stop(client: AgentClient, keep_id: str) -> None:
    try:
        client.stop(keep_id)
    except MotteError:
        pass  # the agent is gone too; it stops its keeps when it goes


def _progress() -> Any:
    def say(text: str) -> None:
        if "UNATTESTED" in text or sys.stderr.isatty():
            click.echo(f"motte: {text}", err=True)

    return say


def _report_detached(record: KeepRecord, outcome: DeployOutcome, as_json: bool) -> None:
    facts = {
        "keep": record.id,
        "backend": record.backend,
        "technology": outcome.accepted.technology,
        "attested": outcome.accepted.attested,
        "workload_sha256": outcome.started.workload_sha256,
        "launch_sha256": outcome.started.launch_sha256,
        "chain": outcome.started.chain,
    }
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    click.echo(f"deployed: keep {record.id} on {record.backend}, workload {facts['workload_sha256']}, "
               f"launch {facts['launch_sha256']} (motte host stop {record.id} stops it)", err=True)
