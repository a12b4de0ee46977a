#!/usr/bin/env bash
# Runs every benchmark script in bench/ (root; each prints go test -bench
# output and side-by-side baselines). Results are recorded by hand in
# docs/BENCHMARKS.md together with the command.
set -euo pipefail
cd "$(dirname "$0")"
for s in *.sh; do
	[ "$s" = run.sh ] && continue
	echo "=== bench/$s"
	bash "$s"
done
