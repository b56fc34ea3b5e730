"""``motte package`` (keygen, publish, info, fetch), ``motte repo`` (register, info) and ``motte user
register``: Enarx's commands for a package registry, with its slugs ``[HOST/]USER/REPO:TAG``.

The host may be left out when ``MOTTE_REGISTRY`` names it. Heavy imports happen inside the
commands, so ``motte --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from motte.shared.errors import MotteError

if TYPE_CHECKING:
    from motte.tenant.registry.client import RegistryClient
    from motte.tenant.registry.policy import RegistryPolicy

EXIT_REFUSED = 1


def _client_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--ca", "ca_file", envvar="MOTTE_REGISTRY_CA", type=click.Path(dir_okay=False, path_type=Path),
                     help="The CA bundle the registry's TLS certificate chains to [env MOTTE_REGISTRY_CA]."),
        click.option("--token-file", envvar="MOTTE_REGISTRY_TOKEN_FILE",
                     type=click.Path(dir_okay=False, path_type=Path),
                     help="The registry's bearer token, to publish [env MOTTE_REGISTRY_TOKEN_FILE]."),
        click.option("--cert", "client_cert", type=click.Path(dir_okay=False, path_type=Path),
                     help="A client certificate (PEM), to read a private repository."),
        click.option("--key", "client_key", type=click.Path(dir_okay=False, path_type=Path),
                     help="... and its key."),
        click.option("--json", "as_json", is_flag=True, help="Print the result as JSON."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _policy_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--policy", "policy_file", type=click.Path(dir_okay=False, path_type=Path),
                     help="A tenant policy file: its publishers and allow_unsigned."),
        click.option("--publisher", "publishers", multiple=True, metavar="THUMBPRINT",
                     help="Accept tags signed by this key (repeatable; as motte package keygen prints it)."),
        click.option("--allow-unsigned", is_flag=True, help="Accept a tag no trusted publisher signed."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _default_host() -> str | None:
    return os.environ.get("MOTTE_REGISTRY") or None


def _client(host: str, ca_file: Path | None, token_file: Path | None, client_cert: Path | None,
            client_key: Path | None) -> RegistryClient:
    from motte.outside.user_files import read_token
    from motte.tenant.registry.client import RegistryClient, RegistryTrust

    if client_key is not None and client_cert is None:
        raise MotteError("--key needs --cert")
    token = read_token(token_file) if token_file is not None else None
    return RegistryClient(host, RegistryTrust(ca_file, client_cert, client_key, token))


def _policy(policy_file: Path | None, publishers: tuple[str, ...], allow_unsigned: bool) -> RegistryPolicy:
    import tomllib

    from motte.tenant.registry.policy import RegistryPolicy, check_publisher

    policy = RegistryPolicy(frozenset(check_publisher(p, "--publisher") for p in publishers), allow_unsigned)
    if policy_file is None:
        return policy
    try:
        table = tomllib.loads(policy_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise MotteError(f"cannot read the policy {policy_file}: {exc}") from None
    read = RegistryPolicy.from_table(table, str(policy_file))
    return RegistryPolicy(policy.publishers | read.publishers, policy.allow_unsigned or read.allow_unsigned)


class _Meter:
    """Progress of a long transfer on stderr, when it is a terminal (at most ten updates a second)."""

    def __init__(self, verb: str) -> None:
        self.verb = verb
        self.shown = sys.stderr.isatty()
        self.last = 0.0

    def __call__(self, done: int, total: int, what: str = "") -> None:
        now = time.monotonic()
        if not self.shown or (now - self.last < 0.1 and done < total):
            return
        self.last = now
        click.echo(f"\r\x1b[Kmotte: {self.verb} {what} {done / 1e6:.1f}/{total / 1e6:.1f} MB", err=True, nl=False)

    def end(self) -> None:
        if self.shown and self.last:
            click.echo("\r\x1b[K", err=True, nl=False)


def _refused(exc: MotteError, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"verdict": "refused", "reason": str(exc)}))
    else:
        click.secho(f"refused: {exc}", fg="red", bold=True, err=True)
    sys.exit(EXIT_REFUSED)


# --- motte package -------------------------------------------------------------------------------
@click.group()
def package() -> None:
    """Publish packages to a registry, and fetch them with their signatures checked."""


@package.command("keygen")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def keygen(out: Path, as_json: bool) -> None:
    """Make a publisher's signing key (P-256) in OUT (mode 0600), and print its thumbprint: what
    tenants list in their policy's publishers."""
    from motte.registry.signing import generate_key, publisher_id, write_key

    key = generate_key()
    write_key(out, key)
    thumbprint = publisher_id(key)
    if as_json:
        click.echo(json.dumps({"key": str(out), "publisher": thumbprint, "jwk": key.as_dict(private=False)}))
    else:
        click.echo(f"wrote {out} (keep it secret); publisher {thumbprint}")


@package.command("publish")
@click.argument("spec", metavar="[HOST/]USER/REPO:TAG")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--sign", "sign_key", type=click.Path(dir_okay=False, path_type=Path),
              help="Sign the tag with this publisher key (motte package keygen).")
@_client_options
def publish_command(spec: str, path: Path, sign_key: Path | None, ca_file: Path | None, token_file: Path | None,
                    client_cert: Path | None, client_key: Path | None, as_json: bool) -> None:
    """Publish the folder PATH (main.wasm, Enarx.toml, ...) or a .wasm as SPEC."""
    from motte.registry.formats import parse_tag_slug
    from motte.registry.signing import read_key
    from motte.tenant.registry.publish import publish

    slug = parse_tag_slug(spec, _default_host())
    key = read_key(sign_key) if sign_key else None
    meter = _Meter("publishing")
    with _client(slug.host, ca_file, token_file, client_cert, client_key) as client:
        try:
            done = publish(client, slug, path, key, meter)
        finally:
            meter.end()
    facts = {"slug": str(slug), "root": done.root.to_json(), "signer": done.signer, "created": done.created,
             "nodes": done.nodes, "uploaded": done.uploaded, "bytes": done.bytes}
    if as_json:
        click.echo(json.dumps(facts))
        return
    signed = f"signed by {done.signer}" if done.signer else "unsigned"
    verb = "published" if done.created else "was published already, with this very tree:"
    click.echo(f"{verb} {slug} ({signed}): {done.nodes} nodes, {done.uploaded} sent, "
               f"root sha-256 {done.root.digest['sha-256'].hex()}")


@package.command("info")
@click.argument("spec", metavar="[HOST/]USER/REPO:TAG")
@_policy_options
@_client_options
def info_command(spec: str, policy_file: Path | None, publishers: tuple[str, ...], allow_unsigned: bool,
                 ca_file: Path | None, token_file: Path | None, client_cert: Path | None, client_key: Path | None,
                 as_json: bool) -> None:
    """Show a published tag: its root entry and who signed it. With --publisher or --policy,
    the signature is verified (exit 1 if refused)."""
    from motte.registry.formats import JWS_TYPE, parse_tag_slug
    from motte.tenant.registry.fetch import MAX_TAG_ENTRY, PackageRefused, check_tag
    from motte.tenant.registry.policy import RegistryPolicy

    slug = parse_tag_slug(spec, _default_host())
    policy = _policy(policy_file, publishers, allow_unsigned)
    checked = policy_file is not None or bool(publishers) or allow_unsigned
    with _client(slug.host, ca_file, token_file, client_cert, client_key) as client:
        reply = client.request("GET", slug.route("tag"), limit=MAX_TAG_ENTRY)
    content_type = reply.headers.get("content-type", "")
    try:
        verified = check_tag(reply.body, content_type, slug, policy if checked else RegistryPolicy(allow_unsigned=True))
    except PackageRefused as exc:
        _refused(exc, as_json)
        return
    facts = {"slug": str(slug), "signed": content_type == JWS_TYPE, "signers": list(verified.signed_by),
             "verified_signer": verified.signer if checked else None, "root": verified.root.to_json()}
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    root = verified.root.meta
    click.echo(f"{slug}: {root.type}, {root.length} bytes, sha-256 {root.digest.get('sha-256', b'').hex()}")
    if content_type != JWS_TYPE:
        click.echo("unsigned" + ("" if checked else " (no policy given: nothing verified)"))
    elif not checked:
        click.echo(f"signed by {', '.join(verified.signed_by)} (not verified: give --publisher or --policy)")
    else:
        click.echo(f"signed by {verified.signer or 'no trusted publisher'}: verified" if verified.signer
                   else "signed by no trusted publisher: accepted as unsigned (allow_unsigned)")


@package.command("fetch")
@click.argument("spec", metavar="[HOST/]USER/REPO:TAG")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Write the package here (a new folder). Default: REPO-TAG in the current folder.")
@_policy_options
@_client_options
def fetch_command(spec: str, out: Path | None, policy_file: Path | None, publishers: tuple[str, ...],
                  allow_unsigned: bool, ca_file: Path | None, token_file: Path | None, client_cert: Path | None,
                  client_key: Path | None, as_json: bool) -> None:
    """Download a package, checking its signature against the policy and every digest, into a
    new folder. Nothing is written unless all of it checks out (exit 1 if refused)."""
    from motte.registry.formats import parse_tag_slug
    from motte.tenant.registry.fetch import PackageRefused, fetch_tree, write_tree

    slug = parse_tag_slug(spec, _default_host())
    policy = _policy(policy_file, publishers, allow_unsigned)
    target = out or Path(f"{slug.repo}-{slug.tag}")
    meter = _Meter("fetching")
    with _client(slug.host, ca_file, token_file, client_cert, client_key) as client:
        try:
            tree = fetch_tree(client, slug, policy, lambda what, done, total: meter(done, total, what))
        except PackageRefused as exc:
            _refused(exc, as_json)
            return
        finally:
            meter.end()
    written = write_tree(tree, target)
    facts = {"slug": str(slug), "out": str(target), "files": [str(p) for p in written],
             "signer": tree.tag.signer, "root": tree.tag.root.to_json(), "bytes": tree.size}
    if as_json:
        click.echo(json.dumps(facts))
        return
    signed = f"signed by publisher {tree.tag.signer}" if tree.tag.signer else "UNSIGNED (allowed by the policy)"
    click.echo(f"fetched {slug} into {target}: {len(written)} files, {tree.size} bytes, {signed}; every digest checked")


# --- motte repo, motte user ----------------------------------------------------------------------
@click.group()
def repo() -> None:
    """Register repositories on a registry, and list their tags."""


@repo.command("register")
@click.argument("spec", metavar="[HOST/]USER/REPO")
@click.option("--private", is_flag=True, help="Readable only by keeps certified by a Steward the registry trusts.")
@_client_options
def repo_register(spec: str, private: bool, ca_file: Path | None, token_file: Path | None, client_cert: Path | None,
                  client_key: Path | None, as_json: bool) -> None:
    """Register a repository (public unless --private)."""
    from motte.registry.formats import canonical_json, parse_repo_slug

    slug = parse_repo_slug(spec, _default_host())
    body = canonical_json({"public": not private})
    with _client(slug.host, ca_file, token_file, client_cert, client_key) as client:
        reply = client.request("PUT", slug.route("repo"), body, _json_headers(body))
    _registered(str(slug), reply.status == 201, as_json)


@repo.command("info")
@click.argument("spec", metavar="[HOST/]USER/REPO")
@_client_options
def repo_info(spec: str, ca_file: Path | None, token_file: Path | None, client_cert: Path | None,
              client_key: Path | None, as_json: bool) -> None:
    """Show a repository's config and its published tags."""
    from motte.registry.formats import load_json, parse_repo_slug

    slug = parse_repo_slug(spec, _default_host())
    with _client(slug.host, ca_file, token_file, client_cert, client_key) as client:
        config = load_json(client.request("GET", slug.route("repo")).body, "repository config")
        tags = load_json(client.request("GET", slug.route("tags")).body, "tag list")
    if as_json:
        click.echo(json.dumps({"config": config, "tags": tags}, indent=2))
        return
    visibility = "public" if isinstance(config, dict) and config.get("public") else "private"
    click.echo(f"{slug} ({visibility}): {len(tags)} tags" + "".join(f"\n  {tag}" for tag in tags))


@click.group()
def user() -> None:
    """Register users on a registry."""


@user.command("register")
@click.argument("spec", metavar="[HOST/]USER")
@click.option("--subject", help="Who the user is (Drawbridge's OpenID subject). Default: the user name.")
@_client_options
def user_register(spec: str, subject: str | None, ca_file: Path | None, token_file: Path | None,
                  client_cert: Path | None, client_key: Path | None, as_json: bool) -> None:
    """Register a user, under whom repositories are registered."""
    from motte.registry.formats import canonical_json, parse_user_slug

    slug = parse_user_slug(spec, _default_host())
    body = canonical_json({"subject": subject or slug.user})
    with _client(slug.host, ca_file, token_file, client_cert, client_key) as client:
        reply = client.request("PUT", slug.route("user"), body, _json_headers(body))
    _registered(str(slug), reply.status == 201, as_json)


def _json_headers(body: bytes) -> dict[str, str]:
    from motte.registry.formats import JSON_TYPE, Meta

    return {"Content-Type": JSON_TYPE, "Content-Digest": Meta.of(body, JSON_TYPE).content_digest}


def _registered(name: str, created: bool, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"name": name, "created": created}))
    else:
        click.echo(f"registered {name}" if created else f"{name} was registered already")
