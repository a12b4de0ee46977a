#!/usr/bin/env bash
# Firewall benchmarks (root): per-packet classification cost with
# BPF_PROG_TEST_RUN against the empty program (21 rounds, each running the
# empty program and then the measured one; medians, and the median of the
# per-round differences, since single runs on a shared VM move by tens of
# ns), the XDP prefilter against the empty
# program with 0/100k/1M prefixes (measured side by side, with the control
# plane's cost of loading, reading back and deleting 1M prefixes), and the
# loopback egress path
# inside a private namespace with the same rules in qbo, an iptables
# linear chain and an nftables set (the namespace and its rules are
# removed when the benchmark ends).
set -euo pipefail
cd "$(dirname "$0")/.."
go test -tags bpftest -run '^$' -bench 'ProgRun' -benchtime 21x ./fw/datapath/
go test -tags bpftest -run '^$' -bench 'Prefilter' -benchtime 1000000x ./fw/datapath/
go test -tags bpftest -run '^$' -bench 'LoopbackPath' -benchtime 50000x ./fw/datapath/
go test -run '^$' -bench 'Compile' ./fw/
