#!/usr/bin/env bash
# Runs the steps of docs/deploy.md with the test hosts a and b standing in for two servers: a CA made outside them,
# each host given only ca.pem and its own key pair, a second agent in each started from a YAML configuration on
# port 7071, `precog check` in each, a container moved with --from/--to HOST:PORT and a client certificate from
# the probe namespace (which reaches the hosts only over their own links), `job list` from another shell, and a
# bad configuration refused with its key and line. Needs root and the testbed up (precog testbed up).
#
#   scripts/deploy-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
P=bin/precog
say() { printf '\n$ %s\n' "$*"; }
run() { say "$*"; "$@"; }

$P testbed status | grep -q '^testbed: up' || { echo "deploy-check: bring the testbed up first: $P testbed up" >&2; exit 2; }
work=$(mktemp -d /tmp/precog-deploy.XXXXXX)
cleanup() {
  for h in a b; do $P testbed exec $h -- pkill -f 'agent.yaml-7071' >/dev/null 2>&1 || true; done
  $P stop web >/dev/null 2>&1 || true
  for h in a b; do $P testbed exec $h -- podman rm --force --time 0 pweb >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT
ca=$work/ca
declare -A ips=([a]="10.213.77.1 10.213.78.1" [b]="10.213.77.2 10.213.79.2")

# 2. The CA on the operator's machine (here: this machine, outside both hosts).
run $P pki init --dir "$ca"
for h in a b; do run $P pki issue $h --ip ${ips[$h]} --dir "$ca"; done
run $P pki issue operator --dir "$ca"

for h in a b; do
  # Each server gets ca.pem and its own pair, nothing else (the testbed's own agents keep /etc/precog/pki).
  say "install ca.pem $h.pem $h-key.pem into host $h:/etc/precog/pki-7071"
  $P testbed exec $h -- install -d -m 700 /etc/precog/pki-7071
  for f in ca.pem $h.pem $h-key.pem; do
    $P testbed exec $h -- sh -c "umask 077 && cat > /etc/precog/pki-7071/$f" <"$ca/$f"
  done
  # 3. The configuration and the agent.
  say "write host $h:/etc/precog/agent.yaml-7071"
  printf 'listen: 0.0.0.0:7071\nstate-dir: /var/lib/precog/agent-7071\npki: /etc/precog/pki-7071\nname: %s\nspill-size: 4GiB\nidle-timeout: 120s\n' $h |
    $P testbed exec $h -- sh -c 'cat > /etc/precog/agent.yaml-7071'
  run $P testbed exec $h -- /opt/precog/bin/precog check
  say "start the agent in host $h from its configuration"
  $P testbed exec $h -- sh -c 'setsid /opt/precog/bin/precog agent --config /etc/precog/agent.yaml-7071 >>/var/log/agent-7071.log 2>&1 </dev/null &'
done
for h in a b; do
  for i in $(seq 100); do
    $P testbed exec $h -- grep -q 'agent listening' /var/log/agent-7071.log 2>/dev/null && break
    sleep 0.1
  done
  $P testbed exec $h -- grep 'agent listening' /var/log/agent-7071.log
done

# 4. A container moved by the agents alone, the client in a namespace of its own with the operator's certificate.
run $P run --host a --name web -- python3 /opt/precog/workloads/counter.py
sleep 1
run ip netns exec precog-probe $P migrate web --from 10.213.78.1:7071 --to b:7071 --pki "$ca" --name operator
run ip netns exec precog-probe $P job list --on 10.213.79.2:7071 --pki "$ca" --name operator
run $P ps
$P ps --json | grep -q '"host": "b"' || { echo "deploy-check: web is not on b" >&2; exit 1; }

# The same with a Podman container (the test image is in both hosts' Podman: precog testbed up loads it).
run $P testbed exec a -- podman run -d --name pweb --network none -v /opt/precog/workloads:/w:ro \
  localhost/precog-base:latest python3 /w/counter.py --port 0 --probe-port 0
sleep 1
run ip netns exec precog-probe $P migrate pweb --runtime podman --from 10.213.78.1:7071 --to b:7071 --pki "$ca" --name operator
run $P testbed exec b -- podman ps
$P testbed exec b -- podman ps --format '{{.Names}}' | grep -qx pweb || { echo "deploy-check: pweb is not in b's Podman" >&2; exit 1; }
[ -z "$($P testbed exec a -- podman ps -a --format '{{.Names}}')" ] || { echo "deploy-check: host a still has a Podman container" >&2; exit 1; }

# A configuration with a wrong key: the agent does not start and names the key and the line.
printf 'listen: 0.0.0.0:7072\nstate-dir: /var/lib/precog/agent-7072\nspil-size: 1GiB\n' |
  $P testbed exec a -- sh -c 'cat > /tmp/bad-agent.yaml'
say "precog agent --config /tmp/bad-agent.yaml (in host a)"
set +e
$P testbed exec a -- /opt/precog/bin/precog agent --config /tmp/bad-agent.yaml
rc=$?
set -e
echo "exit $rc"
[ "$rc" = 2 ] || { echo "deploy-check: a bad configuration was not refused with exit 2" >&2; exit 1; }
echo
echo "deploy-check: every step of docs/deploy.md ran on the test hosts"
