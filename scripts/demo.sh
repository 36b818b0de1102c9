#!/usr/bin/env bash
# minivirt's demo: a host service on a Unix socket, the tiny guest with a
# vmchannel to it, five guest connections at once (five host accepts, each
# with its own reply), then an ACPI shutdown. Everything lives in a private
# temporary directory and is removed at the end.
set -euo pipefail
bin=$1 service=$2 guest=$3
work=$(mktemp -d /tmp/minivirt-demo.XXXXXX)
svc_pid=
cleanup() {
  "$bin" --state-dir "$work/state" --run-dir "$work/run" destroy demo >/dev/null 2>&1 || true
  [ -n "$svc_pid" ] && kill "$svc_pid" 2>/dev/null && wait "$svc_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
mv() { echo "\$ minivirt $*"; "$bin" --state-dir "$work/state" --run-dir "$work/run" "$@"; }

"$service" "$work/demo.sock" &
svc_pid=$!
for _ in $(seq 50); do [ -S "$work/demo.sock" ] && break; sleep 0.1; done

# examples/demo.xml, pointed at the built guest and this run's socket.
sed -e "s|/usr/local/share/minivirt/guest|$guest|g" -e "s|/tmp/minivirt-demo.sock|$work/demo.sock|" examples/demo.xml > "$work/demo.xml"
mv define "$work/demo.xml"
mv start demo
mv list
echo "\$ minivirt log -f demo    # the guest's serial console"
"$bin" --state-dir "$work/state" --run-dir "$work/run" log -f demo | sed -u -e 's/\x1b\[6n//g' -e 's/^/guest: /' &
log_pid=$!
for _ in $(seq 300); do
  grep -q 'run exited' "$work/state/logs/demo.log" 2>/dev/null && break
  sleep 0.1
done
sleep 0.5 # let log -f print the replies
mv vmchannel list demo
mv shutdown demo
wait "$log_pid" 2>/dev/null || true
mv list --all
