#!/bin/sh
# qbo instance init: makes this unprivileged container able to run its own
# dockerd, then runs it. The container is started with an explicit capability
# set and unconfined seccomp/apparmor/system paths (see runtime/instance).
set -eu

# Docker mounts /sys read-only in a container that is not --privileged; the
# inner dockerd and runc write there (cgroups, bridge settings of the inner
# netns).
mount -o remount,rw /sys

# Each cgroup hierarchy is mounted read-only too. A plain remount of a cgroup
# mount can fail as busy; bind-mounting it onto itself and remounting the bind
# read-write works.
for d in /sys/fs/cgroup/*; do
	[ -d "$d" ] && [ ! -L "$d" ] || continue
	mount --bind "$d" "$d"
	mount -o remount,bind,rw "$d"
done

# /run/qbo is a host directory under qbod's state dir: the inner dockerd's
# second socket there is how the host reaches it (and its appearance is the
# readiness signal qbod waits for).
mkdir -p /run/qbo /var/lib/docker
rm -f /run/qbo/docker.sock /var/run/docker.pid

# overlay2 works on /var/lib/docker because it is a volume, not the
# container's own overlay root.
exec dockerd \
	--host unix:///var/run/docker.sock \
	--host unix:///run/qbo/docker.sock \
	--storage-driver "${QBO_STORAGE_DRIVER:-overlay2}" \
	"$@"
