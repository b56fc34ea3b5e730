"""Confidential keep launch command lines (SEV-SNP, TDX) and the host checks that gate them.

They cannot run on this machine kind (no SEV-SNP/TDX, QEMU 7.2), so the command lines are checked
as data, option by option, against what upstream QEMU documents for each technology.
"""

from __future__ import annotations

import json

import pytest

from motte.host.backends.base import Check
from motte.host.backends.confidential import (
    SNP_DEFAULT_POLICY,
    SNP_POLICY_DEBUG,
    ConfidentialLaunch,
    SnpOptions,
    TdxOptions,
    refuse_unless_ready,
    snp_checks,
    snp_command,
    tdx_checks,
    tdx_command,
    validate_snp_policy,
)
from motte.shared.errors import MotteError

LAUNCH = ConfidentialLaunch(
    ovmf="/fw/OVMF.amdsev.fd",
    kernel="/k/vmlinuz",
    initrd="/k/keep.cpio.lz4",
    cmdline="quiet panic=-1",
    memory_mib=1280,
    vcpus=2,
    socket_path="/run/k/keep.sock",
)


def option(command: list[str], flag: str) -> list[str]:
    return [command[i + 1] for i, arg in enumerate(command) if arg == flag]


def test_snp_command_line() -> None:
    command = snp_command(LAUNCH)
    assert command[0] == "qemu-system-x86_64" and "-nodefaults" in command
    assert option(command, "-accel") == ["kvm"]
    assert option(command, "-cpu") == ["EPYC-v4"]
    assert option(command, "-machine") == ["q35,confidential-guest-support=sev0,memory-backend=ram1,vmport=off"]
    objects = option(command, "-object")
    assert "memory-backend-memfd,id=ram1,size=1280M,share=true,prealloc=false" in objects
    assert "sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,policy=0x30000,kernel-hashes=on" in objects
    assert option(command, "-m") == ["1280M"] and option(command, "-smp") == ["2"]
    assert option(command, "-bios") == ["/fw/OVMF.amdsev.fd"]
    assert option(command, "-kernel") == ["/k/vmlinuz"]  # the bzImage: OVMF loads it via the EFI stub
    assert option(command, "-initrd") == ["/k/keep.cpio.lz4"] and option(command, "-append") == ["quiet panic=-1"]
    devices = option(command, "-device")
    assert "virtio-serial-pci,disable-legacy=on,iommu_platform=true" in devices
    assert "virtserialport,chardev=ch0,name=motte.0" in devices
    assert option(command, "-chardev") == ["socket,id=ch0,path=/run/k/keep.sock,server=on,wait=on"]
    assert "-no-reboot" in command


def test_snp_options_reach_the_command_line() -> None:
    command = snp_command(LAUNCH, SnpOptions(cbitpos=47, reduced_phys_bits=5, policy=0x20000, vcpu_type="EPYC-Milan"))
    assert "sev-snp-guest,id=sev0,cbitpos=47,reduced-phys-bits=5,policy=0x20000,kernel-hashes=on" in command
    assert option(command, "-cpu") == ["EPYC-Milan"]


def test_snp_policy_never_allows_debugging() -> None:
    assert SNP_DEFAULT_POLICY == 0x30000
    with pytest.raises(MotteError, match="allows debugging"):
        snp_command(LAUNCH, SnpOptions(policy=SNP_DEFAULT_POLICY | SNP_POLICY_DEBUG))
    with pytest.raises(MotteError, match="bit 17"):
        validate_snp_policy(0x10000)
    with pytest.raises(MotteError, match="above 31"):
        validate_snp_policy(1 << 32 | SNP_DEFAULT_POLICY)
    validate_snp_policy(SNP_DEFAULT_POLICY | SNP_POLICY_DEBUG, allow_debug=True)


def test_tdx_command_line() -> None:
    command = tdx_command(LAUNCH)
    assert option(command, "-accel") == ["kvm"] and option(command, "-cpu") == ["host"]
    machine = option(command, "-machine")[0].split(",")
    assert machine[0] == "q35" and "kernel-irqchip=split" in machine
    assert "confidential-guest-support=tdx0" in machine
    objects = option(command, "-object")
    tdx = json.loads(objects[0])
    assert tdx == {"qom-type": "tdx-guest", "id": "tdx0", "sept-ve-disable": True,
                   "quote-generation-socket": {"type": "vsock", "cid": "2", "port": "4050"}}  # fmt: skip
    assert "memory-backend-memfd,id=ram1,size=1280M,share=true,prealloc=false" in objects
    assert option(command, "-bios") == ["/fw/OVMF.amdsev.fd"]
    assert "virtio-serial-pci,disable-legacy=on,iommu_platform=true" in option(command, "-device")
    no_qgs = json.loads(option(tdx_command(LAUNCH, TdxOptions(qgs_vsock_port=None)), "-object")[0])
    assert "quote-generation-socket" not in no_qgs


def test_launch_sanity() -> None:
    with pytest.raises(MotteError, match="vCPU"):
        snp_command(ConfidentialLaunch(**{**LAUNCH.__dict__, "vcpus": 0}))
    with pytest.raises(MotteError, match="too little memory"):
        tdx_command(ConfidentialLaunch(**{**LAUNCH.__dict__, "memory_mib": 64}))


def failed(checks: list[Check]) -> dict[str, str]:
    return {c.name: c.detail for c in checks if not c.ok}


def test_snp_checks_on_a_host_like_this_one() -> None:
    checks = snp_checks(qemu_version=(7, 2, 22), host_kernel=(6, 1, 0), cpu_flags={"sse4_1", "hypervisor"},
                        dev_sev=False, kvm_amd_sev_snp=None)  # fmt: skip
    missing = failed(checks)
    assert missing["QEMU version"] == "QEMU 7.2.22: the sev-snp-guest object needs QEMU >= 9.1"
    assert missing["host kernel"] == "Linux 6.1.0: KVM SEV-SNP guests need Linux >= 6.11"
    assert missing["/dev/sev"].startswith("missing")
    assert "cpu flag sev_snp" in missing and "kvm_amd sev_snp" in missing
    with pytest.raises(MotteError) as caught:
        refuse_unless_ready("SEV-SNP", checks)
    text = str(caught.value)
    assert text.startswith("this host cannot launch a SEV-SNP keep: cpu flag sev_snp")
    assert "needs QEMU >= 9.1" in text and "motte platform info" in text


def test_snp_checks_on_a_ready_host() -> None:
    checks = snp_checks(qemu_version=(9, 2, 0), host_kernel=(6, 11, 0), cpu_flags={"sev", "sev_es", "sev_snp"},
                        dev_sev=True, kvm_amd_sev_snp="Y")  # fmt: skip
    assert failed(checks) == {}
    refuse_unless_ready("SEV-SNP", checks)
    no_qemu = snp_checks(qemu_version=None, host_kernel=(6, 12), cpu_flags={"sev_snp"}, dev_sev=True,
                         kvm_amd_sev_snp="N")  # fmt: skip
    assert failed(no_qemu) == {
        "kvm_amd sev_snp": "/sys/module/kvm_amd/parameters/sev_snp = N",
        "QEMU version": "QEMU absent: the sev-snp-guest object needs QEMU >= 9.1",
    }


def test_tdx_checks() -> None:
    checks = tdx_checks(qemu_version=(10, 0, 0), host_kernel=(6, 16, 1), cpu_flags={"vmx", "tdx_host_platform"},
                        kvm_intel_tdx="Y")  # fmt: skip
    assert failed(checks) == {"QEMU version": "QEMU 10.0.0: the tdx-guest object needs QEMU >= 10.1"}
    ready = tdx_checks(qemu_version=(10, 1, 0), host_kernel=(6, 16, 0), cpu_flags={"tdx_host_platform"},
                       kvm_intel_tdx="Y")  # fmt: skip
    refuse_unless_ready("TDX", ready)
    old = failed(tdx_checks(qemu_version=(10, 1, 0), host_kernel=(6, 15, 9), cpu_flags=set(), kvm_intel_tdx=None))
    assert old["host kernel"] == "Linux 6.15.9: KVM TDX guests need Linux >= 6.16"
    assert old["kvm_intel tdx"] == "kvm_intel is not loaded or has no tdx parameter"


def test_informational_checks_do_not_refuse() -> None:
    refuse_unless_ready("SEV-SNP", [Check("/dev/sev-guest", False, "absent", required=False)])
