"""Evidence inside the keep: the sev-guest ioctl encodings, the configfs-tsm flow against a fake
kernel in a temporary directory, the DER evidence layout, and the KVM (no evidence) source."""

from __future__ import annotations

import ctypes
import hashlib
import struct
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from tests.steward.fakes import (
    ASK_GUID,
    DEBUG_POLICY,
    MEASUREMENT,
    VCEK_GUID,
    FakeSevGuest,
    FakeSnp,
    FakeTsmKernel,
    cert_table,
    tdx_quote,
)
from tests.tenant.attest_forge import NOW, fake_amd

from motte.keep.evidence import Evidence, NoEvidence, source_for
from motte.keep.evidence import snp as snpev
from motte.keep.evidence.encoding import encode_dcap_evidence, encode_snp_evidence
from motte.keep.evidence.tdx import TdxEvidenceSource
from motte.keep.evidence.tsm import tsm_report
from motte.shared.errors import MotteError
from motte.shared.steward_protocol import StewardProtocolError, decode_dcap_evidence, decode_snp_evidence
from motte.tenant.attest import verify_snp

RD = bytes(range(64))


@pytest.fixture(scope="module")
def platform() -> FakeSnp:
    return FakeSnp.make()


# --- linux/sev-guest.h encodings -----------------------------------------------------------------
class CReportReq(ctypes.Structure):
    _fields_ = [("user_data", ctypes.c_uint8 * 64), ("vmpl", ctypes.c_uint32), ("rsvd", ctypes.c_uint8 * 28)]


class CExtReportReq(ctypes.Structure):
    _fields_ = [("data", CReportReq), ("certs_address", ctypes.c_uint64), ("certs_len", ctypes.c_uint32)]


class CErrors(ctypes.Structure):
    _fields_ = [("fw_error", ctypes.c_uint32), ("vmm_error", ctypes.c_uint32)]


class CExit(ctypes.Union):
    _anonymous_ = ("e",)
    _fields_ = [("exitinfo2", ctypes.c_uint64), ("e", CErrors)]


class CGuestRequest(ctypes.Structure):
    _anonymous_ = ("x",)
    _fields_ = [
        ("msg_version", ctypes.c_uint8),
        ("req_data", ctypes.c_uint64),
        ("resp_data", ctypes.c_uint64),
        ("x", CExit),
    ]


def test_ioctl_request_numbers_are_iowr_s_0_1_2_of_the_32_byte_struct() -> None:
    assert snpev.SNP_GET_REPORT == 0xC0205300
    assert snpev.SNP_GET_DERIVED_KEY == 0xC0205301
    assert snpev.SNP_GET_EXT_REPORT == 0xC0205302


def test_struct_sizes_and_offsets_match_the_c_layout() -> None:
    # ctypes lays structs out as the C compiler does, so it checks the hand-written formats.
    assert snpev.REPORT_REQ.size == ctypes.sizeof(CReportReq) == 96
    assert snpev.EXT_REPORT_REQ.size == ctypes.sizeof(CExtReportReq) == 112
    assert snpev.GUEST_REQUEST_IOCTL.size == ctypes.sizeof(CGuestRequest) == 32
    ext = CExtReportReq.from_buffer_copy(snpev.pack_ext_report_req(RD, 2, 0x1122334455667788, 0x4000))
    assert bytes(ext.data.user_data) == RD and ext.data.vmpl == 2 and bytes(ext.data.rsvd) == bytes(28)
    assert (ext.certs_address, ext.certs_len) == (0x1122334455667788, 0x4000)
    assert CExtReportReq.certs_address.offset == 96 and CExtReportReq.certs_len.offset == 104
    io = CGuestRequest.from_buffer_copy(snpev.pack_guest_request(0xAAAA0000, 0xBBBB0000))
    assert (io.msg_version, io.req_data, io.resp_data, io.exitinfo2) == (1, 0xAAAA0000, 0xBBBB0000, 0)
    io.fw_error, io.vmm_error = 0x16, 1
    back = snpev.unpack_guest_request(bytes(io))
    assert (back.fw_error, back.vmm_error, back.exitinfo2) == (0x16, 1, io.exitinfo2) and io.exitinfo2 == (
        1 << 32
    ) | 0x16
    assert CReportReq.from_buffer_copy(snpev.pack_report_req(RD, 1)).vmpl == 1


def test_struct_packing_refuses_bad_values() -> None:
    with pytest.raises(MotteError, match="64 bytes"):
        snpev.pack_report_req(b"short")
    with pytest.raises(MotteError, match="VMPL"):
        snpev.pack_report_req(RD, 4)
    with pytest.raises(ValueError, match="page"):
        snpev.pack_ext_report_req(RD, 0, 0, 100)


def test_report_response_parsing() -> None:
    report = bytes(range(256)) * 4 + bytes(160)
    assert snpev.parse_report_response(snpev.MSG_REPORT_RSP.pack(0, 1184) + report + bytes(100)) == report
    with pytest.raises(MotteError, match=r"status 0x16"):
        snpev.parse_report_response(snpev.MSG_REPORT_RSP.pack(0x16, 0) + bytes(1184))
    with pytest.raises(MotteError, match="report_size 1000"):
        snpev.parse_report_response(snpev.MSG_REPORT_RSP.pack(0, 1000) + bytes(1184))


def test_certificate_table_parsing() -> None:
    table = cert_table({VCEK_GUID: b"vcek-der", ASK_GUID: b"ask"})
    assert snpev.parse_cert_table(table + bytes(4096)) == {"VCEK": b"vcek-der", "ASK": b"ask"}
    assert snpev.parse_cert_table(cert_table({VCEK_GUID: b"le"}, little_endian=True)) == {"VCEK": b"le"}
    assert snpev.parse_cert_table(bytes(4096)) == {}
    with pytest.raises(MotteError, match="out of bounds"):
        snpev.parse_cert_table(table[:24] + bytes(24))  # the entry points past the end
    with pytest.raises(MotteError, match="terminating"):
        snpev.parse_cert_table(VCEK_GUID.bytes + struct.pack("<II", 24, 4) + b"data")


# --- /dev/sev-guest through a fake driver ----------------------------------------------------------
def device(tmp_path: Path, driver: FakeSevGuest) -> snpev.SevGuestDevice:
    node = tmp_path / "sev-guest"
    node.write_bytes(b"")
    return snpev.SevGuestDevice(node, ioctl=driver)


def test_extended_report_grows_the_certificate_buffer_when_told(tmp_path: Path, platform: FakeSnp) -> None:
    big = cert_table({VCEK_GUID: platform.vcek, ASK_GUID: bytes(20000)})  # > 16 KiB: needs a retry
    driver = FakeSevGuest(platform, certs=big)
    report, certs = device(tmp_path, driver).extended_report(RD, vmpl=1)
    assert driver.calls == [snpev.SNP_GET_EXT_REPORT] * 2 and driver.vmpls == [1]
    assert report[0x50:0x90] == RD
    assert snpev.parse_cert_table(certs)["VCEK"] == platform.vcek
    assert len(certs) % snpev.PAGE_SIZE == 0


def test_sev_guest_errors_are_one_line(tmp_path: Path, platform: FakeSnp) -> None:
    with pytest.raises(MotteError, match=r"firmware error 0x16"):
        device(tmp_path, FakeSevGuest(platform, fw_error=0x16)).report(RD)
    busy = FakeSevGuest(platform, busy=2)
    assert device(tmp_path, busy).report(RD)[0x50:0x90] == RD and len(busy.calls) == 3
    with pytest.raises(MotteError, match="does not exist"):
        snpev.SevGuestDevice(tmp_path / "absent").report(RD)


def test_snp_source_over_the_device_gives_evidence_the_verifier_accepts(tmp_path: Path, platform: FakeSnp) -> None:
    driver = FakeSevGuest(platform, certs=cert_table({VCEK_GUID: platform.vcek}))
    source = snpev.SnpEvidenceSource(tsm_root=tmp_path / "no-configfs", device=device(tmp_path, driver))
    evidence = source.collect(RD)
    assert evidence.technology == "snp" and evidence.oid == "1.3.6.1.4.1.58270.1.3"
    decoded = decode_snp_evidence(evidence.value)
    assert decoded.vcek == platform.vcek and decoded.crls == []
    claims = verify_snp(decoded.report, now=NOW, certs=[decoded.vcek], trust=platform.trust())
    assert claims.report_data == RD and claims.measurements["measurement"] == MEASUREMENT


def test_snp_source_without_a_vcek_or_interface_says_what_is_missing(tmp_path: Path, platform: FakeSnp) -> None:
    driver = FakeSevGuest(platform, certs=b"")
    source = snpev.SnpEvidenceSource(tsm_root=tmp_path / "none", device=device(tmp_path, driver))
    with pytest.raises(MotteError, match="no VCEK or VLEK"):
        source.collect(RD)
    # a VCEK handed in (e.g. by the host over the channel) is used instead
    given = snpev.SnpEvidenceSource(tsm_root=tmp_path / "none", device=device(tmp_path, driver), vcek=platform.vcek)
    assert decode_snp_evidence(given.collect(RD).value).vcek == platform.vcek
    nothing = snpev.SnpEvidenceSource(tsm_root=tmp_path / "none", device=snpev.SevGuestDevice(tmp_path / "nodev"))
    with pytest.raises(MotteError, match="no SNP attestation interface"):
        nothing.collect(RD)


# --- configfs-tsm against a fake kernel ------------------------------------------------------------
def tsm_root(tmp_path: Path) -> Path:
    root = tmp_path / "config" / "tsm" / "report"
    root.mkdir(parents=True)
    return root


def test_snp_source_prefers_configfs_tsm(tmp_path: Path, platform: FakeSnp) -> None:
    root = tsm_root(tmp_path)
    kernel = FakeTsmKernel("sev_guest", platform.report, auxblob=cert_table({VCEK_GUID: platform.vcek}))
    source = snpev.SnpEvidenceSource(tsm_root=root, tsm_files=kernel, device=snpev.SevGuestDevice(tmp_path / "x"))
    decoded = decode_snp_evidence(source.collect(RD).value)
    assert decoded.report[0x50:0x90] == RD and decoded.vcek == platform.vcek
    assert [name for name, _ in kernel.writes] == ["inblob"]  # VMPL 0: privlevel left at its floor
    assert list(root.iterdir()) == []  # the request entry was removed


def test_configfs_flow_writes_privlevel_and_retries_a_raced_request(tmp_path: Path) -> None:
    root = tsm_root(tmp_path)
    kernel = FakeTsmKernel("sev_guest", lambda inblob: b"report:" + inblob, auxblob=b"aux", races=1)
    got = tsm_report(RD, provider="sev_guest", root=root, privlevel=2, want_aux=True, files=kernel)
    assert got.outblob == b"report:" + RD and got.auxblob == b"aux" and got.generation == 2
    assert len(kernel.made) == 2  # the first entry saw a foreign write: asked again
    assert kernel.writes[-2:] == [("privlevel", b"2"), ("inblob", RD)]
    assert list(root.iterdir()) == []


def test_configfs_flow_failures(tmp_path: Path) -> None:
    root = tsm_root(tmp_path)
    always_raced = FakeTsmKernel("sev_guest", lambda b: b"r", races=10)
    with pytest.raises(MotteError, match="kept changing"):
        tsm_report(RD, provider="sev_guest", root=root, files=always_raced)
    with pytest.raises(MotteError, match="provider is 'tdx_guest'"):
        tsm_report(RD, provider="sev_guest", root=root, files=FakeTsmKernel("tdx_guest", lambda b: b"q"))
    with pytest.raises(MotteError, match="not available"):
        tsm_report(RD, provider="sev_guest", root=tmp_path / "missing")
    with pytest.raises(MotteError, match="empty report"):
        tsm_report(RD, provider="sev_guest", root=root, files=FakeTsmKernel("sev_guest", lambda b: b""))
    assert list(root.iterdir()) == []


def test_tdx_source_returns_the_quote_with_collateral(tmp_path: Path) -> None:
    root = tsm_root(tmp_path)
    for version in (4, 5):
        source = TdxEvidenceSource(
            tsm_root=root,
            tsm_files=FakeTsmKernel("tdx_guest", lambda b, v=version: tdx_quote(b, version=v)),
            collateral='{"tcb_info": "..."}',
        )
        evidence = source.collect(RD)
        assert evidence.technology == "tdx" and evidence.oid == "1.3.6.1.4.1.58270.1.4"
        decoded = decode_dcap_evidence(evidence.value)
        assert decoded.quote == tdx_quote(RD, version=version) and decoded.collateral == '{"tcb_info": "..."}'


def test_tdx_source_refuses_a_quote_that_does_not_answer_the_request(tmp_path: Path) -> None:
    root = tsm_root(tmp_path)
    other = TdxEvidenceSource(tsm_root=root, tsm_files=FakeTsmKernel("tdx_guest", lambda b: tdx_quote(bytes(64))))
    with pytest.raises(MotteError, match="does not carry the report data"):
        other.collect(RD)
    sgx = TdxEvidenceSource(tsm_root=root, tsm_files=FakeTsmKernel("tdx_guest", lambda b: tdx_quote(b, tee=0)))
    with pytest.raises(MotteError, match="not a TDX quote"):
        sgx.collect(RD)


# --- the DER evidence layout -----------------------------------------------------------------------
def test_snp_evidence_der_is_exactly_the_documented_layout() -> None:
    vcek, crl, report = b"\x30\x03\x02\x01\x05", b"\x30\x00", bytes([0xAB]) * 1184
    expected = (
        b"\x30\x82\x04\xaf"  # SnpEvidence: 1199 bytes of content
        + b"\x30\x09"  # crts
        + vcek  # vcek Certificate (here a stand-in SEQUENCE)
        + b"\x30\x02"
        + crl  # crls: CrlList = SEQUENCE OF CertificateList, one element
        + b"\x04\x82\x04\xa0"
        + report  # report OCTET STRING (1184 bytes)
    )
    assert encode_snp_evidence(vcek, [crl], report) == expected
    assert encode_snp_evidence(vcek, [], report)[:13] == b"\x30\x82\x04\xad\x30\x07" + vcek + b"\x30\x00"
    assert decode_snp_evidence(expected) == (vcek, [crl], report)


def test_snp_evidence_carries_real_certificates_and_crls(platform: FakeSnp) -> None:
    crl = fake_amd("Milan").crl([7])
    pem_vcek = x509.load_der_x509_certificate(platform.vcek).public_bytes(Encoding.PEM)
    value = encode_snp_evidence(pem_vcek, [crl], platform.report(RD))  # PEM is converted to DER
    decoded = decode_snp_evidence(value)
    assert decoded.vcek == platform.vcek and decoded.crls == [crl]
    assert x509.load_der_x509_crl(decoded.crls[0]).get_revoked_certificate_by_serial_number(7) is not None


def test_evidence_encoders_and_decoders_refuse_bad_input(platform: FakeSnp) -> None:
    with pytest.raises(MotteError, match="1184 bytes"):
        encode_snp_evidence(platform.vcek, [], b"short")
    with pytest.raises(MotteError, match="VCEK certificate is not DER"):
        encode_snp_evidence(b"\x30\x05\x00", [], bytes(1184))
    good = encode_snp_evidence(platform.vcek, [], bytes(1184))
    for bad in (good + b"\0", good[:-1], b"\x31" + good[1:], bytes(10)):
        with pytest.raises(StewardProtocolError):
            decode_snp_evidence(bad)
    assert decode_dcap_evidence(encode_dcap_evidence(b"quote")) == (b"quote", None)
    with pytest.raises(StewardProtocolError):
        decode_dcap_evidence(encode_dcap_evidence(b"quote") + b"\x04\x00")


# --- no evidence ----------------------------------------------------------------------------------
def test_nil_and_kvm_keeps_send_the_kvm_oid_with_an_empty_value() -> None:
    for backend in ("nil", "kvm"):
        source = source_for(backend)
        assert source.technology == "kvm"
        assert source.collect(hashlib.sha256(b"k").digest() + bytes(32)) == Evidence("kvm", b"")
    assert NoEvidence().collect(RD).oid == "1.3.6.1.4.1.58270.1.1"
    with pytest.raises(MotteError, match="64 bytes"):
        NoEvidence().collect(b"\0" * 32)
    with pytest.raises(MotteError, match="no evidence source"):
        source_for("sgx")


def test_debug_reports_are_produced_as_asked(platform: FakeSnp) -> None:
    # The keep does not judge its own evidence: a debug report is sent and the Steward refuses it.
    report = platform.report(RD, policy=DEBUG_POLICY)
    assert verify_snp(report, now=NOW, certs=[platform.vcek], trust=platform.trust()).debug is True


def test_a_vm_keep_knows_what_it_is_from_the_guest_kernel(tmp_path: Path) -> None:
    from motte.keep.platform import vm_technology

    sys_root, cpuinfo = tmp_path / "sys", tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu vme hypervisor\n")
    assert vm_technology(sys_root, cpuinfo) == "kvm"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu vme tdx_guest hypervisor\n")
    assert vm_technology(sys_root, cpuinfo) == "tdx"
    (sys_root / "bus/platform/devices/sev-guest").mkdir(parents=True)
    assert vm_technology(sys_root, cpuinfo) == "snp"
    assert vm_technology(tmp_path / "absent", tmp_path / "absent") == "kvm"
