#!/usr/bin/env bash
# engines.sh start|stop: make containerd and dockerd answer for the test
# tiers that need them. "start" only starts what does not already answer and
# remembers it under $RUN; "stop" stops only what "start" started.
set -euo pipefail

RUN=${QBO_ENGINES_RUN:-/run/qbo-engines}
LOG=${QBO_ENGINES_LOG:-/var/log/qbo-engines}
CTRD_SOCK=/run/containerd/containerd.sock
mkdir -p "$RUN" "$LOG"

# wait_for DESC DEADLINE_S CMD...: poll until CMD succeeds or the deadline passes.
wait_for() {
	local desc=$1 deadline=$(( $(date +%s) + $2 )); shift 2
	until "$@" >/dev/null 2>&1; do
		if [ "$(date +%s)" -ge "$deadline" ]; then
			echo "engines: $desc did not become ready" >&2
			return 1
		fi
		sleep 0.2
	done
}

ctrd_up() { ctr --address "$CTRD_SOCK" version; }
docker_up() { curl -sf --unix-socket /var/run/docker.sock http://localhost/_ping; }

start() {
	if ! ctrd_up >/dev/null 2>&1; then
		echo "engines: starting containerd"
		setsid containerd >"$LOG/containerd.log" 2>&1 </dev/null &
		echo $! >"$RUN/containerd.pid"
		wait_for containerd 60 ctrd_up || { tail -20 "$LOG/containerd.log" >&2; exit 1; }
	fi
	if ! docker_up >/dev/null 2>&1; then
		echo "engines: starting dockerd"
		setsid dockerd --containerd="$CTRD_SOCK" >"$LOG/dockerd.log" 2>&1 </dev/null &
		echo $! >"$RUN/dockerd.pid"
		wait_for dockerd 60 docker_up || { tail -20 "$LOG/dockerd.log" >&2; exit 1; }
	fi
	echo "engines: containerd and dockerd answer"
}

stop_one() {
	local name=$1 pidfile="$RUN/$1.pid" pid
	[ -f "$pidfile" ] || return 0
	pid=$(cat "$pidfile")
	if kill -0 "$pid" 2>/dev/null; then
		echo "engines: stopping $name"
		kill -TERM "$pid" 2>/dev/null || true
		local deadline=$(( $(date +%s) + 30 ))
		while kill -0 "$pid" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.2; done
		kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$pidfile"
}

stop() {
	stop_one dockerd
	stop_one containerd
}

case "${1:-}" in
start) start ;;
stop) stop ;;
*) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
