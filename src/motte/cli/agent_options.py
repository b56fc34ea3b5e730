"""How the tenant-side commands (``motte deploy``, ``motte host list/status/stop``) name a host
agent and its token: one set of options, one way to read them."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from motte.tenant.agent_client import AgentClient

AGENT_ENV = "MOTTE_AGENT"
TOKEN_ENV = "MOTTE_AGENT_TOKEN"
#: The agent makes ids of 16 hex digits; a name a URL path could misread is refused before it is sent.
KEEP_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

F = TypeVar("F", bound=Callable[..., Any])


def agent_options(command: F) -> F:
    """``--agent URL`` and ``--token-file FILE``, with their environment defaults."""
    command = click.option(
        "--token-file", type=click.Path(path_type=Path),
        help=f"The agent's bearer token [default: ${TOKEN_ENV}].")(command)
    return click.option(
        "--agent", default=None, metavar="URL",
        help=f"The host agent: http://HOST:PORT or unix:/PATH [default: ${AGENT_ENV} or http://127.0.0.1:7313].",
    )(command)


def agent_client(agent: str | None, token_file: Path | None) -> AgentClient:
    from motte.outside.agent_api import DEFAULT_PORT
    from motte.tenant.agent_client import AgentClient

    url = agent or os.environ.get(AGENT_ENV) or f"http://127.0.0.1:{DEFAULT_PORT}"
    if token_file is not None:
        from motte.outside.user_files import read_token

        return AgentClient(url, token=read_token(token_file, what="--token-file"))
    return AgentClient(url, token=os.environ.get(TOKEN_ENV) or None)


def keep_id_argument(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if not KEEP_ID.fullmatch(value):
        raise click.BadParameter(f"{value[:80]!r} is not a keep id (as `motte host list` prints them)")
    return value
