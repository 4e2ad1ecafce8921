#!/usr/bin/env bash
# dermgate over HTTP/3 vs Caddy over HTTP/3, dermgate h3 vs its own h2, and WebSocket echo
# round trips through dermgate (and Caddy) vs straight to the echo server; in one run.
#
#   benches/load/h3.sh               # as root on Debian; installs caddy, nginx, jq, curl, oha
#
# compare.sh calls it at its end (same CARGO_TARGET_DIR); it also runs on its own.
#
# What it does:
#   1. installs what is missing: apt-get install -y caddy nginx jq curl (Debian 12 has Caddy
#      2.6.2, HTTP/3 by quic-go), and the QUIC load generator: oha built with its `http3`
#      feature (cargo install --locked oha@$OHA_VERSION --features http3 --root
#      $TARGET_DIR/tools; ~10-20 min the first time on 2 cores, then reused). Debian's h2load
#      is built without ngtcp2/nghttp3, so it cannot speak h3; oha's h3 client is quinn + h3,
#      a different QUIC stack from both servers' (dermgate: quinn; Caddy: quic-go) and the
#      same tool drives all h3 and h2 runs, so its own cost is the same on every row.
#   2. builds dermgate and the WebSocket bench binary (benches/src/bin/ws_bench.rs) in release
#      (CARGO_TARGET_DIR / TARGET_DIR honoured, default <repo>/target);
#   3. in a temp dir: dev certificates (dermgate certs dev), ONE shared upstream (plain-HTTP
#      nginx on 127.0.0.1 answering every request with the same 1 KiB body, keepalive), ONE
#      WebSocket echo server (ws_bench echo, plain ws:// on 127.0.0.1), and in front of them:
#        dermgate  h1/h2 on TCP and h3 on UDP of the same port; route "bench" (host localhost,
#                  path /) to the upstream, route "ws" (path /ws, websocket = true) to the echo
#                  server; both public = true, allow_plaintext = true; log level warn; the
#                  per-source request rate limit lifted (one address sends all the load);
#        caddy     the same two routes (reverse_proxy; /ws* to the echo server), protocols h1 h2
#                  h3, TLS 1.3 only with the same certificate, admin off, logs discarded, HSTS
#                  and Forwarded/X-Forwarded-* headers added like dermgate does;
#   4. per round (order flips every other round; a 2 s warm-up before each in the first), oha:
#        h3 dermgate, h3 caddy, h2 dermgate, h2 caddy (h2 caddy is context: Caddy's own h3/h2);
#   5. WebSocket: one connection, WS_MESSAGES messages of WS_SIZE bytes sent one at a time
#      (send, wait for the echo, send the next), timed by ws_bench client: straight to the echo
#      server (ws://), through dermgate over h1 Upgrade and over h2 extended CONNECT (wss://),
#      through Caddy over h1 Upgrade (wss://);
#   6. prints rps, p50, p99, errors and server CPU per request, the ratios dermgate-h3/caddy-h3
#      (goal >= 1.5x rps) and dermgate-h3/dermgate-h2 (goal >= 0.6x rps), and the WebSocket
#      round-trip p50/p99 with the ratio proxied/direct.
#
# Read the RATIOS, not the absolute numbers: on a small machine (2 cores here) oha, the proxy
# under test, the upstream nginx and the echo server all share the same cores, so every figure
# includes the load generator's own cost (oha's QUIC client is far more expensive per request
# than a TCP one) and whatever else runs on the machine (the load average is printed). `cpu/req`
# (CPU time the proxy process used / requests it served) is the least noisy efficiency figure.
# The WebSocket ratio compares a wss:// round trip through the proxy (two TLS records, two
# loopback hops more) with a plain ws:// round trip to the echo server, so it is the whole
# price of putting the proxy in the path, TLS included.
#
# Knobs (environment): ROUNDS=2 DURATION=8 (seconds per load run) H3_CONNS=16 (QUIC or TCP
# connections) H3_STREAMS=8 (concurrent streams per connection) OHA_THREADS=1 SERVER_THREADS=$(nproc)
# UPSTREAM_WORKERS=1 BODY_BYTES=1024 WS_MESSAGES=10000 WS_SIZE=64 OHA=/path/to/oha (skip the
# install) OHA_VERSION=1.16.0 KEEP=1 (keep the temp dir) NO_BUILD=1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TARGET_DIR=${TARGET_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}}
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-8}
H3_CONNS=${H3_CONNS:-16}
H3_STREAMS=${H3_STREAMS:-8}
OHA_THREADS=${OHA_THREADS:-1}
SERVER_THREADS=${SERVER_THREADS:-$(nproc)}
UPSTREAM_WORKERS=${UPSTREAM_WORKERS:-1}
BODY_BYTES=${BODY_BYTES:-1024}
WS_MESSAGES=${WS_MESSAGES:-10000}
WS_SIZE=${WS_SIZE:-64}
OHA_VERSION=${OHA_VERSION:-1.16.0}

log() { printf '[h3] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# ---------------------------------------------------------------- processes and cleanup
WORK=""
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ -n ${KEEP:-} ]]; then
            log "kept $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- 1. tools
missing=()
command -v caddy >/dev/null || missing+=(caddy)
command -v nginx >/dev/null || missing+=(nginx)
command -v jq >/dev/null || missing+=(jq)
command -v curl >/dev/null || missing+=(curl)
if ((${#missing[@]})); then
    [[ $(id -u) == 0 ]] || die "missing ${missing[*]}; run as root or install them"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null ||
        { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
fi
command -v cargo >/dev/null || die "cargo not found"

# oha with HTTP/3: cargo records the features it was installed with in .crates2.json.
OHA_ROOT=$TARGET_DIR/tools
if [[ -z ${OHA:-} ]]; then
    OHA=$OHA_ROOT/bin/oha
    if ! [[ -x $OHA ]] || ! jq -e --arg k "oha $OHA_VERSION " \
        '[.installs | to_entries[] | select(.key | startswith($k)) | .value.features | index("http3")]
         | any(. != null)' "$OHA_ROOT/.crates2.json" >/dev/null 2>&1; then
        log "building oha $OHA_VERSION with HTTP/3 into $OHA_ROOT (once; takes a while)"
        CARGO_TARGET_DIR=$TARGET_DIR cargo install --quiet --locked "oha@$OHA_VERSION" \
            --features http3 --root "$OHA_ROOT" || die "could not build oha with http3"
    fi
fi
[[ -x $OHA ]] || die "$OHA not found"

# ---------------------------------------------------------------- 2. build
DG=$TARGET_DIR/release/dermgate
WSB=$TARGET_DIR/release/ws_bench
if [[ -z ${NO_BUILD:-} ]]; then
    log "building dermgate and ws_bench (release, target dir $TARGET_DIR)"
    (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --quiet \
        -p dermgate -p dermgate-benches --bin dermgate --bin ws_bench)
fi
[[ -x $DG ]] || die "$DG not found"
[[ -x $WSB ]] || die "$WSB not found"

WORK=$(mktemp -d /tmp/dermgate-h3.XXXXXX)

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() { # free on TCP and UDP: Caddy and dermgate use both
    local lo hi p
    read -r lo hi </proc/sys/net/ipv4/ip_local_port_range
    for _ in $(seq 200); do
        p=$((lo + RANDOM % (hi - lo)))
        if [[ -z $(ss -Htuan "( sport = :$p )" 2>/dev/null) ]] && ! listening "$p"; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

wait_port() { # pid port what
    for _ in $(seq 100); do
        listening "$2" && return 0
        kill -0 "$1" 2>/dev/null || die "$3 exited at start"
        sleep 0.1
    done
    die "$3 did not listen on $2"
}

wait_line() { # pid file sed-expression what → first capture
    local got=""
    for _ in $(seq 100); do
        got=$(sed -n "$3" "$2" 2>/dev/null | head -n1)
        [[ -n $got ]] && break
        kill -0 "$1" 2>/dev/null || { cat "$2" >&2; die "$4 exited at start"; }
        sleep 0.1
    done
    [[ -n $got ]] || die "$4 did not report its port"
    echo "$got"
}

# ---------------------------------------------------------------- 3. certificates, upstreams, proxies
"$DG" certs dev --out "$WORK/certs" >/dev/null
CA=$WORK/certs/ca.pem
BODY=$(head -c "$BODY_BYTES" /dev/zero | tr '\0' 'x')

# The shared HTTP upstream: nginx, a fixed body, keepalive.
UP_PORT=$(free_port) || die "no free port"
mkdir -p "$WORK/upstream/tmp"
cat >"$WORK/upstream/nginx.conf" <<EOF
daemon off;
pid $WORK/upstream/nginx.pid;
error_log $WORK/upstream/error.log warn;
worker_processes $UPSTREAM_WORKERS;
user root;
events { worker_connections 4096; }
http {
    access_log off;
    default_type text/plain;
    client_body_temp_path $WORK/upstream/tmp/body;
    proxy_temp_path $WORK/upstream/tmp/proxy;
    fastcgi_temp_path $WORK/upstream/tmp/fastcgi;
    uwsgi_temp_path $WORK/upstream/tmp/uwsgi;
    scgi_temp_path $WORK/upstream/tmp/scgi;
    keepalive_timeout 65s;
    keepalive_requests 100000000;
    server {
        listen 127.0.0.1:$UP_PORT;
        location / { return 200 '$BODY'; }
    }
}
EOF
nginx -p "$WORK/upstream" -c "$WORK/upstream/nginx.conf" -e "$WORK/upstream/error.log" -t -q ||
    die "upstream nginx: bad config"
nginx -p "$WORK/upstream" -c "$WORK/upstream/nginx.conf" -e "$WORK/upstream/error.log" &
UP_PID=$!
PIDS+=("$UP_PID")
wait_port "$UP_PID" "$UP_PORT" "upstream nginx"

# The WebSocket echo server.
"$WSB" echo --listen 127.0.0.1:0 >"$WORK/echo.log" 2>&1 &
ECHO_PID=$!
PIDS+=("$ECHO_PID")
ECHO_PORT=$(wait_line "$ECHO_PID" "$WORK/echo.log" 's|^listening on 127\.0\.0\.1:\([0-9]*\)$|\1|p' "echo server")

# dermgate: TCP and UDP on the same port number.
cat >"$WORK/dermgate.toml" <<EOF
[listen]
addr = "127.0.0.1:0"

[tls]
cert = "certs/server.pem"
key = "certs/server.key"

[[route]]
name = "bench"
host = "localhost"
path = "/"
upstreams = ["http://127.0.0.1:$UP_PORT"]
allow_plaintext = true
public = true

[[route]]
name = "ws"
host = "localhost"
path = "/ws"
upstreams = ["http://127.0.0.1:$ECHO_PORT"]
allow_plaintext = true
public = true
websocket = true

[limits]
# The bench sends hundreds of thousands of requests a minute from one address: lift the
# per-source rate limit (Caddy has none); the limiter itself still runs on every request.
requests_per_minute_per_user = 4294967295
connections_per_source = 100000

[log]
level = "warn"
EOF
"$DG" check --config "$WORK/dermgate.toml" >/dev/null || die "dermgate check failed"
TOKIO_WORKER_THREADS=$SERVER_THREADS "$DG" serve --config "$WORK/dermgate.toml" 2>"$WORK/dermgate.log" &
DG_PID=$!
PIDS+=("$DG_PID")
DG_PORT=$(wait_line "$DG_PID" "$WORK/dermgate.log" \
    's|^dermgate listening on https://127\.0\.0\.1:\([0-9]*\) (tcp)$|\1|p' dermgate)
grep -q "^dermgate listening on https://127\.0\.0\.1:$DG_PORT (udp, h3)$" "$WORK/dermgate.log" ||
    die "dermgate did not open its h3 endpoint on udp :$DG_PORT"

# Caddy: HTTP/3-enabled TLS 1.3 reverse proxy to the same upstream and echo server.
CADDY_PORT=$(free_port) || die "no free port"
mkdir -p "$WORK/caddy/data" "$WORK/caddy/config"
cat >"$WORK/caddy/Caddyfile" <<EOF
{
	admin off
	auto_https off
	storage file_system $WORK/caddy/data
	log {
		output discard
	}
	servers {
		protocols h1 h2 h3
	}
}

https://localhost:$CADDY_PORT {
	bind 127.0.0.1
	tls $WORK/certs/server.pem $WORK/certs/server.key {
		protocols tls1.3
	}
	header Strict-Transport-Security "max-age=31536000; includeSubDomains"
	handle /ws* {
		reverse_proxy 127.0.0.1:$ECHO_PORT
	}
	handle {
		reverse_proxy 127.0.0.1:$UP_PORT {
			header_up Forwarded "for={remote_host};proto=https;host={host}"
		}
	}
}
EOF
export XDG_DATA_HOME=$WORK/caddy/data XDG_CONFIG_HOME=$WORK/caddy/config
caddy validate --adapter caddyfile --config "$WORK/caddy/Caddyfile" >"$WORK/caddy/validate.log" 2>&1 ||
    { cat "$WORK/caddy/validate.log" >&2; die "caddy: bad config"; }
GOMAXPROCS=$SERVER_THREADS caddy run --adapter caddyfile --config "$WORK/caddy/Caddyfile" \
    >"$WORK/caddy/caddy.log" 2>&1 &
CADDY_PID=$!
PIDS+=("$CADDY_PID")
wait_port "$CADDY_PID" "$CADDY_PORT" caddy
CADDY_VERSION=$(caddy version | awk '{print $1}')

# ---------------------------------------------------------------- checks
oha_json() { # out-file oha-args… : one oha run, JSON summary into out-file
    local out=$1
    shift
    "$OHA" --no-tui --output-format json --ipv4 --cacert "$CA" --worker-threads "$OHA_THREADS" \
        "$@" >"$out" 2>"$out.err" || { cat "$out.err" >&2; die "oha $* failed"; }
}

# Both answer 200 with the body on h3 and h2, TLS 1.3 only; both serve h3 on UDP of their port.
for target in "dermgate $DG_PORT" "caddy $CADDY_PORT"; do
    set -- $target
    for v in 3 2; do
        oha_json "$WORK/check-$1-h$v.json" -n 20 -c 1 "--http-version=$v" "https://localhost:$2/"
        got=$(jq -r '[(.statusCodeDistribution["200"] // 0), (.summary.sizePerRequest // 0)] | @tsv' \
            "$WORK/check-$1-h$v.json")
        [[ $got == "20	$BODY_BYTES" ]] ||
            die "$1 h$v: expected 20 x 200 with $BODY_BYTES bytes, got '$got' $(jq -c .errorDistribution "$WORK/check-$1-h$v.json")"
    done
    curl -sS --cacert "$CA" --tlsv1.3 --http2 -o /dev/null -D "$WORK/headers-$1.txt" "https://localhost:$2/"
    grep -qi '^alt-svc: .*h3=' "$WORK/headers-$1.txt" || die "$1: no Alt-Svc h3 on TCP responses"
    if curl -s --cacert "$CA" --tlsv1.2 --tls-max 1.2 -o /dev/null "https://localhost:$2/"; then
        die "$1 accepted TLS 1.2"
    fi
done

# ---------------------------------------------------------------- 4. load
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { # pid: utime+stime of the process (all its threads)
    local f
    f=$(cut -d' ' -f14,15 "/proc/$1/stat" 2>/dev/null) || {
        echo 0
        return
    }
    echo $((${f% *} + ${f#* }))
}

RESULTS=$WORK/results.txt
: >"$RESULTS"

run_load() { # proto(h2|h3) server port pid round
    local v=${1#h} out=$WORK/oha-$1-$2-$5.json before after
    if (($5 == 1)); then
        oha_json "$out.warm" -z 2s -c "$H3_CONNS" -p "$H3_STREAMS" "--http-version=$v" "https://localhost:$3/"
    fi
    before=$(cpu_ticks "$4")
    oha_json "$out" -z "${DURATION}s" -c "$H3_CONNS" -p "$H3_STREAMS" "--http-version=$v" "https://localhost:$3/"
    after=$(cpu_ticks "$4")
    # rps counts 200s only; errors are everything else (other statuses and transport errors),
    # except the requests oha itself cut off when the duration ran out. rps is over DURATION, not
    # oha's summary.total: after the deadline oha's h3 client sends GOAWAY and waits for the
    # server to close the connection, which quic-go in Caddy 2.6 only does at its QUIC idle
    # timeout (30 s, not configurable from the Caddyfile), so summary.total would charge Caddy
    # for an idle wait after the measured window. That wait costs wall time only (~30 s per
    # Caddy h3 run), which is why warm-ups run in the first round only.
    jq -r --arg p "$1" --arg s "$2" --arg r "$5" --argjson ticks $((after - before)) --argjson hz "$CLK_TCK" \
        --argjson dur "$DURATION" '
        (.statusCodeDistribution["200"] // 0) as $ok
        | (([.statusCodeDistribution | to_entries[] | .value] | add // 0) - $ok
           + ([.errorDistribution | to_entries[] | select(.key != "aborted due to deadline") | .value]
              | add // 0)) as $err
        | [$p, $s, $r, ($ok / $dur), .metrics.latency_ms.p50, .metrics.latency_ms.p99, $err,
           (if $ok > 0 then $ticks * 1000000 / $hz / $ok else 0 end)]
        | @tsv' "$out" >>"$RESULTS"
}

LOAD_START=$(cut -d' ' -f1 /proc/loadavg)
log "dermgate on :$DG_PORT tcp+udp (TOKIO_WORKER_THREADS=$SERVER_THREADS), caddy $CADDY_VERSION on" \
    ":$CADDY_PORT tcp+udp (GOMAXPROCS=$SERVER_THREADS), upstream nginx :$UP_PORT, echo :$ECHO_PORT"
for round in $(seq "$ROUNDS"); do
    if ((round % 2)); then order=("dermgate $DG_PORT $DG_PID" "caddy $CADDY_PORT $CADDY_PID"); else
        order=("caddy $CADDY_PORT $CADDY_PID" "dermgate $DG_PORT $DG_PID"); fi
    for proto in h3 h2; do
        for target in "${order[@]}"; do
            set -- $target
            log "round $round/$ROUNDS: $proto against $1"
            run_load "$proto" "$1" "$2" "$3" "$round"
        done
    done
done

# ---------------------------------------------------------------- 5. WebSocket round trips
WS_RESULTS=$WORK/ws.txt
: >"$WS_RESULTS"
ws_run() { # label ws_bench-client-args…
    local label=$1 line
    shift
    line=$("$WSB" client --messages "$WS_MESSAGES" --size "$WS_SIZE" --ca "$CA" "$@") ||
        die "ws_bench client $label failed"
    echo "$label $line" >>"$WS_RESULTS"
}
ws_paths=("direct --mode direct --addr 127.0.0.1:$ECHO_PORT"
    "dermgate-h1 --mode h1 --addr 127.0.0.1:$DG_PORT"
    "dermgate-h2 --mode h2 --addr 127.0.0.1:$DG_PORT"
    "caddy-h1 --mode h1 --addr 127.0.0.1:$CADDY_PORT")
for round in $(seq "$ROUNDS"); do
    log "round $round/$ROUNDS: WebSocket, $WS_MESSAGES sequential round trips of $WS_SIZE bytes"
    # Rotate the order each round so no path always runs first (or last).
    for i in $(seq 0 $((${#ws_paths[@]} - 1))); do
        # shellcheck disable=SC2086 # the entries are word lists
        ws_run ${ws_paths[$(((i + round - 1) % ${#ws_paths[@]}))]}
    done
done

kill -0 "$DG_PID" 2>/dev/null || die "dermgate died during the run"
kill -0 "$CADDY_PID" 2>/dev/null || die "caddy died during the run"

# ---------------------------------------------------------------- 6. report
echo
echo "HTTP/3: dermgate vs caddy $CADDY_VERSION, and dermgate h3 vs h2: $(nproc) cores shared by oha," \
    "proxy, upstream nginx and echo server; server threads $SERVER_THREADS each;" \
    "${BODY_BYTES}-byte responses; mean of $ROUNDS round(s)"
echo "load average before/after: $LOAD_START/$(cut -d' ' -f1 /proc/loadavg) (anything else running on the machine makes these numbers noisy)"
echo "oha $OHA_VERSION (quinn+h3 client for h3, hyper for h2): -z ${DURATION}s -c $H3_CONNS -p $H3_STREAMS" \
    "--worker-threads $OHA_THREADS (c x p = $((H3_CONNS * H3_STREAMS)) requests in flight)"
echo
awk -F'\t' '
    { k = $1 " " $2; n[k]++; rps[k] += $4; p50[k] += $5; p99[k] += $6; err[k] += $7; cpu[k] += $8 }
    function row(p, s,   k) {
        k = p " " s
        if (!(k in n)) return
        printf "%-5s %-9s %12.0f %10.3f %10.3f %8d %12.1f\n", p, s, rps[k]/n[k], p50[k]/n[k], p99[k]/n[k], err[k], cpu[k]/n[k]
    }
    function m(p, s) { k = p " " s; return (k in n) ? rps[k]/n[k] : 0 }
    function c(p, s) { k = p " " s; return (k in n) ? cpu[k]/n[k] : 0 }
    function q(p, s) { k = p " " s; return (k in n) ? p99[k]/n[k] : 0 }
    END {
        printf "%-5s %-9s %12s %10s %10s %8s %12s\n", "proto", "server", "rps", "p50 ms", "p99 ms", "errors", "cpu us/req"
        row("h3", "dermgate"); row("h3", "caddy"); row("h2", "dermgate"); row("h2", "caddy")
        print ""
        r = (m("h3", "caddy") > 0) ? m("h3", "dermgate") / m("h3", "caddy") : 0
        rc = (c("h3", "caddy") > 0) ? c("h3", "dermgate") / c("h3", "caddy") : 0
        r99 = (q("h3", "caddy") > 0) ? q("h3", "dermgate") / q("h3", "caddy") : 0
        printf "dermgate-h3 / caddy-h3     rps %5.2fx  p99 %5.2fx  cpu/req %5.2fx   rps goal >= 1.50x: %s\n", r, r99, rc, (r >= 1.5 ? "MET" : "MISSED")
        r = (m("h2", "dermgate") > 0) ? m("h3", "dermgate") / m("h2", "dermgate") : 0
        rc = (c("h2", "dermgate") > 0) ? c("h3", "dermgate") / c("h2", "dermgate") : 0
        r99 = (q("h2", "dermgate") > 0) ? q("h3", "dermgate") / q("h2", "dermgate") : 0
        printf "dermgate-h3 / dermgate-h2  rps %5.2fx  p99 %5.2fx  cpu/req %5.2fx   rps goal >= 0.60x: %s\n", r, r99, rc, (r >= 0.6 ? "MET" : "MISSED")
        r = (m("h2", "caddy") > 0) ? m("h3", "caddy") / m("h2", "caddy") : 0
        printf "caddy-h3 / caddy-h2        rps %5.2fx  (context: the same ratio for the reference)\n", r
    }' "$RESULTS"
echo
echo "Per round:"
awk -F'\t' '{ printf "  round %s %s %-9s rps %8.0f  p50 %7.3f ms  p99 %7.3f ms  errors %d  cpu %.1f us/req\n", $3, $1, $2, $4, $5, $6, $7, $8 }' \
    "$RESULTS" | sort -k2,2n -k3,3r -k4,4
echo
echo "WebSocket echo round trip: one connection, $WS_MESSAGES messages of $WS_SIZE bytes, one at a time" \
    "(direct = plain ws:// to the echo server; the others wss:// through the proxy); mean of $ROUNDS round(s)"
awk '
    { for (i = 2; i <= NF; i++) { split($i, kv, "="); v[$1, kv[1]] += kv[2] }; cnt[$1]++ }
    END {
        b50 = v["direct", "p50_us"] / cnt["direct"]; b99 = v["direct", "p99_us"] / cnt["direct"]
        printf "%-12s %10s %10s %10s %10s %12s %12s\n", "path", "mean us", "p50 us", "p90 us", "p99 us", "p50/direct", "p99/direct"
        split("direct dermgate-h1 dermgate-h2 caddy-h1", names, " ")
        for (i = 1; i <= 4; i++) {
            l = names[i]; if (!(l in cnt)) continue; c = cnt[l]
            printf "%-12s %10.1f %10.1f %10.1f %10.1f %11.2fx %11.2fx\n", l, v[l, "mean_us"]/c, v[l, "p50_us"]/c,
                v[l, "p90_us"]/c, v[l, "p99_us"]/c, (v[l, "p50_us"]/c)/b50, (v[l, "p99_us"]/c)/b99
        }
        if (("dermgate-h1" in cnt) && ("caddy-h1" in cnt))
            printf "dermgate-h1 / caddy-h1 p99: %.2fx\n", v["dermgate-h1", "p99_us"] / v["caddy-h1", "p99_us"]
    }' "$WS_RESULTS"
