#!/bin/busybox sh
# PID 1 of a throwaway otel-oom test guest (runs from the initramfs, busybox only).
#
# It loads the 9p/virtio modules, mounts the host's root filesystem read-only over 9p, makes the
# few paths a test writes to into tmpfs, builds the /proc, /sys, cgroup, tracefs and bpffs mounts an
# agent expects, then runs the host-provided command chrooted into the host tree. The control share
# (tag "otelctl") carries the command in and the exit code, kernel release and timestamps out;
# the command's stdout+stderr go to the second serial port so kernel messages never mix into it.
# By default the root is an overlay (9p lower, tmpfs upper): the guest may write anywhere, the host
# share itself is exported read-only by QEMU.

/bin/busybox mkdir -p /proc /sys /dev /ctl /newroot
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
export PATH=/bin

mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

# The host turns a missing rc file plus this message into GuestSetupError.
fail() {
    echo "otel-oom-qemu: setup failed: $*" > /dev/ttyS0
    echo "$*" > /ctl/setup_error 2>/dev/null
    sync
    poweroff -f
    echo o > /proc/sysrq-trigger
    sleep 5
    exit 1
}

for m in $(cat /modules/order); do
    insmod "/modules/$m.ko" || fail "insmod $m failed"
done

# virtio devices bind while insmod runs, but give a slow TCG guest a moment before giving up.
n=0
until mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 otelctl /ctl 2>/dev/null; do
    n=$((n + 1))
    [ "$n" -gt 50 ] && fail "cannot mount the control share (tag otelctl)"
    sleep 0.1
done
. /ctl/boot.conf

R=/newroot
mkdir -p /lower /rw
mount -t 9p -o "trans=virtio,version=9p2000.L,msize=262144,ro,cache=$HOSTROOT_CACHE" hostroot /lower \
    || fail "cannot mount the host root (tag hostroot)"
if [ "$OVERLAY" = 1 ]; then
    # Writes anywhere land in guest RAM; the 9p share stays read-only, so the host is never touched.
    mount -t tmpfs -o mode=0755 tmpfs /rw && mkdir -p /rw/upper /rw/work \
        || fail "cannot make the overlay's tmpfs"
    mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay $R \
        || fail "cannot mount the overlay over the host root"
else
    mount --bind /lower $R || fail "cannot bind the host root"
fi
if [ -n "$ROOT_SUBDIR" ]; then
    # A guest of another architecture: its own userland (a directory of the host tree) becomes the
    # root; the host paths the command needs (KEEP_DIRS: the checkout) are bound into it below.
    mkdir -p /subroot && mount --bind "$R$ROOT_SUBDIR" /subroot || fail "cannot bind the userland $ROOT_SUBDIR"
    R=/subroot
fi

# Fresh, empty scratch and runtime dirs: the host's /run (sockets, pid files) means nothing here.
for d in /tmp /var/tmp; do
    mount -t tmpfs -o mode=1777 tmpfs "$R$d" || fail "cannot mount tmpfs on $d"
done
mount -t tmpfs -o mode=0755 tmpfs "$R/run" || fail "cannot mount tmpfs on /run"
# ...except the host paths the command needs that live there (a checkout or venv under /tmp)
for d in $KEEP_DIRS; do
    mkdir -p "$R$d" && mount --bind "/lower$d" "$R$d" || fail "cannot bind $d from the host root"
done
for d in $TMPFS_DIRS; do
    [ -d "$R$d" ] || mkdir -p "$R$d" 2>/dev/null \
        || fail "cannot create $d inside the guest: it does not exist on the host and overlay is off"
    mount -t tmpfs -o mode=0755 tmpfs "$R$d" || fail "cannot mount tmpfs on $d"
done

mount -t proc proc "$R/proc" || fail "cannot mount proc"
mount -t sysfs sysfs "$R/sys" || fail "cannot mount sysfs"
mount -t devtmpfs devtmpfs "$R/dev" || fail "cannot mount devtmpfs"
mkdir -p "$R/dev/pts" "$R/dev/shm"
mount -t devpts devpts "$R/dev/pts"
mount -t tmpfs -o mode=1777 tmpfs "$R/dev/shm"
mount -t tracefs tracefs "$R/sys/kernel/tracing" || fail "cannot mount tracefs"
mount -t debugfs debugfs "$R/sys/kernel/debug" 2>/dev/null
mount -t bpf bpf "$R/sys/fs/bpf" || fail "cannot mount bpffs"

C="$R/sys/fs/cgroup"
case "$CGROUP" in
v2)
    mount -t cgroup2 cgroup2 "$C" || fail "cannot mount cgroup2"
    # Enable every controller (as systemd does) so the guest looks like a cgroup v2 node.
    for c in $(cat "$C/cgroup.controllers"); do
        echo "+$c" > "$C/cgroup.subtree_control" 2>/dev/null
    done
    grep -qw memory "$C/cgroup.subtree_control" || fail "cannot enable +memory in the cgroup2 root"
    ;;
v1)
    # The systemd "hybrid" layout the build host has: v1 memory plus cgroup2 at unified/.
    mount -t tmpfs -o mode=0755 cgroup "$C" || fail "cannot mount tmpfs on /sys/fs/cgroup"
    mkdir -p "$C/memory" "$C/unified"
    mount -t cgroup -o memory memory "$C/memory" \
        || fail "cannot mount the cgroup v1 memory controller (kernel built without CONFIG_MEMCG_V1?)"
    mount -t cgroup2 cgroup2 "$C/unified" || fail "cannot mount cgroup2 at /sys/fs/cgroup/unified"
    ;;
*)
    fail "unknown cgroup layout '$CGROUP' (expected v1 or v2)"
    ;;
esac

mkdir -p "$R/run/otel-oom-qemu"
mount --bind /ctl "$R/run/otel-oom-qemu" || fail "cannot bind the control share into the new root"
if [ -n "$SHARE_DIR" ]; then
    [ -d "$R$SHARE_DIR" ] || mkdir -p "$R$SHARE_DIR" 2>/dev/null \
        || fail "cannot create mount point $SHARE_DIR for the shared directory"
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 otelshare "$R$SHARE_DIR" \
        || fail "cannot mount the shared directory at $SHARE_DIR"
fi

ip link set lo up || fail "cannot bring up lo"

# Raw mode: no \n -> \r\n translation, so the host file is byte-for-byte what the command wrote.
# Without a second serial port (arm64 virt) the output goes to a file on the control share.
OUT=/ctl/output.log
if [ "$OUTPUT_SERIAL" = 1 ]; then
    OUT=/dev/ttyS1
    stty -F /dev/ttyS1 raw -echo 2>/dev/null || fail "no second serial port (/dev/ttyS1)"
fi

uname -r > /ctl/release
cut -d' ' -f1 /proc/uptime > /ctl/t_start
chroot "$R" /usr/bin/env -i /bin/sh -c \
    '. /run/otel-oom-qemu/env && exec /bin/sh /run/otel-oom-qemu/command' \
    < /dev/null > "$OUT" 2>&1
rc=$?
cut -d' ' -f1 /proc/uptime > /ctl/t_end
echo "$rc" > /ctl/rc
sync
poweroff -f
echo o > /proc/sysrq-trigger
