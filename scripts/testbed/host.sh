#!/bin/sh
# One precog test host: namespaces, an overlay root and the mount tree CRIU needs (ENVIRONMENT.md).
# Started by src/runtime/testbed.ts (`precog testbed up`); not meant to be run by hand.
#
#   host.sh launch NAME NETNS ROOTFS HOSTDIR REPO CGROUP HOSTS
#       Runs outside: joins the host's cgroup (CGROUP is a cgroup2 directory, or - for none) and the named network
#       namespace, then starts `host.sh init` as PID 1 of new mount, PID, UTS and IPC namespaces. This process
#       stays as the init's parent (unshare --kill-child: if it dies, the host dies).
#   host.sh init NAME ROOTFS HOSTDIR REPO HOSTS
#       PID 1 of the host: mounts HOSTDIR/root as an overlay (lower ROOTFS, upper HOSTDIR/upper), binds REPO
#       read-only at /opt/precog, mounts proc, sys, a fresh /dev, devpts, /run and /tmp, pivots into it, drops every
#       inherited mount and descriptor, writes /run/precog-host.ready and stays as a reaping init.
# HOSTS is the /etc/hosts body naming the test hosts ("10.213.77.1 a<newline>10.213.77.2 b").
set -eu

stage=$1
shift
case "$stage" in
launch)
	name=$1 netns=$2 rootfs=$3 dir=$4 repo=$5 cgroup=$6 hosts=$7
	if [ "$cgroup" != - ]; then
		echo $$ >"$cgroup/cgroup.procs"
	fi
	exec nsenter --net="/run/netns/$netns" -- \
		unshare --mount --propagation private --uts --ipc --pid --fork --kill-child -- \
		/bin/sh "$0" init "$name" "$rootfs" "$dir" "$repo" "$hosts"
	;;
init) ;;
*)
	echo "host.sh: unknown stage $stage" >&2
	exit 2
	;;
esac

name=$1 rootfs=$2 dir=$3 repo=$4 hosts=$5
root=$dir/root
# Host tools used after the pivot, while the old root is still reachable under /oldroot.
umount_bin=$(command -v umount)

mount --make-rprivate /
echo "$name" >/proc/sys/kernel/hostname

mount -t overlay overlay -o "lowerdir=$rootfs,upperdir=$dir/upper,workdir=$dir/work" "$root"
mkdir -p "$root/opt/precog" "$root/oldroot"
mount --bind "$repo" "$root/opt/precog"
mount -o remount,bind,ro "$root/opt/precog"
# The host's own data disk: /var/lib/precog (containers, agent state, checkpoints) is a real directory of this
# host (HOSTDIR/data), not part of its overlay root, so that container overlays can take their upper layers from it
# and the agent can rename its rebuilt checkpoints into containers. Nothing of the other host is mounted here.
mkdir -p "$dir/data" "$root/var/lib/precog"
mount --bind "$dir/data" "$root/var/lib/precog"
# Podman's storage, on the same data disk (its overlay driver cannot stack on the host's overlay root), where a
# server keeps it: /var/lib/containers.
mkdir -p "$dir/containers" "$root/var/lib/containers"
mount --bind "$dir/containers" "$root/var/lib/containers"
# The base image containers are made from, read-only (the lower layer of every container's overlay).
mkdir -p "$root/var/cache/precog/base"
mount --bind "$rootfs" "$root/var/cache/precog/base"
mount -o remount,bind,ro "$root/var/cache/precog/base"

mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t sysfs -o nosuid,nodev,noexec sysfs "$root/sys"
# The cgroup hierarchies at the machine's mount points (the hosts have no cgroup namespace: same paths inside and
# out), so that the host's agent can make, freeze and remove its containers' cgroups.
if [ -d "$root/sys/fs/cgroup" ]; then
	mount -t tmpfs -o nosuid,nodev,noexec,mode=755 cgroup "$root/sys/fs/cgroup"
	awk '$5 ~ "^/sys/fs/cgroup/" { for (i = 7; i <= NF; i++) if ($i == "-") { print $5, $(i + 1), $(i + 3); break } }' \
		/proc/self/mountinfo | while read -r point fstype opts; do
		mkdir -p "$root$point"
		if [ "$fstype" = cgroup2 ]; then
			mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$root$point"
		elif [ "$fstype" = cgroup ]; then
			sub=$(echo "$opts" | tr , '\n' | grep -vE '^(rw|ro|relatime|noatime|nosuid|nodev|noexec|clone_children|xattr)$' | paste -sd, -)
			mount -t cgroup -o "nosuid,nodev,noexec,$sub" cgroup "$root$point"
		fi
	done
fi

# A fresh /dev with device nodes of its own: bind-mounted host nodes make `criu dump` fail ("Can't lookup mount").
mount -t tmpfs -o nosuid,mode=755,size=1m tmpfs "$root/dev"
mknod -m 666 "$root/dev/null" c 1 3
mknod -m 666 "$root/dev/zero" c 1 5
mknod -m 666 "$root/dev/full" c 1 7
mknod -m 666 "$root/dev/random" c 1 8
mknod -m 666 "$root/dev/urandom" c 1 9
mknod -m 666 "$root/dev/tty" c 5 0
mknod -m 666 "$root/dev/fuse" c 10 229
mkdir -m 755 "$root/dev/net" "$root/dev/pts"
mkdir -m 1777 "$root/dev/shm"
mknod -m 666 "$root/dev/net/tun" c 10 200
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"
ln -s /proc/self/fd/1 "$root/dev/stdout"
ln -s /proc/self/fd/2 "$root/dev/stderr"
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs "$root/dev/shm"
mount -t tmpfs -o nosuid,nodev,mode=755 tmpfs "$root/run"
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs "$root/tmp"

echo "$name" >"$root/etc/hostname"
# Podman as a host without systemd and with hybrid cgroups is configured (docs/deploy.md): cgroupfs, events in a
# file, and runc (crun refuses hybrid cgroups while cgroup2 has controllers: ENVIRONMENT.md).
mkdir -p "$root/etc/containers"
cat >"$root/etc/containers/containers.conf" <<'CONF'
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
CONF
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n%s\n' "$hosts" >"$root/etc/hosts"

cd "$root"
pivot_root . oldroot
cd /
"/oldroot$umount_bin" -l /oldroot
rmdir /oldroot

# PID 1: close every inherited descriptor (one pointing outside makes `criu dump` fail), point stdio at the host's
# own /dev/null, announce readiness, then reap children forever. SIGTERM stops the host gracefully: every process
# gets SIGTERM, and when PID 1 exits the kernel kills whatever is left in the PID namespace. The script lives in the
# host's own /run, so the init (shown as "/bin/bash /run/precog-init a") refers to nothing outside the host.
cat >/run/precog-init <<'EOF'
# PID 1 of a precog test host (written by scripts/testbed/host.sh).
for fd in /proc/$$/fd/*; do
	n=${fd##*/}
	# 255 is bash's own descriptor of this script.
	if [ "$n" -gt 2 ] && [ "$n" != 255 ]; then eval "exec $n>&-"; fi
done 2>/dev/null
exec </dev/null >/dev/null 2>&1
trap 'kill -TERM -1; sleep 0.5; exit 0' TERM
trap '' INT HUP USR1 USR2
echo "$1" >/run/precog-host.ready
while :; do
	sleep 2147483647 &
	wait $!
done
EOF
exec /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
	/bin/bash /run/precog-init "$name"
