#!/usr/bin/env bash
# SSH section of `make bench` (scripts/bench.sh runs it; it also runs alone), issue 20's goals:
#   scp          a download of SSH_SCP_BYTES (256 MiB; Debian's scp 9.2 speaks SFTP, so this is
#                an SFTP read, which the shipped default policy allows) through the gateway vs
#                straight from the same sshd (goal: >= 0.7x; SSH crypto on both of the
#                gateway's legs)
#   exec         round-trips per second: `ssh host uptime` SSH_EXECS times, each a new
#                connection (key exchange and login on both legs), and SSH_EXECS commands as
#                exec channels of one multiplexed connection (OpenSSH ControlMaster), which is
#                the per-command cost: judge, journal, open the server's channel (reported)
# Upstream: Debian's sshd on 127.0.0.5 with a host key and authorized_keys of the run's own.
# Gateway: `interceptor exec` with an ssh target (127.0.0.6 -> 127.0.0.5, journal on, the
# shipped default policy: `uptime` and sftp reads allowed), logging in with its own key.
# SSH_ROUNDS rounds (default 3) alternate the paths; medians go to $BENCH_DOC between the
# ssh-bench markers, the ratios to the summary. Loopback only; every load has a fixed count
# and a time bound (SSH_SECONDS per run, through `timeout`).
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
bench_init ssh
ROUNDS="${SSH_ROUNDS:-$(sized 3 1)}"
SCP_BYTES="${SSH_SCP_BYTES:-$(sized 268435456 4194304)}"
EXECS="${SSH_EXECS:-$(sized 100 5)}"
SECONDS_CAP="${SSH_SECONDS:-$(sized 120 30)}"

PORT="$(free_port 127.0.0.5)"
UPSTREAM="127.0.0.5:$PORT"
DIALED_HOST="127.0.0.6"
mkdir -p /run/sshd "$WORK/srv"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/client_key"
cp "$WORK/client_key.pub" "$WORK/authorized_keys"
cat >"$WORK/sshd_config" <<CONF
ListenAddress $UPSTREAM
HostKey $WORK/host_key
AuthorizedKeysFile $WORK/authorized_keys
PidFile none
UsePAM no
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
Subsystem sftp internal-sftp
MaxStartups 100:30:200
MaxSessions 100
CONF
bench_spawn /usr/sbin/sshd -D -e -f "$WORK/sshd_config"
wait_listening "$UPSTREAM"
head -c "$SCP_BYTES" /dev/urandom >"$WORK/srv/blob"
echo "[127.0.0.5]:$PORT $(cat "$WORK/host_key.pub")" >"$WORK/upstream_known_hosts"

cat >"$WORK/gateway.toml" <<CONF
$(gateway_common_config)
[[target]]
name = "box"
protocol = "ssh"
intercept = ["$DIALED_HOST:$PORT"]
upstream = "$UPSTREAM"
policy = "$BENCH_ROOT/policies/default.toml"
[target.credentials]
user = "root"
key_file = "$WORK/client_key"
known_hosts = "$WORK/upstream_known_hosts"
CONF
"$BIN" --config "$WORK/gateway.toml" ca known-hosts >"$WORK/agent_known_hosts"

# The client as both paths run it: no config, strict host checking against what each trusts.
cat >"$WORK/client.sh" <<'SH'
# client.sh WORK HOST PORT KNOWN_HOSTS SCP_BYTES EXECS: prints one JSON line of timings.
set -euo pipefail
work=$1 host=$2 port=$3 known=$4 bytes=$5 execs=$6
opts=(-F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=yes -o "UserKnownHostsFile=$known"
  -o GlobalKnownHostsFile=/dev/null -o LogLevel=ERROR -i "$work/client_key")
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", b - a }'; }
ctl="$work/ctl.$$"
# The multiplexing master forks into the background: it is stopped however this ends.
trap 'ssh -o "ControlPath=$ctl" -O exit "root@$host" 2>/dev/null || true' EXIT
rm -f "$work/got"
t0=$(now)
scp "${opts[@]}" -P "$port" "root@$host:$work/srv/blob" "$work/got"
t1=$(now)
got=$(stat -c %s "$work/got")
rm -f "$work/got"
for _ in $(seq "$execs"); do ssh "${opts[@]}" -p "$port" "root@$host" uptime >/dev/null; done
t2=$(now)
ssh "${opts[@]}" -p "$port" -o ControlMaster=yes -o "ControlPath=$ctl" -fN "root@$host"
t3=$(now)
for _ in $(seq "$execs"); do ssh "${opts[@]}" -o "ControlPath=$ctl" -p "$port" "root@$host" uptime >/dev/null; done
t4=$(now)
echo "{\"scp_s\": $(since "$t0" "$t1"), \"scp_bytes\": $got, \"exec_new_s\": $(since "$t1" "$t2"), \"exec_mux_s\": $(since "$t3" "$t4"), \"execs\": $execs}"
SH

run() { # path
  local out
  if [ "$1" = direct ]; then
    out="$(timeout "$SECONDS_CAP" bash "$WORK/client.sh" "$WORK" 127.0.0.5 "$PORT" \
      "$WORK/upstream_known_hosts" "$SCP_BYTES" "$EXECS" 2>>"$WORK/stderr.log" | tail -n1)" || true
  else
    out="$(BENCH_TIMEOUT="$SECONDS_CAP" in_gateway "$WORK/gateway.toml" bash "$WORK/client.sh" \
      "$WORK" "$DIALED_HOST" "$PORT" "$WORK/agent_known_hosts" "$SCP_BYTES" "$EXECS" \
      2>>"$WORK/stderr.log" | tail -n1)" || true
  fi
  echo "$1 $out" >>"$WORK/results"
}
for i in $(seq "$ROUNDS"); do
  for path in direct gateway; do
    say "round $i/$ROUNDS, $path"
    run "$path"
  done
done

bench_python "$WORK" "$ROUNDS" "$SCP_BYTES" "$EXECS" "$SECONDS_CAP" <<'PY'
work, rounds, scp_bytes, execs, cap = sys.argv[1:6]
runs = {}
for line in open(os.path.join(work, "results")):
    path, _, rest = line.partition(" ")
    try:
        r = json.loads(rest)
    except ValueError:
        continue  # a failed run is left out (and shows as "failed")
    if r.get("scp_bytes") == int(scp_bytes):
        runs.setdefault(path, []).append(r)
def fig(path, key):
    rs = runs.get(path)
    return median([r[key] for r in rs]) if rs else None
mib = int(scp_bytes) / 2**20
rows = ["| path | scp download (MiB/s) | `ssh host uptime`, new connection each (commands/s) | "
        "exec channels on one connection (commands/s) |", "|---|---|---|---|"]
figures = {}
for path, label in [("direct", "direct to sshd"),
                    ("gateway", "through the gateway (default policy, journal on)")]:
    s, n, m = fig(path, "scp_s"), fig(path, "exec_new_s"), fig(path, "exec_mux_s")
    if s is None:
        rows.append(f"| {label} | failed | | |")
        continue
    figures[path] = (mib / s, int(execs) / n, int(execs) / m)
    rows.append(f"| {label} | {figures[path][0]:,.0f} | {figures[path][1]:,.1f} | "
                f"{figures[path][2]:,.1f} |")
ratio = {}
if "direct" in figures and "gateway" in figures:
    ratio = {k: figures["gateway"][k] / figures["direct"][k] for k in range(3)}
    rows.append(f"| ratio | {ratio[0]:.2f}× | {ratio[1]:.2f}× | {ratio[2]:.2f}× |")
cmd = (f"`scripts/bench-ssh.sh` (SSH_ROUNDS={rounds} SSH_SCP_BYTES={scp_bytes} SSH_EXECS={execs} "
       f"SSH_SECONDS={cap}): `scp` of a {mib:,.0f} MiB file, then `ssh host uptime` {execs} times, "
       f"then {execs} times over one ControlMaster connection, direct to sshd on 127.0.0.5 and "
       "under `interceptor exec` through 127.0.0.6")
section = section_header(
    "SSH (issue 20)", cmd,
    f"Median of {rounds} rounds (paths alternate). OpenSSH 9.2 client and server (Debian), "
    "default settings (direct, OpenSSH chooses chacha20-poly1305; through the gateway, both "
    "legs use aes256-gcm, which the gateway offers instead of chacha20); scp 9.2 speaks SFTP, "
    "so the download is an SFTP read (allowed by the "
    "default policy, each open judged and journaled, file contents neither masked nor recorded).",
    "Gateway: `interceptor exec`, an `ssh` target (127.0.0.6 → 127.0.0.5), journal on (each "
    "channel committed before the server hears of it), the shipped default policy; it "
    "decrypts the agent's leg and encrypts its own to the server: SSH crypto twice.",
    "Goal (issue 20): scp ≥ 0.7× direct. Exec round-trips are reported: a new connection "
    "costs two key exchanges and logins through the gateway; on one connection each command "
    "costs its judgment, a journal commit and a channel opened on the server.")
write_section("ssh-bench", section + rows)
goal("ssh-scp", f"scp of {mib:,.0f} MiB (SFTP read) through the gateway vs direct",
     f"{ratio[0]:.2f}× ({figures['gateway'][0]:,.0f} MiB/s)" if ratio else "failed",
     "≥ 0.7× (issue 20)", bool(ratio) and ratio[0] >= 0.7)
goal("ssh-exec-new", "SSH exec round-trips/s, a new connection each, gateway vs direct",
     f"{ratio[1]:.2f}× ({figures['gateway'][1]:,.1f}/s)" if ratio else "failed",
     "none (reported)", None)
goal("ssh-exec-mux", "SSH exec round-trips/s, channels of one connection, gateway vs direct",
     f"{ratio[2]:.2f}× ({figures['gateway'][2]:,.1f}/s)" if ratio else "failed",
     "none (reported)", None)
PY
