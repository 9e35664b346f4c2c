#!/usr/bin/env bash
# Record ../vp9_l3t3key_dd.json: headless Chromium sends its fake camera as VP9 L3T3_KEY from
# one peer connection to another in the same page, inside a network namespace of its own (only
# its loopback), while tcpdump records the UDP packets. Needs root (namespaces, tcpdump),
# Debian's chromium and tcpdump, and python3.
set -euo pipefail
cd "$(dirname "$0")"
ns=veil-capture-$$
work=$(mktemp -d)
trap 'ip netns del "$ns" 2>/dev/null || true; rm -rf "$work"' EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up
ip netns exec "$ns" tcpdump -q -i lo -w "$work/cap.pcap" udp 2>/dev/null &
dump=$!
ip netns exec "$ns" python3 serve.py "$work/result.json" &
server=$!
sleep 1
ip netns exec "$ns" chromium --headless=new --no-sandbox --disable-gpu \
  --use-fake-device-for-media-stream --use-fake-ui-for-media-stream \
  --allow-loopback-in-peer-connection --user-data-dir="$work/profile" \
  http://127.0.0.1:8148/ >/dev/null 2>&1 &
browser=$!
for _ in $(seq 60); do [ -s "$work/result.json" ] && break; sleep 1; done
kill "$browser" "$server" 2>/dev/null || true
sleep 1
kill "$dump" 2>/dev/null || true
wait "$dump" 2>/dev/null || true
[ -s "$work/result.json" ] || { echo "the page posted nothing" >&2; exit 1; }
python3 pcap_to_json.py "$work/cap.pcap" "$work/result.json" vp9_l3t3key_dd > ../vp9_l3t3key_dd.json
echo "wrote $(cd .. && pwd)/vp9_l3t3key_dd.json"
