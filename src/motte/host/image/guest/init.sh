#!/bin/sh
# /init of the motte micro-VM keep: PID 1 of the guest (busybox sh).
#
# PID 1 must never exit (the kernel panics when it does), so Python runs as a child of this
# shell, and the VM is reset when Python ends; QEMU runs with -no-reboot, so a reset ends QEMU.
# The keep runtime waits for the host's "bye" before it exits, so no byte it sent is still in
# the virtqueue when the reset drops it.
#
# Kernel command-line words of the form KEY=value that the kernel does not know arrive here as
# environment variables: MOTTE_MODE selects what runs (empty: the keep runtime).
export PATH=/usr/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
# No console is attached (no serial port): Python's stdio goes to the kernel log, never into
# the channel by accident (an fd 0-2 left free could otherwise be taken by the virtio port).
exec </dev/null >/dev/kmsg 2>&1

for module in @MODULES@; do
    insmod "/lib/modules/$module.ko" || echo "motte-init: cannot load $module"
done
# Confidential-computing guest drivers (attestation reports through configfs-tsm), loaded only in
# a confidential VM: each insmod costs ~0.1 s under TCG. The kernel registers the sev-guest
# platform device in an SEV-SNP guest and sets the tdx_guest CPU flag in a TDX guest; the
# drivers refuse to load (ENODEV) anywhere else anyway. The flags are read with shell builtins:
# a fork and exec of grep costs ~10 ms under TCG.
confidential=
[ -e /sys/bus/platform/devices/sev-guest ] && confidential=sev
while read -r key rest; do
    case "$key" in flags) case " $rest " in *" tdx_guest "*) confidential=tdx ;; esac; break ;; esac
done </proc/cpuinfo
if [ -n "$confidential" ]; then
    for module in @OPTIONAL_MODULES@; do
        insmod "/lib/modules/$module.ko" 2>/dev/null
    done
    [ -d /sys/kernel/config ] && mount -t configfs configfs /sys/kernel/config
fi

# -I -S -B are implied by /usr/bin/python3.11._pth too, which pins sys.path to the image.
case "$MOTTE_MODE" in
    selftest) /usr/bin/python3.11 -I -S -B /usr/lib/motte/selftest.pyc ;;
    *) /usr/bin/python3.11 -I -S -B -m motte.keep --channel-device @PORT_NAME@ ;;
esac
echo "motte-init: the keep exited with status $?"
reboot -f
while :; do sleep 60; done  # reboot -f does not return; never let PID 1 end regardless
