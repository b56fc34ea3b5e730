"""The one DER reader and writer: exact encodings, and every kind of malformed input refused with DerError."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from motte.shared.der import (
    TAG_IA5STRING,
    TAG_INTEGER,
    TAG_OCTET_STRING,
    TAG_SEQUENCE,
    TAG_UTF8STRING,
    DerError,
    DerReader,
    decode_oid,
    der_length,
    der_octet_string,
    der_sequence,
    der_tlv,
    der_utf8,
    read_integer,
    read_one,
    read_outer,
    read_string,
)


def test_lengths_are_written_in_their_shortest_form() -> None:
    assert der_length(0) == b"\x00"
    assert der_length(0x7F) == b"\x7f"
    assert der_length(0x80) == b"\x81\x80"
    assert der_length(0xFF) == b"\x81\xff"
    assert der_length(0x100) == b"\x82\x01\x00"
    assert der_length(0x1_0000) == b"\x83\x01\x00\x00"


def test_writer_encodings() -> None:
    assert der_tlv(0x02, b"\x05") == b"\x02\x01\x05"
    assert der_octet_string(b"ab") == b"\x04\x02ab"
    assert der_utf8("é") == b"\x0c\x02\xc3\xa9"
    assert der_sequence(der_octet_string(b""), der_utf8("")) == b"\x30\x04\x04\x00\x0c\x00"
    long = der_octet_string(bytes(300))
    assert long[:4] == b"\x04\x82\x01\x2c" and len(long) == 304


@given(st.lists(st.binary(max_size=400), max_size=5))
def test_what_the_writer_writes_the_reader_reads_back(items: list[bytes]) -> None:
    seq = read_outer(der_sequence(*(der_octet_string(i) for i in items)), TAG_SEQUENCE, "items", "test")
    read = []
    while not seq.at_end:
        read.append(seq.read(TAG_OCTET_STRING, "item").content)
    assert read == items


def test_reader_steps_through_consecutive_values() -> None:
    reader = DerReader(b"\x02\x01\x07\x30\x03\x04\x01\x09", "test")
    first = reader.read(TAG_INTEGER, "n")
    assert (first.tag, first.content, first.encoded) == (TAG_INTEGER, b"\x07", b"\x02\x01\x07")
    inner = reader.enter(TAG_SEQUENCE, "inner")
    assert reader.at_end
    reader.done()
    assert inner.read(TAG_OCTET_STRING).content == b"\x09"
    inner.done()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated DER at value"),
        (b"\x04", "truncated DER at value"),
        (b"\x04\x05abc", "value claims 5 bytes but only 3 remain"),  # truncated content
        (b"\x04\x82\x01", "bad length"),  # truncated length bytes
        (b"\x04\x85\x01\x00\x00\x00\x00", "bad length"),  # more length bytes than any value here needs
        (b"\x04\x84\xff\xff\xff\xff", "claims 4294967295 bytes but only 0 remain"),  # overlong length
        (b"\x04\x80abc\x00\x00", "indefinite length"),  # BER, not DER
        (b"\x04\x81\x03abc", "non-minimal length"),  # a short length in the long form
        (b"\x04\x82\x00\x80" + bytes(128), "non-minimal length"),  # a leading zero length byte
        (b"\x1f\x81\x00\x00", "high-tag-number form"),
    ],
)
def test_malformed_values_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(DerError, match=message) as caught:
        DerReader(data, "test").read()
    assert str(caught.value).startswith("test: ")


def test_trailing_bytes_and_wrong_tags_are_refused() -> None:
    with pytest.raises(DerError, match="1 unexpected trailing bytes"):
        read_one(b"\x04\x01a\x00", TAG_OCTET_STRING, "test")
    with pytest.raises(DerError, match="1 unexpected trailing bytes"):
        read_outer(b"\x30\x00\x00", TAG_SEQUENCE, "outer", "test")
    with pytest.raises(DerError, match="expected OCTET STRING for test, got tag 0x0c"):
        read_one(der_utf8("a"), TAG_OCTET_STRING, "test")
    inner = read_outer(b"\x30\x03\x04\x01a", TAG_SEQUENCE, "outer", "test")
    assert inner.read(TAG_OCTET_STRING).content == b"a"
    with pytest.raises(DerError, match="truncated DER at next"):
        inner.read(TAG_OCTET_STRING, "next")


def test_a_value_cannot_reach_past_its_container() -> None:
    # The SEQUENCE holds 3 bytes; the OCTET STRING inside claims 4, which exist only outside it.
    outer = DerReader(b"\x30\x03\x04\x04abcd", "test")
    inner = outer.enter(TAG_SEQUENCE, "outer")
    with pytest.raises(DerError, match="claims 4 bytes but only 1 remain"):
        inner.read(TAG_OCTET_STRING, "inner")


@given(st.binary(max_size=64))
def test_arbitrary_bytes_raise_nothing_but_der_error(data: bytes) -> None:
    reader = DerReader(data, "fuzz")
    try:
        while not reader.at_end:
            tlv = reader.read()
            assert len(tlv.encoded) >= 2 + len(tlv.content)
    except DerError:
        pass


@given(st.data())
def test_every_truncation_of_valid_der_is_refused(data: st.DataObject) -> None:
    encoded = der_sequence(der_octet_string(bytes(200)), der_utf8("collateral"))
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(DerError):
        read_one(encoded[:cut], TAG_SEQUENCE, "test")


def test_integers() -> None:
    assert read_integer(b"\x02\x01\x00", "n") == 0
    assert read_integer(b"\x02\x01\x7f", "n") == 127
    assert read_integer(b"\x02\x02\x00\x80", "n") == 128
    for bad, message in (
        (b"\x02\x00", "empty INTEGER"),
        (b"\x02\x01\x80", "negative INTEGER"),
        (b"\x02\x02\x00\x01", "non-minimal INTEGER"),
        (b"\x04\x01\x01", "expected INTEGER"),
        (b"\x02\x01\x01\x00", "trailing bytes"),
    ):
        with pytest.raises(DerError, match=message):
            read_integer(bad, "n")


def test_strings() -> None:
    assert read_string(der_utf8("snp"), TAG_UTF8STRING, "s") == "snp"
    assert read_string(der_tlv(TAG_IA5STRING, b"Milan-B0"), TAG_IA5STRING, "s") == "Milan-B0"
    with pytest.raises(DerError, match="not a valid IA5String"):
        read_string(der_tlv(TAG_IA5STRING, "é".encode()), TAG_IA5STRING, "s")
    with pytest.raises(DerError, match="not a valid UTF8String"):
        read_string(der_tlv(TAG_UTF8STRING, b"\xff"), TAG_UTF8STRING, "s")
    with pytest.raises(DerError, match="expected IA5String"):
        read_string(der_utf8("x"), TAG_IA5STRING, "s")


def test_oid_decoding() -> None:
    assert decode_oid(bytes.fromhex("2b0601040183c71e0103")) == "1.3.6.1.4.1.58270.1.3"
    assert decode_oid(bytes.fromhex("2a864886f70d01090e")) == "1.2.840.113549.1.9.14"
    for bad in (b"", b"\x2b\x86", b"\x2b\x80\x01"):
        with pytest.raises(DerError):
            decode_oid(bad)


def test_the_keeps_evidence_encoding_loads_no_cryptography() -> None:
    # A VM keep may not load cryptography before its snapshot point (keep/vm_channel.py).
    code = (
        "import sys, motte.shared.der, motte.keep.evidence.encoding, motte.shared.steward_http\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('cryptography', 'ssl', '_ssl')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
