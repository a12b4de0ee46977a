#!/usr/bin/env bash
# Telemetry pipeline benchmarks (root): ring buffer -> reader -> decoder ->
# mirror, with loss counters, and the decoder and delta encoder alone.
set -euo pipefail
cd "$(dirname "$0")/.."
go test -tags bpftest -run '^$' -bench 'RingToMirror' -benchtime 100000x ./cmd/qbod/
go test -tags bpftest -run '^$' -bench 'RingToChannel' -benchtime 100000x ./bpf/trace/
go test -run '^$' -bench 'Decode$' ./bpf/trace/
go test -run '^$' -bench 'EncodeDelta|Publish' ./mirror/
