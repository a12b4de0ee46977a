#!/usr/bin/env bash
# Runs every test tier in order and fails on the first failing tier:
#   generate check, lint, unit, bpf (root, prog.Run and live kernel),
#   integration (real containerd + dockerd), e2e (built binaries, real
#   traffic in network namespaces, real websocket clients), AsyncAPI check.
# Whatever it starts it stops again, also when a tier fails.
set -euo pipefail
cd "$(dirname "$0")/.."

MAKE=${MAKE:-make}
[ "$(id -u)" -eq 0 ] || { echo "test: the bpf, integration and e2e tiers need root" >&2; exit 1; }

cleanup() {
	local rc=$?
	bash scripts/engines.sh stop || true
	# Leftovers of tests that were killed before their own t.Cleanup ran.
	for d in /sys/fs/bpf/qbo-test-* /sys/fs/bpf/qbo-e2e-*; do
		[ -e "$d" ] && rm -rf "$d"
	done
	for ns in $(ip netns list 2>/dev/null | awk '/^qbo-(t|e2e)-/{print $1}'); do
		ip netns del "$ns" || true
	done
	exit $rc
}
trap cleanup EXIT

tier() { echo; echo "=== tier: $1"; }

tier generate; $MAKE --no-print-directory check-generate
tier lint;     $MAKE --no-print-directory lint
tier unit;     $MAKE --no-print-directory test-unit
tier bpf;      $MAKE --no-print-directory test-bpf
tier engines;  bash scripts/engines.sh start
tier integration; $MAKE --no-print-directory test-integration
tier e2e;      QBO_ASYNCAPI_VALIDATOR=$(bash scripts/asyncapi.sh install) $MAKE --no-print-directory test-e2e
tier asyncapi; bash scripts/asyncapi.sh validate mirror/asyncapi.yaml
echo; echo "all tiers passed"
