"""Built-in trust anchors, shipped as package data and pinned by SHA-256 here.

- ``amd_{milan,genoa,turin}.pem``: AMD SEV-SNP ASK, ARK and ASVK per product line (KDS cert_chain).
- ``intel_sgx_root_ca.der``: Intel SGX Root CA, the anchor of every DCAP quote (SGX and TDX).
- ``aws_nitro_root_g1.pem``: AWS Nitro Enclaves root G1.

Pinning the file digests means a modified installation fails loudly instead of trusting a new root.

Sources (each also under tests/vectors/, beside its PROVENANCE.txt): the AMD files are AMD KDS
chains as published in confidential-containers/trustee (Apache-2.0), byte-identical to those in
google/go-sev-guest and virtee/sev (tests/vectors/snp/amd-ca/*_ask_ark_asvk.pem); the Intel root
is the one in Phala-Network/dcap-qvl (MIT) and enarx/steward (tests/vectors/dcap/intel-root/); the
AWS root is the first cabundle entry of a real Nitro document (tests/vectors/nitro/eternis/).
"""

from __future__ import annotations

import hashlib
from importlib import resources

# SHA-256 of each file's bytes.
FILE_SHA256 = {
    "amd_milan.pem": "cc871f0d2294176386175d9b5b962e18556b15ec13f55f8698b5f7a07aebf0c7",
    "amd_genoa.pem": "7397ae50f4bac4699393121cf7ce9e72bac49f9f7b8c524be8df97e59ca151e3",
    "amd_turin.pem": "34251ef16c414387e2bf36a69b675329156361e6e8113241209e46ebbd6da93f",
    "intel_sgx_root_ca.der": "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3",
    "aws_nitro_root_g1.pem": "6d9c7387b51e74a49407afeec64da2dfe7d4e4665dca28551d62c2a0f885660d",
}


class RootIntegrityError(RuntimeError):
    """A built-in root file does not match its pinned digest: the installation is damaged."""


def read_root(name: str) -> bytes:
    data = resources.files(__name__).joinpath(name).read_bytes()
    if hashlib.sha256(data).hexdigest() != FILE_SHA256[name]:
        raise RootIntegrityError(f"built-in trust anchor {name} does not match its pinned SHA-256")
    return data
