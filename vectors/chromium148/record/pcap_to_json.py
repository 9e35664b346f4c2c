"""Turn a loopback capture of page.html's call into the capture JSON of ../../chromium156.

Usage: pcap_to_json.py CAPTURE.pcap RESULT.json NAME > NAME.json

Only what a blind SFU can read is kept: each RTP packet's header fields and its raw
header-extension block (SRTP leaves both in the clear), from the sender to the receiver. The
extmap and rtpmap come from the sender's offer; config and transform metadata from the page.
"""
import json
import re
import struct
import sys

pcap, result, name = sys.argv[1], sys.argv[2], sys.argv[3]
page = json.load(open(result))
if "error" in page:
    sys.exit("the page failed: " + page["error"])


def section(sdp, kind):
    m = re.search(r"(m=%s [\s\S]*?)(?=\r\nm=|\Z)" % kind, sdp)
    return m.group(1) if m else ""


offer = page["offer"]
video = section(offer, "video")
extmap = {m[0]: m[1] for m in re.findall(r"a=extmap:(\d+)(?:/\w+)? (\S+)", video)}
rtpmap = {m[0]: m[1] for m in re.findall(r"a=rtpmap:(\d+) (\S+)", video)}

data = open(pcap, "rb").read()
magic = struct.unpack("<I", data[:4])[0]
endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
linktype = struct.unpack(endian + "I", data[20:24])[0]
link_header = {1: 14, 113: 16, 276: 20}[linktype]  # Ethernet (lo), Linux SLL, SLL2
packets, pos = [], 24
flows = {}
while pos + 16 <= len(data):
    _, _, incl, _ = struct.unpack(endian + "IIII", data[pos : pos + 16])
    frame = data[pos + 16 : pos + 16 + incl]
    pos += 16 + incl
    ip = frame[link_header:]
    if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 17:
        continue
    udp = ip[(ip[0] & 15) * 4 :]
    sport, dport = struct.unpack(">HH", udp[:4])
    rtp = udp[8:]
    # RTP (not RTCP 200-206, STUN, DTLS): version 2 and a payload type of the video section.
    if len(rtp) < 12 or rtp[0] >> 6 != 2 or 200 <= rtp[1] <= 206:
        continue
    pt = rtp[1] & 0x7F
    if str(pt) not in rtpmap:
        continue
    cc, has_ext = rtp[0] & 15, rtp[0] & 0x10
    seq, ts, ssrc = struct.unpack(">HII", rtp[2:12])
    off = 12 + 4 * cc
    profile, block, ext = None, b"", {}
    if has_ext:
        profile, words = struct.unpack(">HH", rtp[off : off + 4])
        block = rtp[off + 4 : off + 4 + 4 * words]
        i = 0
        while i < len(block):
            if profile == 0xBEDE:
                if block[i] == 0:
                    i += 1
                    continue
                eid, n = block[i] >> 4, (block[i] & 15) + 1
                i += 1
            else:
                if block[i] == 0:
                    i += 1
                    continue
                eid, n = block[i], block[i + 1]
                i += 2
            ext[str(eid)] = block[i : i + n].hex()
            i += n
    flows.setdefault((sport, dport), 0)
    flows[(sport, dport)] += 1
    packets.append(((sport, dport), {
        "ssrc": ssrc, "seq": seq, "ts": ts, "pt": pt, "marker": rtp[1] >> 7,
        "ext_profile": "0x%04x" % profile if profile is not None else None,
        "ext_block_hex": block.hex(), "ext": ext,
    }))
# The sender's direction is the one carrying media (the receiver sends only RTCP).
flow = max(flows, key=flows.get)
out = {
    "name": name,
    "source": page["userAgent"] + " (Debian's chromium package), headless, fake camera; two "
    "peer connections in one page on loopback in a network namespace, captured with tcpdump "
    "(vectors/chromium148/record/record.sh). SRTP protects payloads, so only RTP headers and "
    "header extensions are recorded (raw bytes).",
    "config": {"codec": "VP9", "scalabilityMode": page["scalabilityMode"], "width": 1280,
               "height": 720, "transform": "whole frame: 4-byte stand-in header, bytes XORed"},
    "extmap": extmap,
    "rtpmap": rtpmap,
    "transform_metadata": page["transform_metadata"],
    "packets": [p for f, p in packets if f == flow],
}
json.dump(out, sys.stdout, separators=(",", ":"))
