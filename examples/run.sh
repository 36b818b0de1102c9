#!/usr/bin/env bash
# A VM test in shell: a host service answers the tiny guest over a
# vmchannel, and `minivirt run` boots the guest, streams its console, waits
# for it to power off and says how it ended. The one line for a CI job is
#   minivirt run --rm --timeout 2m --console guest.xml
set -euo pipefail
guest=${MINIVIRT_GUEST_DIR:-$(cd "$(dirname "$0")/.." && pwd)/build/guest}
work=$(mktemp -d /tmp/minivirt-run.XXXXXX)
export MINIVIRT_STATE_DIR=$work/state MINIVIRT_RUN_DIR=$work/run
trap 'kill $service 2>/dev/null; rm -rf "$work"' EXIT

# The host side: answer one request with a reply (socat runs the shell
# command per connection, with the connection on its stdin and stdout).
socat UNIX-LISTEN:"$work/service.sock",fork SYSTEM:'cat >/dev/null; echo -n pong-from-the-host' &
service=$!
for _ in $(seq 50); do [ -S "$work/service.sock" ] && break; sleep 0.1; done

script=$(printf 'minivirt-guest request 10.0.2.4:600 ping' | base64 -w0)
cat > "$work/guest.xml" <<XML
<domain type='kvm'>
  <name>run-example</name>
  <memory unit='MiB'>192</memory>
  <os>
    <kernel>$guest/vmlinuz</kernel>
    <initrd>$guest/initrd.gz</initrd>
    <cmdline>console=ttyS0 quiet minivirt.run=$script minivirt.poweroff</cmdline>
  </os>
  <devices>
    <interface type='vmchannel'>
      <source port='600'/>
      <target path='$work/service.sock'/>
    </interface>
  </devices>
</domain>
XML

minivirt run --rm --timeout 2m --console "$work/guest.xml" | tee "$work/console.txt"
grep -q '^reply: pong-from-the-host' "$work/console.txt"
[ -z "$(minivirt list --all -o json | tr -d '[] \n')" ] # --rm left nothing defined
echo "run.sh: ok"
