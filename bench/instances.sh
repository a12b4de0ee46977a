#!/usr/bin/env bash
# Instance start-up: time from `qbo add instance` to the inner dockerd being
# ready (the command returns then), and to a nested container's first output,
# next to a plain `docker run` of the same image on the host, in the same run.
# Also times the instance image build, cold (image removed) and warm (cached).
# Needs root, dockerd/containerd (scripts/engines.sh start) and bin/ (make build).
# Usage: bash bench/instances.sh [ROUNDS]   (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
QBO_BIN=${QBO_BIN:-$PWD/bin}
[ "$(id -u)" = 0 ] || { echo "bench/instances.sh: run as root" >&2; exit 1; }
[ -x "$QBO_BIN/qbod" ] || { echo "bench/instances.sh: build first (make build)" >&2; exit 1; }
bash scripts/engines.sh start >/dev/null

work=$(mktemp -d /tmp/qbo-bench-inst.XXXXXX)
sfx=$(head -c3 /dev/urandom | od -An -tx1 | tr -d ' \n')
sock=$work/qbod.sock pin=/sys/fs/bpf/qbo-bench-$sfx img=qbo-bench-busybox:$sfx
cat >"$work/qbod.yaml" <<YAML
listen: ""
trace:
  enabled: false
runtime:
  network: qbo-bench-$sfx
  bridge: qbobench$sfx
  subnet: 10.213.230.0/24
YAML
qbod_pid=
cleanup() {
	for i in $(seq 1 "$ROUNDS"); do "$QBO_BIN/qbo" --socket "$sock" delete instance "bench-$i" >/dev/null 2>&1 || true; done
	[ -n "$qbod_pid" ] && kill "$qbod_pid" 2>/dev/null && wait "$qbod_pid" 2>/dev/null || true
	"$QBO_BIN/qbod" --config "$work/qbod.yaml" --state-dir "$work/state" --socket "$sock" --pin-dir "$pin" --cleanup >/dev/null 2>&1 || true
	docker rmi -f "$img" >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT
"$QBO_BIN/qbod" --config "$work/qbod.yaml" --state-dir "$work/state" --socket "$sock" --pin-dir "$pin" >"$work/qbod.log" 2>&1 &
qbod_pid=$!
for _ in $(seq 100); do [ -S "$sock" ] && "$QBO_BIN/qbo" --socket "$sock" version >/dev/null 2>&1 && break; sleep 0.1; done
q() { "$QBO_BIN/qbo" --socket "$sock" "$@"; }
now() { date +%s%N; }
ms() { echo $(( ($2 - $1) / 1000000 )); }

# The nested workload: a one-binary busybox image, imported and saved.
mkdir -p "$work/rootfs/bin" && cp /bin/busybox "$work/rootfs/bin/" && ln -s busybox "$work/rootfs/bin/echo"
tar -C "$work/rootfs" -c . | docker import --change 'LABEL dev.qbo.managed=true' - "$img" >/dev/null
docker save -o "$work/busybox.tar" "$img"

# Image build: cold (the current instance image removed, unless in use) and warm.
ref=$(q build image instance -o json | sed -n 's/.*"ref": "\(.*\)".*/\1/p')
cold="-"
if docker rmi "$ref" >/dev/null 2>&1; then
	t0=$(now); q build image instance >/dev/null; cold=$(ms "$t0" "$(now)")
fi
t0=$(now); q build image instance >/dev/null; warm=$(ms "$t0" "$(now)")
echo "image build: cold ${cold} ms, warm (cached) ${warm} ms ($ref)"

echo "round ready_ms load_ms nested_ms first_output_ms delete_ms docker_run_ms"
for i in $(seq 1 "$ROUNDS"); do
	t0=$(now); q add instance "bench-$i" >/dev/null; t1=$(now)
	q load image "bench-$i" "$work/busybox.tar" >/dev/null; t2=$(now)
	out=$(q exec "bench-$i" -- docker run --rm --pull never "$img" echo hi); t3=$(now)
	[ "$out" = hi ] || { echo "nested output: $out" >&2; exit 1; }
	q delete instance "bench-$i" >/dev/null; t4=$(now)
	b0=$(now); out=$(docker run --rm --pull never "$img" echo hi); b1=$(now)
	[ "$out" = hi ] || { echo "baseline output: $out" >&2; exit 1; }
	echo "$i $(ms "$t0" "$t1") $(ms "$t1" "$t2") $(ms "$t2" "$t3") $(ms "$t0" "$t3") $(ms "$t3" "$t4") $(ms "$b0" "$b1")"
done
