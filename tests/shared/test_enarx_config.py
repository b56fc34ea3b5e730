"""Tests for the Enarx.toml workload config: its checks (motte.shared.enarx_config) and reading
its TOML (motte.outside.enarx_toml)."""

from __future__ import annotations

import contextlib
import json
import math
import unicodedata
from typing import Any, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from motte.outside.enarx_toml import parse_enarx_toml
from motte.shared.enarx_config import (
    ConfigError,
    FileKind,
    FileSpec,
    FrozenEnv,
    Protocol,
    WorkloadConfig,
    default_config,
)
from motte.shared.errors import MotteError

STDIO = (FileSpec("stdin", "stdin"), FileSpec("stdout", "stdout"), FileSpec("stderr", "stderr"))

DESIGN_EXAMPLE = """\
args = ["--verbose"]
[env]
GREETING = "hello"
[[files]]
kind = "stdin"
[[files]]
kind = "stdout"
[[files]]
kind = "stderr"
[[files]]
kind = "listen"
prot = "tls"
name = "ingest"
port = 8443
"""

# The shape of the Enarx project's own test configs (stdio plus a named TLS listener).
RUST_COMPAT_EXAMPLE = """\
[[files]]
kind = "stdin"

[[files]]
kind = "stdout"

[[files]]
kind = "stderr"

[[files]]
name = "TEST_TCP_LISTEN"
kind = "listen"
prot = "tls"
port = 9000
"""


def _error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_enarx_toml(text)
    return info.value


# --- the examples --------------------------------------------------------------------------------


def test_design_example_parses_to_the_exact_structure() -> None:
    config = parse_enarx_toml(DESIGN_EXAMPLE)
    assert config == WorkloadConfig(
        steward=None,
        args=("--verbose",),
        env=FrozenEnv({"GREETING": "hello"}),
        files=(*STDIO, FileSpec("listen", "ingest", prot="tls", addr="::", port=8443)),
    )
    assert config.fd_names() == "stdin:stdout:stderr:ingest"
    assert config.workload_env() == {
        "GREETING": "hello",
        "FD_COUNT": "4",
        "FD_NAMES": "stdin:stdout:stderr:ingest",
    }


def test_rust_compat_example() -> None:
    config = parse_enarx_toml(RUST_COMPAT_EXAMPLE)
    assert config.files == (*STDIO, FileSpec("listen", "TEST_TCP_LISTEN", prot="tls", addr="::", port=9000))
    assert config.args == ()
    assert config.env == {}
    assert config.steward is None
    assert config.workload_env() == {"FD_COUNT": "4", "FD_NAMES": "stdin:stdout:stderr:TEST_TCP_LISTEN"}


def test_enarx_crate_test_config_with_explicit_prot() -> None:
    # enarx-config's own test, with prot spelled out on the connect (motte requires it).
    config = parse_enarx_toml(
        """
        [[files]]
        kind = "stdin"

        [[files]]
        name = "X"
        kind = "listen"
        prot = "tcp"
        port = 9000

        [[files]]
        kind = "stdout"

        [[files]]
        kind = "null"

        [[files]]
        kind = "stderr"

        [[files]]
        kind = "connect"
        prot = "tls"
        host = "example.com"
        """
    )
    assert config.files == (
        FileSpec("stdin", "stdin"),
        FileSpec("listen", "X", prot="tcp", addr="::", port=9000),
        FileSpec("stdout", "stdout"),
        FileSpec("null", "null"),
        FileSpec("stderr", "stderr"),
        FileSpec("connect", "example.com", prot="tls", host="example.com", port=443),
    )
    assert config.fd_names() == "stdin:X:stdout:null:stderr:example.com"


def test_steward_and_ca() -> None:
    config = parse_enarx_toml(
        'steward = "https://steward.example.com:8443/path"\n'
        "[[files]]\n"
        'kind = "connect"\nprot = "tls"\nhost = "db.internal"\nport = 5432\n'
        'name = "db"\nca = "certs/db-ca.pem"\n'
    )
    assert config.steward == "https://steward.example.com:8443/path"
    assert config.files == (
        FileSpec("connect", "db", prot="tls", host="db.internal", port=5432, ca="certs/db-ca.pem"),
    )


def test_steward_ca() -> None:
    config = parse_enarx_toml('steward = "https://127.0.0.1:8443/"\nsteward_ca = "ca/steward-tls.pem"\n')
    assert config.steward_ca == "ca/steward-tls.pem"
    assert WorkloadConfig.from_json(config.to_json()) == config
    assert config.with_extra(args=["x"]).steward_ca == "ca/steward-tls.pem"
    assert "steward_ca" not in parse_enarx_toml('steward = "https://s.example"\n').to_json()
    assert config != parse_enarx_toml('steward = "https://127.0.0.1:8443/"\n')


_S = 'steward = "https://s.example"\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('steward_ca = "ca.pem"\n', "Enarx.toml:1: steward_ca: is only valid with steward"),
        (_S + 'steward_ca = ""\n', 'Enarx.toml:2: steward_ca: must be a path to a CA bundle, got ""'),
        (_S + "steward_ca = 3\n", "Enarx.toml:2: steward_ca: must be a path to a CA bundle, got integer 3"),
        (_S + 'steward_ca = "a\\nb"\n', "Enarx.toml:2: steward_ca: must be a path to a CA bundle"),
        (_S + 'stewardca = "x"\n', "Enarx.toml:2: stewardca: unknown key"),
    ],
)
def test_steward_ca_rejected(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_enarx_toml(text)
    assert message in str(info.value)


# --- defaults ------------------------------------------------------------------------------------


def test_default_config_is_stdio() -> None:
    config = default_config()
    assert config == WorkloadConfig(fd_env=False) != WorkloadConfig()
    assert config.files == STDIO
    assert config.args == () and config.env == {} and config.steward is None


def test_fd_count_and_names_come_with_a_config_file_only() -> None:
    assert default_config().workload_env() == {}
    assert default_config().with_extra(env={"A": "1"}).workload_env() == {"A": "1"}
    from_file = parse_enarx_toml('[env]\nA = "1"\n[[files]]\nkind = "stdin"\n').with_extra(env={"B": "2"})
    assert from_file.workload_env() == {"A": "1", "B": "2", "FD_COUNT": "1", "FD_NAMES": "stdin"}
    for config in (default_config(), from_file):  # the keep gets the same config
        assert WorkloadConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
    assert "fd_env" not in from_file.to_json() and default_config().to_json()["fd_env"] is False
    with pytest.raises(ConfigError, match="fd_env must be true or false"):
        WorkloadConfig.from_json({"fd_env": 0})
    with pytest.raises(ConfigError, match="unknown key"):
        parse_enarx_toml("fd_env = false")  # not a key of Enarx.toml


def test_default_names_ports_and_addr() -> None:
    config = parse_enarx_toml(
        """
        [[files]]
        kind = "null"
        [[files]]
        kind = "stdin"
        [[files]]
        kind = "stdout"
        [[files]]
        kind = "stderr"
        [[files]]
        kind = "listen"
        prot = "tls"
        name = "a"
        [[files]]
        kind = "listen"
        prot = "tcp"
        name = "b"
        [[files]]
        kind = "connect"
        prot = "tls"
        host = "example.com"
        [[files]]
        kind = "connect"
        prot = "tcp"
        host = "10.0.0.1"
        """
    )
    assert config.files == (
        FileSpec("null", "null"),
        *STDIO,
        FileSpec("listen", "a", prot="tls", addr="::", port=443),
        FileSpec("listen", "b", prot="tcp", addr="::", port=80),
        FileSpec("connect", "example.com", prot="tls", host="example.com", port=443),
        FileSpec("connect", "10.0.0.1", prot="tcp", host="10.0.0.1", port=80),
    )


def test_explicit_names_and_addr() -> None:
    config = parse_enarx_toml(
        """
        [[files]]
        kind = "stdin"
        name = "input"
        [[files]]
        kind = "null"
        name = "nothing"
        [[files]]
        kind = "listen"
        prot = "tcp"
        name = "web"
        addr = "127.0.0.1"
        port = 8080
        [[files]]
        kind = "connect"
        prot = "tcp"
        host = "::1"
        name = "local6"
        """
    )
    assert config.fd_names() == "input:nothing:web:local6"
    assert config.files[2].addr == "127.0.0.1"


def test_empty_file_list_means_no_files() -> None:
    assert parse_enarx_toml("files = []").files == ()


def test_toml_without_files_key_has_no_files_as_in_enarx() -> None:
    config = parse_enarx_toml('args = ["x"]')
    assert config.files == ()
    assert config.workload_env() == {"FD_COUNT": "0", "FD_NAMES": ""}


def test_byte_order_mark_is_ignored() -> None:
    assert parse_enarx_toml("\ufeff" + DESIGN_EXAMPLE) == parse_enarx_toml(DESIGN_EXAMPLE)


def test_empty_toml() -> None:
    assert parse_enarx_toml("") == WorkloadConfig(files=())


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('[[files]]\nkind = "stdout"\n[[files]]\nkind = "stdout"\n', 3),  # both named by their kind
        ('[[files]]\nkind = "stdin"\nname = "in"\n[[files]]\nkind = "listen"\nprot = "tcp"\nname = "in"\n', 7),
    ],
)
def test_two_files_of_one_name_are_refused(text: str, line: int) -> None:
    # Enarx accepts them, but then the workload cannot tell its files apart in FD_NAMES.
    err = _error(text)
    assert str(err).startswith(f'Enarx.toml:{line}: files[1].name: "') and "files[0]" in str(err), str(err)
    with pytest.raises(ConfigError, match=r"files\[1\]\.name"):
        WorkloadConfig.from_json({"files": [{"kind": "null", "name": "x"}, {"kind": "null", "name": "x"}]})


# --- environment, extras, immutability -----------------------------------------------------------


def test_motte_fd_variables_override_the_users() -> None:
    config = parse_enarx_toml(
        '[env]\nFD_COUNT = "99"\nFD_NAMES = "lies"\nOTHER = "x"\n[[files]]\nkind = "stdin"\n'
    )
    assert config.env["FD_COUNT"] == "99"  # kept as written...
    assert config.workload_env() == {"FD_COUNT": "1", "FD_NAMES": "stdin", "OTHER": "x"}  # ...but motte wins


def test_with_extra_appends_args_and_merges_env_with_cli_winning() -> None:
    config = parse_enarx_toml('args = ["a", "b"]\n[env]\nX = "file"\nY = "file"\n')
    extra = config.with_extra(["c"], {"Y": "cli", "Z": "cli"})
    assert extra.args == ("a", "b", "c")
    assert extra.env == {"X": "file", "Y": "cli", "Z": "cli"}
    assert extra.files == config.files and extra.steward == config.steward
    assert config.args == ("a", "b")  # the original is untouched
    assert config.with_extra() == config


def test_with_extra_validates() -> None:
    with pytest.raises(ConfigError, match=r"^command line: env\.\"A=B\": "):
        default_config().with_extra(env={"A=B": "x"})
    with pytest.raises(ConfigError, match=r"^command line: args\[1\]: must not contain a NUL"):
        default_config().with_extra(["ok", "bad\0"])
    with pytest.raises(TypeError):
        default_config().with_extra("abc")


def test_config_is_frozen_and_hashable() -> None:
    config = parse_enarx_toml(DESIGN_EXAMPLE)
    assert hash(config) == hash(parse_enarx_toml(DESIGN_EXAMPLE))
    assert {config: 1}[parse_enarx_toml(DESIGN_EXAMPLE)] == 1
    with pytest.raises(AttributeError):
        config.args = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.env["X"] = "y"  # type: ignore[index]
    # Mutable inputs are copied into immutable ones.
    env = {"A": "1"}
    built = WorkloadConfig(args=["x"], env=env, files=[FileSpec("stdin", "stdin")])  # type: ignore[arg-type]
    env["A"] = "2"
    assert built.args == ("x",) and built.env == {"A": "1"} and built.files == (FileSpec("stdin", "stdin"),)
    hash(built)


def test_config_error_is_a_motte_error() -> None:
    err = _error('[[files]]\nkind = "pipe"\n')
    assert isinstance(err, MotteError)
    assert err.exit_code == 125
    assert (err.source, err.line, err.path) == ("Enarx.toml", 2, "files[0].kind")


# --- JSON ----------------------------------------------------------------------------------------


def test_to_json_is_plain_and_resolved() -> None:
    data = parse_enarx_toml(DESIGN_EXAMPLE).to_json()
    assert data == {
        "args": ["--verbose"],
        "env": {"GREETING": "hello"},
        "files": [
            {"kind": "stdin", "name": "stdin"},
            {"kind": "stdout", "name": "stdout"},
            {"kind": "stderr", "name": "stderr"},
            {"kind": "listen", "name": "ingest", "prot": "tls", "addr": "::", "port": 8443},
        ],
    }
    assert json.loads(json.dumps(data)) == data


def test_from_json_applies_the_toml_rules() -> None:
    assert WorkloadConfig.from_json({}) == WorkloadConfig(files=())
    config = WorkloadConfig.from_json({"files": [{"kind": "connect", "prot": "tcp", "host": "h"}]})
    assert config.files == (FileSpec("connect", "h", prot="tcp", host="h", port=80),)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "workload config: must be a table, got an array"),
        (
            {"files": [{"kind": "listen", "prot": "udp", "name": "x"}]},
            'files[0].prot: must be "tls" or "tcp"',
        ),
        ({"files": [{"kind": "stdin", "port": 1}]}, 'files[0].port: is not valid for kind "stdin"'),
        ({"files": [{"kind": "connect", "prot": "tls", "host": "h", "port": True}]}, "got boolean true"),
        ({"files": [{"kind": "connect", "prot": "tls", "host": "h", "port": 1.0}]}, "got float 1.0"),
        ({"files": [{"kind": "connect", "prot": "tls", "host": None}]}, "files[0].host: must be"),
        ({"files": [{"kind": "stdin", "name": "\ud800"}]}, "lone surrogate"),
        ({"files": [{"kind": "stdin", "name": "a\nb"}]}, r'control characters, got "a\nb"'),
        ({"files": [{"kind": "stdin", 1: "x"}]}, "files[0]: keys must be strings"),
        ({"env": {"A": None}}, "env.A: must be a string, got null"),
        ({"env": {"": "x"}}, 'env."": a variable name must be non-empty'),
        ({"args": ["a\0"]}, "args[0]: must not contain a NUL"),
        ({"args": ["\udcff"]}, "args[0]: must be valid Unicode"),
        ({"env": {"\ud800": "x"}}, r'env: key "\ud800" must be valid Unicode'),
        ({"steward": None}, "steward: must be an https:// URL, got null"),
        ({"steward": "https://[::1"}, "steward: is not a valid URL"),
        ({"steward": "https://h:port/"}, "steward: is not a valid URL"),
        ({"steward": "https:///nohost"}, "steward: must be an https:// URL"),
        ({"steward_ca": "x.pem"}, "steward_ca: is only valid with steward"),
        ({"steward": "https://s.example", "steward_ca": None}, "steward_ca: must be a path to a CA bundle, got null"),
        ({7: 1}, "keys must be strings, got integer 7"),
    ],
)
def test_from_json_rejects(data: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        WorkloadConfig.from_json(data)
    assert message in str(info.value)
    assert info.value.line is None
    assert str(info.value).startswith("workload config: ")


def test_from_json_source_names_the_sender() -> None:
    with pytest.raises(ConfigError, match=r"^config from host: args: must be an array"):
        WorkloadConfig.from_json({"args": "x"}, source="config from host")


# --- every bad input, with its line and key ------------------------------------------------------

LISTEN = '[[files]]\nkind = "listen"\n'  # lines 1-2; an entry's further keys start on line 3


@pytest.mark.parametrize(
    ("text", "message", "has_hint"),
    [
        pytest.param(
            '[[files]]\nkind = "stdin"\n[[files]]\nkind = "pipe"\n',
            'Enarx.toml:4: files[1].kind: unknown kind "pipe"',
            True,
            id="unknown-kind",
        ),
        pytest.param(
            DESIGN_EXAMPLE.replace('"tls"', '"udp"'),
            'Enarx.toml:12: files[3].prot: must be "tls" or "tcp", got "udp"',
            False,
            id="bad-prot",
        ),
        pytest.param(
            LISTEN + 'prot = "tls"\nname = "a:b"\n',
            'Enarx.toml:4: files[0].name: must not contain ":", got "a:b"',
            True,
            id="colon-in-name",
        ),
        pytest.param(
            '[[files]]\nkind = "null"\nname = "a\\u0007b"\n',
            r'Enarx.toml:3: files[0].name: must not contain control characters, got "a\u0007b"',
            False,
            id="control-in-name",
        ),
        pytest.param(
            '[[files]]\nkind = "null"\nname = ""\n',
            "Enarx.toml:3: files[0].name: must not be empty",
            False,
            id="empty-name",
        ),
        pytest.param(
            LISTEN + 'prot = "tls"\nport = 8080\n',
            'Enarx.toml:1: files[0].name: is required for kind "listen"',
            True,
            id="listen-without-name",
        ),
        pytest.param(
            LISTEN + 'name = "x"\n',
            'Enarx.toml:1: files[0].prot: is required for kind "listen"',
            True,
            id="listen-without-prot",
        ),
        pytest.param(
            '\n[[files]]\nkind = "connect"\nprot = "tls"\nport = 443\n',
            'Enarx.toml:2: files[0].host: is required for kind "connect"',
            True,
            id="connect-without-host",
        ),
        pytest.param(
            '[[files]]\nkind = "connect"\nprot = "tcp"\nhost = "fe80::1"\n',
            'Enarx.toml:4: files[0].name: must be set, since host "fe80::1" contains ":"',
            True,
            id="connect-default-name-with-colon",
        ),
        pytest.param(
            '[[files]]\nkind = "connect"\nprot = "tcp"\nhost = "a b"\n',
            'Enarx.toml:4: files[0].host: must be a host name or address, got "a b"',
            False,
            id="host-with-space",
        ),
        pytest.param(
            '# comment\nargs = "--verbose"\n',
            'Enarx.toml:2: args: must be an array of strings, got string "--verbose"',
            True,
            id="args-as-string",
        ),
        pytest.param(
            'args = [\n  "a",\n  2,\n]\n',
            "Enarx.toml:3: args[1]: must be a string, got integer 2",
            False,
            id="args-element-int",
        ),
        pytest.param(
            '[env]\nA = "x"\nB = 1\n',
            "Enarx.toml:3: env.B: must be a string, got integer 1",
            False,
            id="env-value-int",
        ),
        pytest.param(
            'env = "x"\n',
            'Enarx.toml:1: env: must be a table of strings, got string "x"',
            False,
            id="env-as-string",
        ),
        pytest.param(
            LISTEN + 'prot = "tls"\nname = "x"\nport = "8080"\n',
            'Enarx.toml:5: files[0].port: must be an integer from 1 to 65535, got string "8080"',
            True,
            id="port-as-string",
        ),
        pytest.param(
            LISTEN + 'prot = "tls"\nname = "x"\nport = 0\n',
            "Enarx.toml:5: files[0].port: must be an integer from 1 to 65535, got 0",
            False,
            id="port-zero",
        ),
        pytest.param(
            LISTEN + 'prot = "tls"\nname = "x"\nport = 70000\n',
            "Enarx.toml:5: files[0].port: must be an integer from 1 to 65535, got 70000",
            False,
            id="port-too-big",
        ),
        pytest.param(
            LISTEN + 'prot = "tls"\nname = "x"\nport = true\n',
            "Enarx.toml:5: files[0].port: must be an integer from 1 to 65535, got boolean true",
            False,
            id="port-as-bool",
        ),
        pytest.param(
            LISTEN + 'prot = "tls"\nname = "x"\nprto = "tcp"\n',
            "Enarx.toml:5: files[0].prto: unknown key",
            True,
            id="unknown-key-in-file",
        ),
        pytest.param(
            '[[files]]\nkind = "stdin"\nport = 80\n',
            'Enarx.toml:3: files[0].port: is not valid for kind "stdin"',
            True,
            id="port-on-stdin",
        ),
        pytest.param(
            LISTEN + 'prot = "tls"\nname = "x"\nhost = "h"\n',
            'Enarx.toml:5: files[0].host: is not valid for kind "listen"',
            True,
            id="host-on-listen",
        ),
        pytest.param(
            '[[files]]\nkind = "connect"\nprot = "tls"\nhost = "h"\naddr = "::"\n',
            'Enarx.toml:5: files[0].addr: is not valid for kind "connect"',
            True,
            id="addr-on-connect",
        ),
        pytest.param(
            LISTEN + 'prot = "tls"\nname = "x"\nca = "ca.pem"\n',
            'Enarx.toml:5: files[0].ca: is not valid for kind "listen"',
            True,
            id="ca-on-listen",
        ),
        pytest.param(
            '[[files]]\nkind = "connect"\nprot = "tcp"\nhost = "h"\nca = "ca.pem"\n',
            'Enarx.toml:5: files[0].ca: is only valid with prot = "tls"',
            True,
            id="ca-on-tcp",
        ),
        pytest.param(
            "args = []\nfiels = []\n",
            "Enarx.toml:2: fiels: unknown key",
            True,
            id="unknown-top-level-key",
        ),
        pytest.param(
            'steward = "http://steward.example.com"\n',
            'Enarx.toml:1: steward: must be an https:// URL, got "http://steward.example.com"',
            True,
            id="steward-not-https",
        ),
        pytest.param(
            "steward = 5\n",
            "Enarx.toml:1: steward: must be an https:// URL, got integer 5",
            False,
            id="steward-not-string",
        ),
        pytest.param(
            '[[files]]\nname = "x"\n',
            "Enarx.toml:1: files[0].kind: is required",
            True,
            id="kind-missing",
        ),
        pytest.param(
            "[[files]]\nkind = 1\n",
            "Enarx.toml:2: files[0].kind: must be a string, got integer 1",
            False,
            id="kind-not-string",
        ),
        pytest.param(
            '[files]\nkind = "stdin"\n',
            "Enarx.toml:1: files: must be an array of tables, got a table",
            True,
            id="files-as-table",
        ),
        pytest.param(
            'files = ["stdin"]\n',
            'Enarx.toml:1: files[0]: must be a table, got string "stdin"',
            True,
            id="files-element-string",
        ),
        pytest.param(
            'args = ["a"]\n[env]\nA = "1"\nB =\n',
            "Enarx.toml:4: invalid TOML: Invalid value (at line 4, column 4)",
            False,
            id="toml-syntax-error",
        ),
        pytest.param(
            'args = ["a"]\nargs = ["b"]\n',
            "Enarx.toml:2: invalid TOML: ",
            False,
            id="toml-duplicate-key",
        ),
        pytest.param(
            'args = ["a"',
            "Enarx.toml:1: invalid TOML: ",
            False,
            id="toml-unterminated",
        ),
    ],
)
def test_bad_input(text: str, message: str, has_hint: bool) -> None:
    err = _error(text)
    assert str(err).startswith(message), str(err)
    assert (err.hint is not None) == has_hint, err.hint


def test_hints_are_useful() -> None:
    assert 'did you mean "prot"' in (_error(LISTEN + 'prto = "tls"\n').hint or "")
    assert "null, stdin, stdout, stderr, listen, connect" in (_error('[[files]]\nkind = "x"\n').hint or "")
    assert "a listen entry takes kind, name, prot, addr, port" in (_error(LISTEN + "colour = 1\n").hint or "")
    assert "without quotes" in (_error(LISTEN + 'prot = "tls"\nname = "x"\nport = "80"\n').hint or "")
    assert 'did you mean "files"' in (_error("fiels = []\n").hint or "")


def test_source_names_the_file() -> None:
    with pytest.raises(ConfigError, match=r"^apps/web/Enarx\.toml:1: fiels: unknown key"):
        parse_enarx_toml("fiels = 1", source="apps/web/Enarx.toml")


def test_hostile_strings_are_escaped_in_messages() -> None:
    err = _error('[[files]]\nkind = "\\u001b[31mred"\n')
    assert "\x1b" not in str(err)
    assert "\\u001b[31mred" in str(err)


# --- finding the line: the scanner ---------------------------------------------------------------


def test_line_in_inline_tables() -> None:
    text = 'files = [\n  { kind = "stdin" },\n  { kind = "listen", name = "x", prot = "udp" },\n]\n'
    assert str(_error(text)).startswith('Enarx.toml:3: files[1].prot: must be "tls" or "tcp", got "udp"')


def test_line_of_missing_key_in_inline_table_is_the_entry() -> None:
    text = 'files = [\n  { kind = "stdin" },\n\n  { kind = "listen", prot = "tls" },\n]\n'
    assert str(_error(text)).startswith('Enarx.toml:4: files[1].name: is required for kind "listen"')


def test_line_with_dotted_and_quoted_keys() -> None:
    assert str(_error('args = []\nenv.A = "x"\nenv."B C" = 2\n')).startswith(
        'Enarx.toml:3: env."B C": must be a string, got integer 2'
    )
    assert str(_error('[env]\n"K\\u0041" = 1\n')).startswith("Enarx.toml:2: env.KA: must be a string")
    assert str(_error("[env]\n'lit.key' = 1\n")).startswith('Enarx.toml:2: env."lit.key": must be a string')


def test_line_ignores_headers_and_keys_inside_strings_and_comments() -> None:
    text = (
        'args = ["""\n'
        "[[files]]\n"
        'kind = "x"\n'
        "\"\"\", '''\n"
        "[[files]]\n"
        "'''] # [[files]]\n"
        "# [[files]]\n"
        '[[files]] # kind = "y"\n'
        'kind = "stdin"\n'
        "[[files]]\n"
        'kind = "listen" # "quoted"\n'
        'name = "n"  \n'
        'prot = "ud\\"p"\n'
    )
    err = _error(text)
    assert str(err).startswith('Enarx.toml:13: files[1].prot: must be "tls" or "tcp", got "ud\\"p"'), str(err)


def test_line_with_crlf_and_trailing_quotes_in_multiline_strings() -> None:
    text = 'args = ["""a""""", \'\'\'b\'\'\'\'\']\r\n\r\n[[files]]\r\nkind = "stdin"\r\nport = 1\r\n'
    assert parse_enarx_toml(text.replace("port = 1\r\n", "")).args == ('a""', "b''")
    assert str(_error(text)).startswith('Enarx.toml:5: files[0].port: is not valid for kind "stdin"')


def test_line_with_other_value_types_before_the_error() -> None:
    text = (
        "[env]\n"
        "[[files]]\n"
        'kind = "connect"\n'
        'prot = "tls"\n'
        'host = "h"\n'
        "[[files]]\n"
        'kind = "listen"\nname = "x"\nprot = "tcp"\n'
        "when = 1979-05-27 07:32:00Z\n"
    )
    err = _error(text)
    assert str(err).startswith("Enarx.toml:10: files[1].when: unknown key"), str(err)


def test_line_in_subtable_of_a_file_entry() -> None:
    text = '[[files]]\nkind = "stdin"\n[[files]]\nkind = "stdout"\n[files.extra]\nx = 1\n'
    assert str(_error(text)).startswith("Enarx.toml:5: files[1].extra: unknown key")


# --- properties ----------------------------------------------------------------------------------

_no_control = st.characters(exclude_categories=("Cc", "Cs"))
_names = st.text(st.characters(exclude_categories=("Cc", "Cs"), exclude_characters=":"), min_size=1)
_hosts = st.text(st.characters(exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp")), min_size=1).filter(
    lambda s: not any(c.isspace() for c in s)
)
_no_nul = st.characters(exclude_categories=["Cs"], exclude_characters="\0")
_env_key_chars = st.characters(exclude_categories=["Cs"], exclude_characters="=\0")
_ports = st.integers(1, 65535)
_prots: st.SearchStrategy[Protocol] = st.sampled_from(get_args(Protocol))
_kinds: st.SearchStrategy[FileKind] = st.sampled_from(get_args(FileKind))


@st.composite
def _files(draw: st.DrawFn) -> FileSpec:
    kind = draw(_kinds)
    if kind == "listen":
        return FileSpec(kind, draw(_names), prot=draw(_prots), addr=draw(_hosts), port=draw(_ports))
    if kind == "connect":
        prot = draw(_prots)
        host = draw(_hosts)
        name = draw(_names) if ":" in host or draw(st.booleans()) else host
        ca = draw(st.none() | st.text(_no_control, min_size=1)) if prot == "tls" else None
        return FileSpec(kind, name, prot=prot, host=host, port=draw(_ports), ca=ca)
    return FileSpec(kind, draw(_names) if draw(st.booleans()) else kind)


_STEWARD = r"https://[a-z0-9]{1,10}(\.[a-z]{2,5})?(:[1-9][0-9]{0,3})?(/[a-z]*)?"
_configs = st.builds(
    WorkloadConfig,
    steward=st.none() | st.from_regex(_STEWARD, fullmatch=True),
    args=st.lists(st.text(_no_nul)).map(tuple),
    env=st.dictionaries(
        st.text(_env_key_chars, min_size=1),
        st.text(_no_nul),
    ).map(FrozenEnv),
    files=st.lists(_files(), max_size=6, unique_by=lambda spec: spec.name).map(tuple),
)


def _toml_string(value: str) -> str:
    out = []
    for c in value:
        if c in '"\\' or unicodedata.category(c) == "Cc":
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _toml_value(value: str | int) -> str:
    return str(value) if isinstance(value, int) else _toml_string(value)


def _render(config: WorkloadConfig) -> tuple[list[str], list[int]]:
    """The config as Enarx.toml lines, and the line number of each [[files]] header."""
    lines = []
    if config.steward is not None:
        lines.append(f"steward = {_toml_string(config.steward)}")
    lines.append("args = [" + ", ".join(_toml_string(a) for a in config.args) + "]")
    lines.append("[env]")
    lines.extend(f"{_toml_string(k)} = {_toml_string(v)}" for k, v in config.env.items())
    headers = []
    for spec in config.files:
        lines.append("[[files]]")
        headers.append(len(lines))
        for key, value in spec.to_json().items():
            lines.append(f"{key} = {_toml_value(value)}")
    return lines, headers


@settings(max_examples=200, deadline=None)
@given(_configs)
def test_json_round_trip(config: WorkloadConfig) -> None:
    data = config.to_json()
    assert WorkloadConfig.from_json(json.loads(json.dumps(data))) == config


@settings(max_examples=200, deadline=None)
@given(_configs)
def test_toml_round_trip(config: WorkloadConfig) -> None:
    lines, _ = _render(config)
    assert parse_enarx_toml("\n".join(lines)) == config


@settings(max_examples=200, deadline=None)
@given(_configs.filter(lambda c: len(c.files) > 0), st.data())
def test_reported_line_of_a_bad_key_is_where_it_is_written(
    config: WorkloadConfig, data: st.DataObject
) -> None:
    lines, headers = _render(config)
    index = data.draw(st.integers(0, len(config.files) - 1))
    at = headers[index] + 1  # right after the kind, before the entry's other keys
    lines.insert(at, "bogus = 1")
    err = _error("\n".join(lines))
    assert str(err).startswith(f"Enarx.toml:{at + 1}: files[{index}].bogus: unknown key"), str(err)


_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text()
    | st.sampled_from(["\ud800", "tls", "tcp", "listen", "connect", "stdin", "a:b", "", "https://x", "\0"])
)
_json_values = st.recursive(
    _json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4)
)
_file_keys = st.sampled_from(["kind", "name", "prot", "addr", "host", "port", "ca", "other"])
_file_entries = st.dictionaries(
    _file_keys,
    st.sampled_from(["null", "stdin", "stdout", "stderr", "listen", "connect", "tls", "tcp", "h", "n"])
    | st.integers(-1, 70000)
    | _json_values,
    max_size=7,
)
_near_configs = st.dictionaries(
    st.sampled_from(["steward", "args", "env", "files", "other"]),
    st.lists(_file_entries, max_size=4) | _json_values,
    max_size=5,
)


@settings(max_examples=500, deadline=None)
@given(_json_values | _near_configs)
def test_from_json_raises_only_config_error(data: Any) -> None:
    try:
        config = WorkloadConfig.from_json(data)
    except ConfigError as e:
        assert str(e).startswith("workload config: ")
        assert "\n" not in str(e)
        return
    # Whatever it accepts is a valid config: it survives a round trip and its names are clean.
    assert WorkloadConfig.from_json(config.to_json()) == config
    assert all(":" not in f.name for f in config.files)


@settings(max_examples=200, deadline=None)
@given(_configs, st.data())
def test_from_json_rejects_mutated_configs_with_config_error_only(
    config: WorkloadConfig, data: st.DataObject
) -> None:
    doc = config.to_json()
    # Replace one value somewhere in the document with an arbitrary one.
    target: Any = doc
    while True:
        keys = list(target) if isinstance(target, dict) else list(range(len(target)))
        if not keys:
            break
        key = data.draw(st.sampled_from(keys))
        if isinstance(target[key], dict | list) and data.draw(st.booleans()):
            target = target[key]
            continue
        target[key] = data.draw(_json_values)
        break
    with contextlib.suppress(ConfigError):
        WorkloadConfig.from_json(doc)


def test_nan_and_huge_numbers_are_rejected_cleanly() -> None:
    for port in (math.nan, math.inf, 2**80, -1):
        with pytest.raises(ConfigError, match=r"files\[0\]\.port"):
            WorkloadConfig.from_json(
                {"files": [{"kind": "listen", "name": "x", "prot": "tls", "port": port}]}
            )
