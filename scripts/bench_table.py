#!/usr/bin/env python3
"""Print the SFrame benchmark table (markdown) from criterion's results in target/criterion.

Run after `cargo bench -p veil-sframe --features ring --bench sframe`. Ratios compare figures
of the same run: `vs sframe crate` = sframe-crate time / Veil time (higher is better for Veil);
`vs raw` = Veil time / raw AEAD time of the same backend (1.00 = no overhead).
"""
import json
import os
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "target/criterion"
SIZES = [100, 1024, 10240, 102400]


def mean_ns(group, func, size):
    path = os.path.join(root, group, func.replace("/", "_"), str(size), "new", "estimates.json")
    if not os.path.exists(path):
        path = os.path.join(root, group, *func.split("/"), str(size), "new", "estimates.json")
    with open(path) as f:
        return json.load(f)["mean"]["point_estimate"]


def fmt(ns):
    return f"{ns / 1000:.2f} µs" if ns >= 1000 else f"{ns:.0f} ns"


def label(size):
    return f"{size // 1024} KiB" if size >= 1024 else f"{size} B"


backends = [b for b in ("rustcrypto", "ring")
            if os.path.isdir(os.path.join(root, "encrypt", f"veil_{b}"))
            or os.path.isdir(os.path.join(root, "encrypt", "veil", b))]
for group in ("encrypt", "decrypt"):
    print(f"\n**{group}** (AES_128_GCM_SHA256_128, mean per frame)\n")
    head = "| size | sframe crate |"
    sep = "|---|---|"
    for b in backends:
        head += f" Veil {b} | raw {b} | Veil/raw | × sframe crate |"
        sep += "---|---|---|---|"
    print(head)
    print(sep)
    for size in SIZES:
        theirs = mean_ns(group, "sframe-crate/rustcrypto", size)
        row = f"| {label(size)} | {fmt(theirs)} |"
        for b in backends:
            veil = mean_ns(group, f"veil/{b}", size)
            raw = mean_ns(group, f"raw/{b}", size)
            row += f" {fmt(veil)} | {fmt(raw)} | {veil / raw:.2f} | {theirs / veil:.2f}× |"
        print(row)
