#!/usr/bin/env bash
# dermgate vs nginx: the same HTTPS load, h1 and h2, against both, in one run.
#
#   benches/load/compare.sh            # as root on Debian; installs nginx, wrk, h2load, curl if missing
#
# What it does:
#   1. installs what is missing (apt-get install -y nginx wrk nghttp2-client curl);
#   2. builds dermgate (cargo build --release -p dermgate; CARGO_TARGET_DIR is honoured,
#      default <repo>/target);
#   3. in a temp dir: dev certificates (dermgate certs dev), ONE shared upstream (a plain-HTTP
#      nginx on 127.0.0.1 answering every request with a fixed 1 KiB body, keepalive), and in
#      front of it, each on its own loopback port:
#        nginx     TLS 1.3 only, h2 + http/1.1, proxy_pass to the upstream through an
#                  `upstream { keepalive 64; }` block, HTTP/1.1 with keepalive, access_log off,
#                  the same request headers dermgate adds (Host, X-Forwarded-*, Forwarded) and
#                  HSTS on responses, so both do the same work;
#        dermgate  one route, host localhost, path /, public = true, allow_plaintext = true,
#                  upstream http://127.0.0.1:PORT, log level warn;
#        dermgate-audit  the same public route with [audit] sync = "batch" (issue 7: <= 5% fewer rps);
#        dermgate-session  the same route, protected: [oidc] + embedded [store] + a policy that
#                  needs the `clinicians` group and MFA; every request carries a session cookie
#                  made beforehand by benches' `mint_session` (identify, session read, policy,
#                  assertion signing all run per request); issue 5's goal: >= 1.0x nginx;
#   4. per round, back to back: wrk (h1) against nginx then dermgate, h2load (h2) against nginx
#      then dermgate (the order flips every other round), each after a short warm-up;
#   5. prints rps, p50, p99, errors and server CPU per request for each, and the ratios
#      dermgate/nginx. The goal (issue 3): dermgate rps >= 1.1x nginx, p99 <= nginx's.
#
# Fairness: both proxies get SERVER_THREADS threads of work: nginx `worker_processes
# SERVER_THREADS`, dermgate TOKIO_WORKER_THREADS=SERVER_THREADS (its tokio runtime's worker
# threads; the default for both is the number of cores). Both use the same certificate (ECDSA
# P-256 from `certs dev`), the same upstream, the same clients and the same URL
# (https://localhost:PORT/: SNI and Host are `localhost`).
#
# Read the RATIOS, not the absolute numbers: on a small machine (2 cores here) the load
# generator, the proxy under test and the upstream all share the same cores, so every number
# includes the load generator's own cost and the scheduler's mood. The `cpu/req` column (CPU
# time the proxy process used, divided by requests served) is the least noisy efficiency figure.
#
# Knobs (environment): ROUNDS=2 DURATION=10 (wrk seconds) CONNS=64 WRK_THREADS=1
# H2_REQUESTS=200000 H2_CLIENTS=16 H2_STREAMS=10 H2_THREADS=1 SERVER_THREADS=$(nproc)
# UPSTREAM_WORKERS=1 BODY_BYTES=1024 KEEP=1 (keep the temp dir) NO_BUILD=1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
WRK_THREADS=${WRK_THREADS:-1}
H2_REQUESTS=${H2_REQUESTS:-200000}
H2_CLIENTS=${H2_CLIENTS:-16}
H2_STREAMS=${H2_STREAMS:-10}
H2_THREADS=${H2_THREADS:-1}
SERVER_THREADS=${SERVER_THREADS:-$(nproc)}
UPSTREAM_WORKERS=${UPSTREAM_WORKERS:-1}
BODY_BYTES=${BODY_BYTES:-1024}

log() { printf '[compare] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# ---------------------------------------------------------------- 1. tools
missing=()
command -v nginx >/dev/null || missing+=(nginx)
command -v wrk >/dev/null || missing+=(wrk)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v curl >/dev/null || missing+=(curl)
if ((${#missing[@]})); then
    [[ $(id -u) == 0 ]] || die "missing ${missing[*]}; run as root or install them"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null ||
        { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
fi
command -v cargo >/dev/null || die "cargo not found"

# ---------------------------------------------------------------- 2. build
DG=$TARGET_DIR/release/dermgate
if [[ -z ${NO_BUILD:-} ]]; then
    log "building dermgate (release, target dir $TARGET_DIR)"
    (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --quiet -p dermgate)
    (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --quiet -p dermgate-benches --bin mint_session)
fi
[[ -x $DG ]] || die "$DG not found"
MINT=$TARGET_DIR/release/mint_session
[[ -x $MINT ]] || die "$MINT not found"

# ---------------------------------------------------------------- processes and cleanup
WORK=$(mktemp -d /tmp/dermgate-compare.XXXXXX)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n ${KEEP:-} ]]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
    local lo hi p
    read -r lo hi </proc/sys/net/ipv4/ip_local_port_range
    for _ in $(seq 200); do
        p=$((lo + RANDOM % (hi - lo)))
        if [[ -z $(ss -Htan "( sport = :$p )" 2>/dev/null) ]] && ! listening "$p"; then
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

# nginx >= 1.25.1 spells HTTP/2 `http2 on;`; older ones (Debian 12 has 1.22) `listen ... http2`.
NGINX_VERSION=$(nginx -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')
if [[ $(printf '%s\n1.25.1\n' "$NGINX_VERSION" | sort -V | head -n1) == 1.25.1 ]]; then
    H2_LISTEN="" H2_DIRECTIVE="http2 on;"
else
    H2_LISTEN=" http2" H2_DIRECTIVE=""
fi

start_nginx() { # name conf-body → pid in NGINX_PID
    local dir=$WORK/$1
    mkdir -p "$dir/tmp"
    cat >"$dir/nginx.conf" <<EOF
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
$2
EOF
    nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" -t -q || die "nginx $1: bad config"
    nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
}

nginx_http_common() { # dir
    cat <<EOF
    access_log off;
    default_type text/plain;
    client_body_temp_path $1/tmp/body;
    proxy_temp_path $1/tmp/proxy;
    fastcgi_temp_path $1/tmp/fastcgi;
    uwsgi_temp_path $1/tmp/uwsgi;
    scgi_temp_path $1/tmp/scgi;
    keepalive_timeout 65s;
    keepalive_requests 100000000;
EOF
}

# ---------------------------------------------------------------- 3. certificates, upstream, proxies
"$DG" certs dev --out "$WORK/certs" >/dev/null
BODY=$(head -c "$BODY_BYTES" /dev/zero | tr '\0' 'x')

UP_PORT=$(free_port) || die "no free port"
start_nginx upstream "worker_processes $UPSTREAM_WORKERS;
user root;
events { worker_connections 4096; }
http {
$(nginx_http_common "$WORK/upstream")
    server {
        listen 127.0.0.1:$UP_PORT;
        location / { return 200 '$BODY'; }
    }
}"
UP_PID=$NGINX_PID
wait_port "$UP_PID" "$UP_PORT" "upstream nginx"

NGX_PORT=$(free_port) || die "no free port"
start_nginx proxy "worker_processes $SERVER_THREADS;
user root;
events { worker_connections 4096; }
http {
$(nginx_http_common "$WORK/proxy")
    upstream shared_upstream {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$NGX_PORT ssl$H2_LISTEN;
        $H2_DIRECTIVE
        server_name localhost;
        ssl_certificate $WORK/certs/server.pem;
        ssl_certificate_key $WORK/certs/server.key;
        ssl_protocols TLSv1.3;
        location / {
            proxy_pass http://shared_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto https;
            proxy_set_header Forwarded \"for=\$remote_addr;proto=https;host=\$host\";
            add_header Strict-Transport-Security \"max-age=31536000; includeSubDomains\" always;
        }
    }
}"
NGX_PID=$NGINX_PID
wait_port "$NGX_PID" "$NGX_PORT" "nginx proxy"

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

# No limit may shape the load: nginx has none. The limiter still runs, and its cost is counted.
[limits]
requests_per_minute_per_user = 4000000000
connections_per_source = 100000

[log]
level = "warn"
EOF
# Starts `dermgate serve --config $2` as $1 (log $WORK/$1.log); sets STARTED_PID and STARTED_PORT.
start_dermgate() {
    local log=$WORK/$1.log
    "$DG" check --config "$2" >/dev/null 2>&1 || { "$DG" check --config "$2" >&2; die "$1: dermgate check failed"; }
    TOKIO_WORKER_THREADS=$SERVER_THREADS "$DG" serve --config "$2" 2>"$log" &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    STARTED_PORT=""
    for _ in $(seq 100); do
        STARTED_PORT=$(sed -n 's|^dermgate listening on https://127\.0\.0\.1:\([0-9]*\) (tcp).*|\1|p' "$log" | head -n1)
        [[ -n $STARTED_PORT ]] && return 0
        kill -0 "$STARTED_PID" 2>/dev/null || { cat "$log" >&2; die "$1 exited at start"; }
        sleep 0.1
    done
    die "$1 did not report its port"
}
start_dermgate dermgate "$WORK/dermgate.toml"
DG_PID=$STARTED_PID DG_PORT=$STARTED_PORT

# The same public route with the audit trail on (sync = "batch": a decision and a complete
# record per request, hash-chained, group-committed with fsync every 50 ms); issue 7's goal:
# rps at most 5% below the same route with audit off.
mkdir -p "$WORK/audit"
sed -e 's|"certs/|"../certs/|' "$WORK/dermgate.toml" >"$WORK/audit/dermgate.toml"
printf '%s\n' '' '[audit]' 'file = "audit/audit.jsonl"' 'sync = "batch"' '[keys]' 'dir = "keys"' \
    >>"$WORK/audit/dermgate.toml"
start_dermgate dermgate-audit "$WORK/audit/dermgate.toml"
DA_PID=$STARTED_PID DA_PORT=$STARTED_PORT

# The same route behind sign-in: a session cookie minted into the embedded store first.
mkdir -p "$WORK/session"
echo "bench-secret" >"$WORK/session/client-secret"
printf '[[rule]]\nname = "clinicians"\neffect = "allow"\nroutes = ["bench"]\ngroups = ["clinicians"]\nmfa_max_age = "12h"\n' \
    >"$WORK/session/policy.toml"
sed -e 's|^public = true$||' -e 's|"certs/|"../certs/|' "$WORK/dermgate.toml" >"$WORK/session/dermgate.toml"
printf '%s\n' '' '[oidc]' 'issuer = "https://127.0.0.1:9"' 'client_id = "bench"' \
    'client_secret_file = "client-secret"' 'callback = "https://localhost/.dermgate/callback"' \
    '[keys]' 'dir = "keys"' '[store]' 'kind = "embedded"' 'path = "state"' '[policy]' 'file = "policy.toml"' \
    >>"$WORK/session/dermgate.toml"
COOKIE="__Host-dermgate=$("$MINT" --config "$WORK/session/dermgate.toml" 2>/dev/null)" || die "mint_session failed"
start_dermgate dermgate-session "$WORK/session/dermgate.toml"
DS_PID=$STARTED_PID DS_PORT=$STARTED_PORT
# Without the cookie it must refuse; with it, serve.
code=$(curl -sS --cacert "$WORK/certs/ca.pem" -o /dev/null -w '%{http_code}' "https://localhost:$DS_PORT/")
[[ $code == 401 ]] || die "dermgate (session) without a cookie: expected 401, got $code"
hdr() { if [[ $1 == dermgate-session ]]; then echo "Cookie: $COOKIE"; else echo "X-Bench: 1"; fi; }

# All answer the same thing, over TLS 1.3, on h1 and h2.
for target in "nginx $NGX_PORT" "dermgate $DG_PORT" "dermgate-audit $DA_PORT" "dermgate-session $DS_PORT"; do
    set -- $target
    for v in --http1.1 --http2; do
        got=$(curl -sS --cacert "$WORK/certs/ca.pem" --tlsv1.3 "$v" -o /dev/null -H "$(hdr "$1")" \
            -w '%{http_code} %{size_download} %{http_version}' "https://localhost:$2/")
        [[ $got == "200 $BODY_BYTES "* ]] || die "$1 $v: expected 200 with $BODY_BYTES bytes, got $got"
    done
    if curl -s --cacert "$WORK/certs/ca.pem" --tlsv1.2 --tls-max 1.2 -o /dev/null "https://localhost:$2/"; then
        die "$1 accepted TLS 1.2"
    fi
done

# ---------------------------------------------------------------- 4. load
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { # pid: utime+stime of the process and its children threads / worker processes
    local total=0 p f
    for p in "$1" $(pgrep -P "$1" || true); do
        f=$(cut -d' ' -f14,15 "/proc/$p/stat" 2>/dev/null) || continue
        total=$((total + ${f% *} + ${f#* }))
    done
    echo "$total"
}

cpu_per_req() { # ticks requests → microseconds of CPU per request
    awk -v t="$1" -v r="$2" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", (r > 0) ? t * 1000000 / hz / r : 0 }'
}

RESULTS=$WORK/results.txt
: >"$RESULTS"

to_ms() { # wrk latency like 812.00us, 1.23ms, 1.01s
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n *= 1; else if (v ~ /m$/) n *= 60000; else if (v ~ /s$/) n *= 1000
        printf "%.3f", n }'
}

run_h1() { # server port pid round
    local out=$WORK/wrk-$1-$4.txt before after
    wrk -t"$WRK_THREADS" -c"$CONNS" -d2s -H "$(hdr "$1")" "https://localhost:$2/" >/dev/null # warm-up
    before=$(cpu_ticks "$3")
    wrk -t"$WRK_THREADS" -c"$CONNS" -d"${DURATION}s" -H "$(hdr "$1")" --latency "https://localhost:$2/" >"$out"
    after=$(cpu_ticks "$3")
    local rps p50 p99 reqs errors
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    p50=$(to_ms "$(awk '$1 == "50%" {print $2}' "$out")")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$out")")
    reqs=$(awk '/requests in/ {print $1}' "$out")
    errors=$(awk '/Non-2xx/ {e += $NF} /Socket errors/ {gsub(",", ""); e += $4 + $6 + $8 + $10} END {print e + 0}' "$out")
    echo "h1 $1 $4 $rps $p50 $p99 $errors $(cpu_per_req $((after - before)) "$reqs")" >>"$RESULTS"
}

run_h2() { # server port pid round
    local out=$WORK/h2load-$1-$4.txt lat=$WORK/h2load-$1-$4.log before after
    h2load -n 2000 -c "$H2_CLIENTS" -m "$H2_STREAMS" -H "$(hdr "$1")" "https://localhost:$2/" >/dev/null # warm-up
    before=$(cpu_ticks "$3")
    h2load -n "$H2_REQUESTS" -c "$H2_CLIENTS" -m "$H2_STREAMS" -t "$H2_THREADS" -H "$(hdr "$1")" \
        --log-file="$lat" "https://localhost:$2/" >"$out"
    after=$(cpu_ticks "$3")
    grep -qi '^application protocol: h2' "$out" || die "h2load did not negotiate h2 with $1"
    local rps p50 p99 errors
    rps=$(awk '/^finished in/ {print $4}' "$out")
    read -r p50 p99 < <(cut -f3 "$lat" | sort -n | awk '{ v[NR] = $1 } END {
        i50 = int(NR * 0.50); if (i50 < 1) i50 = 1
        i99 = int(NR * 0.99); if (i99 < 1) i99 = 1
        printf "%.3f %.3f\n", v[i50] / 1000, v[i99] / 1000 }')
    errors=$(awk '/^requests:/ {gsub(",", ""); print $10 + $12 + $14} ' "$out")
    errors=$((errors + $(awk '/^status codes:/ {gsub(",", ""); print $5 + $7 + $9}' "$out")))
    echo "h2 $1 $4 $rps $p50 $p99 $errors $(cpu_per_req $((after - before)) "$H2_REQUESTS")" >>"$RESULTS"
}

LOAD_START=$(cut -d' ' -f1 /proc/loadavg)
log "nginx $NGINX_VERSION on :$NGX_PORT (worker_processes $SERVER_THREADS), dermgate on :$DG_PORT" \
    "(TOKIO_WORKER_THREADS=$SERVER_THREADS), upstream nginx on :$UP_PORT ($UPSTREAM_WORKERS worker, ${BODY_BYTES}-byte body)"
for round in $(seq "$ROUNDS"); do
    if ((round % 2)); then order=("nginx $NGX_PORT $NGX_PID" "dermgate $DG_PORT $DG_PID" "dermgate-audit $DA_PORT $DA_PID" "dermgate-session $DS_PORT $DS_PID"); else
        order=("dermgate-session $DS_PORT $DS_PID" "dermgate-audit $DA_PORT $DA_PID" "dermgate $DG_PORT $DG_PID" "nginx $NGX_PORT $NGX_PID"); fi
    for proto in h1 h2; do
        for target in "${order[@]}"; do
            set -- $target
            log "round $round/$ROUNDS: $proto against $1"
            "run_$proto" "$1" "$2" "$3" "$round"
        done
    done
done
kill -0 "$DG_PID" 2>/dev/null || die "dermgate died during the run"
kill -0 "$DS_PID" 2>/dev/null || die "dermgate (session) died during the run"
kill -0 "$DA_PID" 2>/dev/null || die "dermgate (audit) died during the run"

# ---------------------------------------------------------------- 5. report
echo
echo "dermgate vs nginx $NGINX_VERSION: $(nproc) cores shared by load generator, proxy and upstream;" \
    "server threads $SERVER_THREADS each; ${BODY_BYTES}-byte responses; mean of $ROUNDS round(s)"
echo "load average before/after: $LOAD_START/$(cut -d' ' -f1 /proc/loadavg) (anything else running on the machine makes these numbers noisy)"
echo "h1: wrk -t$WRK_THREADS -c$CONNS -d${DURATION}s    h2: h2load -n$H2_REQUESTS -c$H2_CLIENTS -m$H2_STREAMS -t$H2_THREADS"
echo
awk '
    { k = $1 " " $2; n[k]++; rps[k] += $4; p50[k] += $5; p99[k] += $6; err[k] += $7; cpu[k] += $8 }
    END {
        printf "%-5s %-9s %12s %10s %10s %8s %12s\n", "proto", "server", "rps", "p50 ms", "p99 ms", "errors", "cpu us/req"
        split("h1 h2", protos, " ")
        for (i = 1; i <= 2; i++) {
            p = protos[i]; a = p " nginx"; b = p " dermgate"
            if (!(a in n) || !(b in n)) continue
            printf "%-5s %-9s %12.0f %10.3f %10.3f %8d %12.1f\n", p, "nginx", rps[a]/n[a], p50[a]/n[a], p99[a]/n[a], err[a], cpu[a]/n[a]
            printf "%-5s %-9s %12.0f %10.3f %10.3f %8d %12.1f\n", p, "dermgate", rps[b]/n[b], p50[b]/n[b], p99[b]/n[b], err[b], cpu[b]/n[b]
            rr = (rps[b]/n[b]) / (rps[a]/n[a]); r50 = p50[b] / p50[a]; r99 = p99[b] / p99[a]
            rc = (cpu[a] > 0) ? cpu[b] / cpu[a] : 0
            printf "%-5s %-9s %11.2fx %9.2fx %9.2fx %8s %11.2fx   rps %s (goal >= 1.10x), p99 %s (goal <= 1.00x)\n",
                p, "ratio", rr, r50, r99, "", rc, (rr >= 1.10 ? "MET" : "MISSED"), (r99 <= 1.00 ? "MET" : "MISSED")
            d = p " dermgate-audit"
            if (d in n) {
                printf "%-5s %-9s %12.0f %10.3f %10.3f %8d %12.1f\n", p, "audit", rps[d]/n[d], p50[d]/n[d], p99[d]/n[d], err[d], cpu[d]/n[d]
                ra = (rps[d]/n[d]) / (rps[b]/n[b])
                printf "%-5s %-9s %11.2fx %9.2fx %9.2fx %8s %11.2fx   audit on/off rps %s (issue 7 goal >= 0.95x, vs dermgate without audit)\n",
                    p, "on/off", ra, (p50[d]/n[d]) / (p50[b]/n[b]), (p99[d]/n[d]) / (p99[b]/n[b]), "", (cpu[b] > 0) ? cpu[d] / cpu[b] : 0, (ra >= 0.95 ? "MET" : "MISSED")
            }
            c = p " dermgate-session"
            if (c in n) {
                printf "%-5s %-9s %12.0f %10.3f %10.3f %8d %12.1f\n", p, "session", rps[c]/n[c], p50[c]/n[c], p99[c]/n[c], err[c], cpu[c]/n[c]
                rs = (rps[c]/n[c]) / (rps[a]/n[a])
                printf "%-5s %-9s %11.2fx %9.2fx %9.2fx %8s %11.2fx   session rps %s (issue 5 goal >= 1.00x)\n",
                    p, "ratio", rs, (p50[c]/n[c]) / (p50[a]/n[a]), (p99[c]/n[c]) / (p99[a]/n[a]), "", (cpu[a] > 0) ? cpu[c] / cpu[a] : 0, (rs >= 1.00 ? "MET" : "MISSED")
            }
        }
    }' "$RESULTS"
echo
echo "ratio = dermgate / nginx. Per round:"
awk '{ printf "  round %s %s %-16s rps %8.0f  p50 %7.3f ms  p99 %7.3f ms  errors %d  cpu %.1f us/req\n", $3, $1, $2, $4, $5, $6, $7, $8 }' \
    "$RESULTS" | sort -k2,2n -k3,3
if awk '$7 > 0 { bad = 1 } END { exit !bad }' "$RESULTS"; then
    echo
    echo "WARNING: some requests failed (errors column): those numbers do not measure proxying; see the logs with KEEP=1"
fi
