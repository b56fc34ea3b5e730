"""Sealed compiled modules: what an SNP keep stores through its host, only such a keep can load.

The host keeps an SNP keep's compiled modules (see :mod:`motte.shared.module_cache`), but it must
never be able to make the keep run native code of its choosing. So the keep encrypts and
authenticates each artefact with a key only a keep with the same launch measurement and policy
on the same chip can derive (the firmware's ``MSG_KEY_REQ``), and loads nothing that does not
verify: a tampered, truncated, replayed-under-another-key or foreign artefact is recompiled.

A sealed artefact::

    +-------------+--------------+----------------------------------------+
    | MAGIC 8     | nonce 12     | AES-256-GCM ciphertext, then tag (16)   |
    +-------------+--------------+----------------------------------------+

The associated data is ``MAGIC`` and the 32-byte cache key, so an artefact sealed for one module
(or engine configuration) does not open as another's. The AES key is HKDF-SHA256 of the derived
key with :data:`KEY_INFO`, so the firmware key serves this one purpose.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from motte.keep.evidence.snp import FIELD_GUEST_POLICY, FIELD_MEASUREMENT, SevGuestDevice
from motte.shared.errors import MotteError
from motte.shared.module_store import ModuleStore

MAGIC = b"MOTTESM1"
NONCE_SIZE = 12
TAG_SIZE = 16
KEY_INFO = b"motte sealed compiled module v1"
#: The guest fields mixed into the firmware key: the launch measurement (the keep image and its
#: kernel command line) and the guest policy.
SEAL_FIELDS = FIELD_MEASUREMENT | FIELD_GUEST_POLICY


def _associated_data(cache_key: str) -> bytes:
    return MAGIC + bytes.fromhex(cache_key)


def seal(key: bytes, cache_key: str, artefact: bytes | bytearray) -> bytes:
    nonce = os.urandom(NONCE_SIZE)
    return MAGIC + nonce + AESGCM(key).encrypt(nonce, bytes(artefact), _associated_data(cache_key))


def unseal(key: bytes, cache_key: str, sealed: bytes) -> bytes | None:
    """The artefact, if ``sealed`` is one this key sealed for ``cache_key``; else None."""
    head = len(MAGIC) + NONCE_SIZE
    if len(sealed) < head + TAG_SIZE or not sealed.startswith(MAGIC):
        return None
    try:
        return AESGCM(key).decrypt(sealed[len(MAGIC) : head], sealed[head:], _associated_data(cache_key))
    except InvalidTag:
        return None


class SealedStore:
    """``inner`` (the host's store), with every artefact sealed on the way out and verified on
    the way back in."""

    def __init__(self, inner: ModuleStore, key: bytes):
        self.inner = inner
        self._key = key

    def get(self, key: str) -> bytes | None:
        sealed = self.inner.get(key)
        return None if sealed is None else unseal(self._key, key, sealed)

    def put(self, key: str, artefact: bytes | bytearray) -> None:
        self.inner.put(key, seal(self._key, key, artefact))

    def close(self) -> None:
        self.inner.close()


def snp_sealing_key(device: SevGuestDevice | None = None) -> bytes | None:
    """This keep's sealing key, from the SNP firmware; None when the guest cannot get one (then
    the keep compiles every time)."""
    try:
        derived = (device or SevGuestDevice()).derived_key(SEAL_FIELDS)
    except MotteError:
        return None
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=KEY_INFO).derive(derived)
