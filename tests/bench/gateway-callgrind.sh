#!/usr/bin/env bash
# The gateway's and nginx's own (user-space) instructions per proxied request, counted by
# valgrind's callgrind: a figure that, unlike CPU time, does not move with the neighbours of a
# shared machine, for comparing two builds or the gateway with nginx (issue 15). Kernel time is
# not counted (both make the same system calls per request: see BENCHMARKS.md).
#
#   cargo build --release -p citadel-gateway -p citadel-standin
#   tests/bench/gateway-callgrind.sh [GATEWAY_BIN ...]
#
# Each binary (default: target/release/citadel-gateway), then nginx with one worker and no
# master process, proxies to one stand-in engine on loopback; 4 keep-alive clients send 30
# requests each to warm up, the counters are zeroed, then 250 each are counted. Needs valgrind
# (apt-get install valgrind), nginx and python3. Prints one line per proxy; writes nothing
# outside a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/../.."
clients=4 per=250 warm=30
for t in /usr/bin/valgrind /usr/bin/callgrind_control /usr/sbin/nginx /usr/bin/python3; do
  [[ -x $t ]] || { echo "gateway-callgrind: $t missing" >&2; exit 69; }
done
standin=target/release/citadel-standin
[[ -x $standin ]] || { echo "gateway-callgrind: build $standin first" >&2; exit 69; }
bins=("$@")
((${#bins[@]})) || bins=(target/release/citadel-gateway)

d=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$d"; }
trap cleanup EXIT

# Below the kernel's ephemeral range (the config refuses a model port inside it).
free_port() {
  python3 -c '
import random, socket
while True:
    p = random.randrange(20000, 32000)
    try:
        socket.socket().bind(("127.0.0.1", p)); print(p); break
    except OSError:
        pass'
}
wait_port() {
  for _ in $(seq 120); do
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),1)" 2>/dev/null && return 0
    sleep 0.25
  done
  echo "gateway-callgrind: nothing listens on $1" >&2; return 1
}

cat >"$d/load.py" <<'EOF'
import socket, sys, threading
port, c, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
body = b'{"model":"bench","prompt":"hello world","max_tokens":4}'
req = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
def run():
    s = socket.create_connection(("127.0.0.1", port))
    for _ in range(n):
        s.sendall(req); buf = b""
        while True:
            d = s.recv(65536)
            if not d: sys.exit("connection closed")
            buf += d
            if b"\r\n\r\n" in buf:
                h, b = buf.split(b"\r\n\r\n", 1)
                cl = [int(l.split(b":")[1]) for l in h.split(b"\r\n") if l.lower().startswith(b"content-length")]
                if cl and len(b) >= cl[0]: break
ts = [threading.Thread(target=run) for _ in range(c)]
[t.start() for t in ts]; [t.join() for t in ts]
EOF

engine=$(free_port)
mkdir -p "$d/model"
"$standin" serve "$d/model" --port "$engine" --served-model-name bench >/dev/null 2>&1 &
pids+=($!)
wait_port "$engine"

# One proxy under callgrind on $port: instructions per counted request.
n=0
measure() {
  local name=$1 port=$2; shift 2
  n=$((n + 1))
  local out=$d/cg$n
  valgrind --tool=callgrind --callgrind-out-file="$out.out" "$@" >/dev/null 2>"$out.vg" &
  local pid=$!
  pids+=("$pid")
  wait_port "$port"
  python3 "$d/load.py" "$port" "$clients" "$warm"
  callgrind_control -z "$pid" >/dev/null 2>&1
  python3 "$d/load.py" "$port" "$clients" "$per"
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local ir
  ir=$(awk '/^summary:/ {print $2; exit}' "$out.out.1")
  printf '%-40s %7d instructions per request (user space, %d requests)\n' "$name" $((ir / (clients * per))) $((clients * per))
}

for b in "${bins[@]}"; do
  port=$(free_port)
  mkdir -p "$d/run"
  printf '[paths]\nruntime_dir = "%s/run"\n[gpu]\nrequired = false\n[gateway]\nlisten = "127.0.0.1:%s"\n[models.bench]\npath = "/nonexistent"\nport = %s\ngpus = [0]\n' \
    "$d" "$port" "$engine" >"$d/gw.toml"
  measure "$b" "$port" "$b" --config "$d/gw.toml"
done

port=$(free_port)
mkdir -p "$d/nginx"
cat >"$d/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $d/nginx/pid;
error_log $d/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log $d/nginx/access.log;
  client_body_temp_path $d/nginx/body;
  proxy_temp_path $d/nginx/proxy;
  upstream engine { server 127.0.0.1:$engine; keepalive 64; }
  server {
    listen 127.0.0.1:$port;
    location / {
      proxy_pass http://engine;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
EOF
measure "nginx $(/usr/sbin/nginx -v 2>&1 | sed 's|.*/||')" "$port" /usr/sbin/nginx -c "$d/nginx.conf" -p "$d/nginx"
