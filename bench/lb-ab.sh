#!/bin/sh
# Load balancer A/B: the per-packet benchmarks of a base revision and of
# the work tree, alternately, three rounds, so that both see the same
# minutes of this noisy VM (docs/BENCHMARKS.md, "Load balancer"). Both
# run the work tree's benchmark code.
# Needs root (BPF_PROG_TEST_RUN).
#
#   bash bench/lb-ab.sh REV
set -eu
cd "$(dirname "$0")/.."
rev=${1:?usage: lb-ab.sh REV}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# An export of the revision, not a worktree: nothing is added to the repository.
mkdir "$tmp/base"
git archive "$rev" | tar -x -C "$tmp/base"
# The work tree's benchmark code runs against both datapaths (it uses only
# names both have: the lb/datapath and bpf/lb API, counters new_flow/est_flow).
cp lb/datapath/bench_bpf_test.go "$tmp/base/lb/datapath/"
(cd "$tmp/base" && go test -c -buildvcs=false -tags bpftest -o "$tmp/base.test" ./lb/datapath/)
go test -c -buildvcs=false -tags bpftest -o "$tmp/now.test" ./lb/datapath/
cd lb/datapath
for r in 1 2 3; do
	for b in base now; do
		echo "== $b ($rev or work tree), round $r"
		"$tmp/$b.test" -test.run '^$' -test.bench 'BenchmarkXDPRatio' -test.benchtime 45x -test.count 3 | grep Benchmark
		"$tmp/$b.test" -test.run '^$' -test.bench 'BenchmarkXDPChurn$' -test.benchtime 2000000x | grep Benchmark
	done
done
