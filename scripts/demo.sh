#!/usr/bin/env bash
# The demo, in a private state directory: define the demo domain, list it,
# and show both of its XML forms.
set -euo pipefail
bin=$1
state=$(mktemp -d /tmp/minivirt-demo.XXXXXX)
trap 'rm -rf "$state"' EXIT
mv() { echo "\$ minivirt $*"; "$bin" --state-dir "$state/state" --run-dir "$state/run" "$@"; }
mv define examples/demo.xml
mv list --all
mv vmchannel list demo
mv dumpxml demo --libvirt
