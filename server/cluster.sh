#!/usr/bin/env bash
# Start, inspect and stop a local kvdisco cluster of N nodes on loopback.
#
#   server/cluster.sh [start] [N]   start nodes n1..nN (default N=3, at most 9)
#   server/cluster.sh status        show which nodes are running
#   server/cluster.sh stop          stop the nodes this script started
#
# Node nI: client API http://127.0.0.1:(23790+I), peer port http://127.0.0.1:(23800+I),
# data dir ./kvdisco-cluster/nI, log ./kvdisco-cluster/nI.log, pid ./kvdisco-cluster/nI.pid.
# Paths are relative to the current directory. Data is kept between runs: starting again
# restarts the same members from their data dirs; `rm -rf kvdisco-cluster` starts over.
#
# Environment: KVDISCO (the kvdisco executable; default .venv/bin/kvdisco if present, else kvdisco
# on PATH), CLUSTER_DIR (default ./kvdisco-cluster), LOG_FORMAT (text or json, default text).
set -euo pipefail

CLUSTER_DIR=${CLUSTER_DIR:-./kvdisco-cluster}
LOG_FORMAT=${LOG_FORMAT:-text}
N_MAX=9                 # ports 23791..23799 and 23801..23809 must not overlap
CLIENT_PORT_BASE=23790
PEER_PORT_BASE=23800
START_WAIT_S=10         # how long `start` waits for each node's /livez

if [ -z "${KVDISCO:-}" ]; then
    if [ -x .venv/bin/kvdisco ]; then KVDISCO=.venv/bin/kvdisco; else KVDISCO=kvdisco; fi
fi

die() { echo "cluster.sh: $*" >&2; exit 1; }

# is_ours PIDFILE: true if the pid in PIDFILE is alive and is a kvdisco process.
is_ours() {
    local pid
    [ -f "$1" ] || return 1
    pid=$(cat "$1")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'kvdisco.* serve'
}

start() {
    local n=${1:-3} i name initial=""
    if ! [[ "$n" =~ ^[0-9]+$ ]] || [ "$n" -lt 1 ] || [ "$n" -gt "$N_MAX" ]; then
        die "N must be 1..$N_MAX, got '$n'"
    fi
    command -v "$KVDISCO" >/dev/null 2>&1 || die "no kvdisco executable '$KVDISCO' (run 'make install' first)"
    mkdir -p "$CLUSTER_DIR"

    for i in $(seq 1 "$n"); do
        initial+="${initial:+,}n$i=http://127.0.0.1:$((PEER_PORT_BASE + i))"
    done

    for i in $(seq 1 "$n"); do
        name=n$i
        if is_ours "$CLUSTER_DIR/$name.pid"; then
            echo "$name already running (pid $(cat "$CLUSTER_DIR/$name.pid"))"
            continue
        fi
        nohup "$KVDISCO" serve \
            --name "$name" \
            --data-dir "$CLUSTER_DIR/$name" \
            --listen-client-urls "http://127.0.0.1:$((CLIENT_PORT_BASE + i))" \
            --listen-peer-urls "http://127.0.0.1:$((PEER_PORT_BASE + i))" \
            --initial-cluster "$initial" \
            --initial-cluster-state new \
            --log-format "$LOG_FORMAT" \
            >>"$CLUSTER_DIR/$name.log" 2>&1 </dev/null &
        echo $! >"$CLUSTER_DIR/$name.pid"
        echo "$name started (pid $!): client http://127.0.0.1:$((CLIENT_PORT_BASE + i)), log $CLUSTER_DIR/$name.log"
    done

    command -v curl >/dev/null 2>&1 || return 0
    for i in $(seq 1 "$n"); do
        local url="http://127.0.0.1:$((CLIENT_PORT_BASE + i))/livez" tries=$((START_WAIT_S * 10))
        until curl -fsS -o /dev/null "$url" 2>/dev/null; do
            tries=$((tries - 1))
            if [ "$tries" -le 0 ] || ! is_ours "$CLUSTER_DIR/n$i.pid"; then
                echo "n$i is not answering $url; last lines of its log:" >&2
                tail -n 20 "$CLUSTER_DIR/n$i.log" >&2 || true
                return 1
            fi
            sleep 0.1
        done
    done
    echo "all $n nodes answer /livez"
}

status() {
    local f name found=0
    for f in "$CLUSTER_DIR"/n*.pid; do
        [ -e "$f" ] || continue
        found=1
        name=$(basename "$f" .pid)
        if is_ours "$f"; then echo "$name running (pid $(cat "$f"))"; else echo "$name stopped"; fi
    done
    [ "$found" -eq 1 ] || echo "no nodes started from $CLUSTER_DIR"
}

stop() {
    local f pid name pending=()
    for f in "$CLUSTER_DIR"/n*.pid; do
        [ -e "$f" ] || continue
        name=$(basename "$f" .pid)
        if is_ours "$f"; then
            pid=$(cat "$f")
            kill -TERM "$pid"
            pending+=("$pid:$f:$name")
        else
            rm -f "$f"
        fi
    done
    local entry tries
    for entry in "${pending[@]+"${pending[@]}"}"; do
        IFS=: read -r pid f name <<<"$entry"
        tries=100   # 10 s for a clean shutdown, then SIGKILL
        while kill -0 "$pid" 2>/dev/null && [ "$tries" -gt 0 ]; do sleep 0.1; tries=$((tries - 1)); done
        if kill -0 "$pid" 2>/dev/null; then
            echo "$name did not stop in 10 s; sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$f"
        echo "$name stopped"
    done
}

cmd=${1:-start}
case "$cmd" in
    start) shift || true; start "${1:-3}" ;;
    stop) stop ;;
    status) status ;;
    [0-9]*) start "$cmd" ;;
    -h | --help | help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" ;;
    *) die "unknown command '$cmd' (start [N] | status | stop)" ;;
esac
