#!/usr/bin/env python3
"""Print the SFrame benchmark table (markdown) from criterion's results in target/criterion.

Run after `cargo bench -p veil-sframe --features ring --bench sframe`. Ratios compare figures
of the same run: `× sframe crate` = the sframe crate's time on the same AEAD backend / Veil's
time (higher is better for Veil); `Veil/raw` = Veil time / raw AEAD time of the same backend
(1.00 = no overhead). Results of older runs that measured the sframe crate on RustCrypto only
are compared with that for every backend, as they were then.
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
def crate_backend(b):
    """The sframe crate's figures on backend `b`, or on RustCrypto if `b` was not measured."""
    for name in (f"sframe-crate/{b}", "sframe-crate/rustcrypto"):
        if os.path.isdir(os.path.join(root, "encrypt", name.replace("/", "_"))) or os.path.isdir(
            os.path.join(root, "encrypt", *name.split("/"))
        ):
            return name
    raise SystemExit(f"no sframe-crate results in {root}")


for group in ("encrypt", "decrypt"):
    print(f"\n**{group}** (AES_128_GCM_SHA256_128, mean per frame)\n")
    head = "| size |"
    sep = "|---|"
    for b in backends:
        head += f" sframe crate {b} | Veil {b} | raw {b} | Veil/raw | × sframe crate ({b}) |"
        sep += "---|---|---|---|---|"
    print(head)
    print(sep)
    for size in SIZES:
        row = f"| {label(size)} |"
        for b in backends:
            theirs = mean_ns(group, crate_backend(b), size)
            veil = mean_ns(group, f"veil/{b}", size)
            raw = mean_ns(group, f"raw/{b}", size)
            row += (
                f" {fmt(theirs)} | {fmt(veil)} | {fmt(raw)} | {veil / raw:.2f} |"
                f" {theirs / veil:.2f}× |"
            )
        print(row)
