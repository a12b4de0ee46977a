#!/bin/sh
# Load-balancer benchmarks; results and how to read them are in
# docs/BENCHMARKS.md ("Load balancer"). Needs root (BPF_PROG_TEST_RUN,
# a network namespace for iptables). Everything runs in one invocation so
# the baselines are measured beside the numbers they qualify.
set -eu
cd "$(dirname "$0")/.."

echo "== established flow vs the XDP_PASS floor, interleaved rounds (medians, median ratio)"
go test -tags bpftest -run '^$' -bench 'BenchmarkXDPRatio' -benchtime 45x -count 3 ./lb/datapath/ | grep Benchmark
echo "== XDP per packet (ns/pkt = kernel time per run); floors: trivial XDP_PASS"
go test -tags bpftest -run '^$' -bench 'BenchmarkXDP$' -benchtime 1000000x ./lb/datapath/ | grep Benchmark
echo "== established flow with 1, 10k, 100k services loaded"
go test -tags bpftest -run '^$' -bench 'BenchmarkXDPServices' -benchtime 1000000x -count 3 ./lb/datapath/ | grep Benchmark
echo "== 1M flows round-robin over the 256k-entry flow table, NAT and DSR, each beside an established flow run the same way"
go test -tags bpftest -run '^$' -bench 'BenchmarkXDPChurn$' -benchtime 2000000x ./lb/datapath/ | grep Benchmark
echo "== the same NAT churn and single cached flow over flow tables of 4k, 16k, 64k and 256k entries"
go test -tags bpftest -run '^$' -bench 'BenchmarkXDPChurnTableSize' -benchtime 1000000x ./lb/datapath/ | grep Benchmark
echo "== lb_revnat (TCX egress of the uplink) on egress traffic that is no NAT reply, beside an empty TC program"
go test -tags bpftest -run '^$' -bench 'BenchmarkRevNAT' -benchtime 15x ./lb/datapath/ | grep Benchmark
echo "== control plane: one service with 100 backends (+ Maglev table), 100k services loaded"
go test -tags bpftest -run '^$' -bench 'BenchmarkControlPlane' -benchtime 1000x ./lb/datapath/ | grep Benchmark

echo "== iptables DNAT (new UDP flows, private namespace): ns per new flow"
ns=qbo-t-lbbench-$$
ip netns add "$ns"
trap 'ip netns del "$ns"' EXIT
ip -n "$ns" link set lo up
ip -n "$ns" route add local 10.0.0.0/8 dev lo
for n in 0 1 1000 10000; do
	ip netns exec "$ns" iptables -t nat -F OUTPUT
	ip netns exec "$ns" conntrack -F >/dev/null 2>&1 || true
	if [ "$n" -gt 0 ]; then
		# n-1 other services first, the measured VIP last (worst case of a
		# linear chain, as kube-proxy's iptables mode has per service).
		{
			echo '*nat'
			i=1
			while [ "$i" -lt "$n" ]; do
				echo "-A OUTPUT -d 10.201.$((i / 250)).$((i % 250 + 1))/32 -p udp --dport 53 -j DNAT --to-destination 127.0.0.1:5353"
				i=$((i + 1))
			done
			echo "-A OUTPUT -d 10.199.100.1/32 -p udp --dport 53 -j DNAT --to-destination 127.0.0.1:5353"
			echo 'COMMIT'
		} | ip netns exec "$ns" iptables-restore --noflush
	fi
	printf 'rules=%-6s ' "$n"
	ip netns exec "$ns" python3 -c '
import socket, time
N = 20000
t = time.perf_counter()
for i in range(N):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"x", ("10.199.100.1", 53))
    s.close()
print("%.0f ns/new-flow" % ((time.perf_counter() - t) / N * 1e9))'
done
