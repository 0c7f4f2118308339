#!/usr/bin/env bash
# `make run`: the demo HTTP upstream on 127.0.0.1:8081 behind shardproxy on
# conf/shardproxy.json (127.0.0.1:8080 -> 127.0.0.1:8081, admin 127.0.0.1:9901).
#
#   ./tests/demo/run-demo.sh BUILD_DIR      # e.g. build, or build/san
#
# Both programs run in their own sessions, so the terminal's Ctrl-C reaches
# only this script: it passes exactly one SIGINT to the proxy (which drains
# and exits 0; a second Ctrl-C makes it stop at once), and stops the upstream
# only after the proxy is gone, so draining connections still have a server.
set -euo pipefail

BUILD=${1:-build}
cd "$(dirname "$0")/../.."

CONF=conf/shardproxy.json
UPSTREAM=127.0.0.1:8081
PROXY_LISTEN=127.0.0.1:8080
ADMIN=127.0.0.1:9901

say() { printf 'run-demo: %s\n' "$*" >&2; }

for bin in demo-upstream shardproxy; do
    if [[ ! -x $BUILD/$bin ]]; then
        say "$BUILD/$bin not found; build it first (make all)"
        exit 1
    fi
done

# Is something listening on this port (any address, so 0.0.0.0:P counts too)?
port_owner() {
    local port=$1
    if command -v ss >/dev/null 2>&1; then
        ss -Hltnp "( sport = :$port )" 2>/dev/null | head -n 3
    elif (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "(something accepts connections on 127.0.0.1:$port)"
    fi
}

busy=0
for spec in "${UPSTREAM##*:}:the demo upstream ($UPSTREAM)" \
            "${PROXY_LISTEN##*:}:the proxy's listener ($PROXY_LISTEN, $CONF)" \
            "${ADMIN##*:}:the proxy's admin endpoint ($ADMIN, $CONF)"; do
    port=${spec%%:*}
    owner=$(port_owner "$port")
    if [[ -n $owner ]]; then
        say "port $port, needed by ${spec#*:}, is already in use:"
        printf '    %s\n' "$owner" >&2
        busy=1
    fi
done
if ((busy)); then
    say "stop whatever holds it (an earlier 'make run'?) and try again"
    exit 1
fi

UPSTREAM_PID=
PROXY_PID=
SIGNALS=0

cleanup() {
    local rc=$?
    trap - INT TERM HUP
    if [[ -n $PROXY_PID ]] && kill -0 "$PROXY_PID" 2>/dev/null; then
        kill -TERM "$PROXY_PID" 2>/dev/null || true
        wait "$PROXY_PID" 2>/dev/null || true
    fi
    if [[ -n $UPSTREAM_PID ]] && kill -0 "$UPSTREAM_PID" 2>/dev/null; then
        kill -TERM "$UPSTREAM_PID" 2>/dev/null || true
        wait "$UPSTREAM_PID" 2>/dev/null || true
    fi
    exit "$rc"
}
trap cleanup EXIT

# One terminal signal -> one signal to the proxy's supervisor.
forward() {
    SIGNALS=$((SIGNALS + 1))
    if [[ -n $PROXY_PID ]] && kill -0 "$PROXY_PID" 2>/dev/null; then
        kill -"$1" "$PROXY_PID" 2>/dev/null || true
    else
        exit 130
    fi
}
trap 'forward INT' INT
trap 'forward TERM' TERM HUP

setsid "$BUILD/demo-upstream" -l "$UPSTREAM" </dev/null &
UPSTREAM_PID=$!
up=0
for _ in $(seq 100); do
    if ! kill -0 "$UPSTREAM_PID" 2>/dev/null; then
        break
    fi
    if (exec 3<>"/dev/tcp/${UPSTREAM%:*}/${UPSTREAM##*:}") 2>/dev/null; then
        up=1
        break
    fi
    sleep 0.05
done
if ((!up)); then
    say "demo upstream did not start on $UPSTREAM (see its message above)"
    exit 1
fi

echo
echo "try: curl http://$PROXY_LISTEN/   stats: curl http://$ADMIN/stats   stop: Ctrl-C"
echo

# env: a background job of a script starts with SIGINT ignored; undo that.
setsid env --default-signal=INT "$BUILD/shardproxy" -c "$CONF" </dev/null &
PROXY_PID=$!

# wait returns early when a trapped signal arrives: keep waiting while the
# proxy drains, and take its exit status only from a wait that really ended.
status=0
while :; do
    seen=$SIGNALS
    if wait "$PROXY_PID"; then status=0; else status=$?; fi
    [[ $SIGNALS == "$seen" ]] && break
    kill -0 "$PROXY_PID" 2>/dev/null && continue
    # it ended just as a signal came in: bash kept its status for us
    if wait "$PROXY_PID" 2>/dev/null; then status=0; else
        s=$?
        ((s == 127)) || status=$s
    fi
    break
done
PROXY_PID=
if ((status == 0)); then
    say "proxy stopped; stopping the demo upstream"
else
    say "proxy exited with status $status"
fi
exit "$status"
