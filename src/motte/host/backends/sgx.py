"""Intel SGX: the host checks only. An SGX keep would need a library OS to host Python, which
motte does not ship, so this host can never run one; the checks say what else it lacks."""

from __future__ import annotations

import os
from collections.abc import Sequence

from motte.host.backends.base import BackendChecks, Check, unsupported
from motte.host.backends.facts import cpu_flags


class SgxChecks(BackendChecks):
    name = "sgx"

    def data(self, *, probe: bool = False) -> list[Check]:
        flags = cpu_flags()
        enclave = os.path.exists("/dev/sgx_enclave")
        provision = os.path.exists("/dev/sgx_provision")
        return [
            Check("cpu flag sgx", "sgx" in flags, "present" if "sgx" in flags else "absent from /proc/cpuinfo"),
            Check("cpu flag sgx_lc", "sgx_lc" in flags,
                  "present (flexible launch control)" if "sgx_lc" in flags else "absent: no flexible launch control"),
            Check("/dev/sgx_enclave", enclave,
                  "present" if enclave else "missing (no in-kernel SGX driver or no SGX)"),
            Check("/dev/sgx_provision", provision, "present" if provision else "missing", False),
            Check("library OS", False, "design only: an SGX keep needs a library OS (e.g. Gramine) to host "
                  "Python; motte does not ship one"),
        ]  # fmt: skip

    def summary(self, checks: Sequence[Check]) -> str:
        return unsupported(checks)
