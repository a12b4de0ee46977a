#!/usr/bin/env bash
# Idempotent set-up for building and testing qbo on Debian 12: installs only
# what is missing, mounts bpffs, and prepares the cache directory. It starts
# no daemons; scripts/engines.sh does that for the tiers that need them.
set -euo pipefail

[ "$(id -u)" -eq 0 ] || { echo "setup: must run as root" >&2; exit 1; }

CACHE=${QBO_CACHE:-/var/cache/qbo}
mkdir -p "$CACHE"

# Debian packages, by the command or file that proves each is present.
declare -A need=(
	[clang-19]=/usr/bin/clang-19
	[llvm-19]=/usr/bin/llvm-strip-19
	[libbpf-dev]=/usr/include/bpf/bpf_helpers.h
	[bpftool]=/usr/sbin/bpftool
	[iproute2]=/usr/sbin/ip
	[busybox-static]=/bin/busybox
	[docker.io]=/usr/sbin/dockerd
	[containerd]=/usr/bin/containerd
	[runc]=/usr/sbin/runc
	[iptables]=/usr/sbin/iptables
	[curl]=/usr/bin/curl
	[nmap]=/usr/bin/nmap
	[gcc]=/usr/bin/gcc
	[make]=/usr/bin/make
	[git]=/usr/bin/git
	[chromium]=/usr/bin/chromium  # e2e: the web page in a real browser
	[ca-certificates]=/etc/ssl/certs/ca-certificates.crt
)
missing=()
for pkg in "${!need[@]}"; do
	[ -e "${need[$pkg]}" ] || missing+=("$pkg")
done
# Node.js comes with npm when installed from NodeSource; Debian splits them.
if ! command -v node >/dev/null; then
	missing+=(nodejs npm)
elif ! command -v npm >/dev/null; then
	missing+=(npm)
fi
if [ "${#missing[@]}" -gt 0 ]; then
	echo "setup: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
	export PATH=/usr/local/go/bin:$PATH
fi
command -v go >/dev/null || { echo "setup: Go >= 1.26 is required (not in Debian 12; install from go.dev)" >&2; exit 1; }

# bpffs: pinned maps and links live here.
if ! mount | grep -q ' /sys/fs/bpf type bpf '; then
	mkdir -p /sys/fs/bpf
	mount -t bpf bpf /sys/fs/bpf
fi

# cgroup v2: socket-level hooks attach to the unified hierarchy.
if ! mount | grep -q 'type cgroup2'; then
	mkdir -p /sys/fs/cgroup/unified
	mount -t cgroup2 none /sys/fs/cgroup/unified 2>/dev/null || true
fi
echo "setup: ok"
