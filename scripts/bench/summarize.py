#!/usr/bin/env python3
"""Turn scripts/bench.sh's results directory into the markdown table it prints and writes.

Input (all written by bench.sh): runs.tsv (one line per timed run), boots.tsv (boot checks),
sources.tsv (fixture, path, virtual size, allocated size), meta.env, and the h2k-guest reports
copied as FIXTURE.TOOL.ROUND.report.json.
"""
import csv
import json
import os
import statistics
import sys

RES = sys.argv[1]
MIB = 1024 * 1024

TOOLS = [
    ("h2k", "h2k-guest fix → qcow2 (--initramfs auto)"),
    ("h2k-rebuild", "h2k-guest fix --initramfs rebuild"),
    ("h2k-z", "h2k-guest fix --compress (zstd)"),
    ("h2k-base", "baseline build: fix → qcow2 (--baseline)"),
    ("v2v", "virt-v2v -i disk -o local -of qcow2"),
    ("floor", "qemu-img convert -W -O qcow2 SRC (floor)"),
    ("floor-z", "qemu-img convert -W -c zstd SRC (floor, compressed)"),
    ("floor-same", "qemu-img convert -W of h2k's output (same data as h2k copies)"),
    ("floor-nbd", "qemu-nbd SRC + qemu-img convert + fsync (the floor through NBD)"),
    ("appliance", "guestfish --ro run (one appliance launch)"),
    ("h2k-grown", "h2k-guest fix, source grown to 100 GiB"),
    ("floor-grown", "qemu-img convert -W of the 100 GiB source"),
]


def read_tsv(name):
    path = os.path.join(RES, name)
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def fmt(x, nd=1):
    return "–" if x is None else f"{x:.{nd}f}"


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


meta = {}
with open(os.path.join(RES, "meta.env")) as f:
    for line in f:
        if "=" in line:
            k, v = line.rstrip("\n").split("=", 1)
            meta[k] = v

runs = read_tsv("runs.tsv")
boots = read_tsv("boots.tsv")
sources = {}
if os.path.exists(os.path.join(RES, "sources.tsv")):
    for line in open(os.path.join(RES, "sources.tsv")):
        parts = line.rstrip("\n").split("\t")
        if len(parts) >= 3:
            vs, alloc = (parts[2].split() + ["0", "0"])[:2]
            sources[parts[0]] = (parts[1], int(vs), int(alloc))

fixtures = []
for r in runs:
    if r["fixture"] not in fixtures:
        fixtures.append(r["fixture"])


def group(fixture, tool):
    return [r for r in runs if r["fixture"] == fixture and r["tool"] == tool]


def stats(fixture, tool):
    rs = group(fixture, tool)
    ok = [r for r in rs if r["status"] == "ok"]
    walls = [num(r["wall"]) for r in ok]
    walls = [w for w in walls if w is not None]
    return {
        "n": len(rs),
        "ok": len(ok),
        "med": med(walls),
        "idle": med([num(r["wall"]) for r in ok if r["contended"] != "1"]),
        "min": min(walls) if walls else None,
        "max": max(walls) if walls else None,
        "own": max((num(r["own_kib"]) or 0 for r in ok), default=None),
        "tree": max((num(r["tree_kib"]) or 0 for r in ok), default=None),
        "size": med([num(r["size"]) for r in ok]),
        "contended": any(r["contended"] == "1" for r in rs),
        "notes": sorted({r["note"] for r in rs if r["status"] != "ok" and r["note"]}),
        "reports": [json.load(open(r["report"])) for r in ok if r["report"] and os.path.exists(r["report"])],
    }


def stage_med(reports, stage):
    vals = []
    for rep in reports:
        for t in rep.get("timeline", []):
            if t.get("stage") == stage:
                vals.append(t.get("seconds"))
    return med(vals)


def part_med(reports, stage, part):
    vals = []
    for rep in reports:
        for t in rep.get("timeline", []):
            if t.get("stage") == stage:
                for pt in t.get("parts", []):
                    if pt.get("name") == part:
                        vals.append(pt.get("seconds"))
    return med(vals)


def part_names(S, cols, stage):
    names = []
    for t in cols:
        for rep in S[t]["reports"]:
            for tl in rep.get("timeline", []):
                if tl.get("stage") == stage:
                    for pt in tl.get("parts", []):
                        if pt.get("name") not in names:
                            names.append(pt.get("name"))
    return names


def fix_med(reports, name):
    vals = []
    for rep in reports:
        for fx in rep.get("fixes", []):
            if fx.get("name") == name:
                vals.append(fx.get("seconds"))
    return med(vals)


out = []
p = out.append
p(f"Measured {meta.get('date', '?')} on {meta.get('machine', '?')}.")
p("")
p(f"Command: `{meta.get('command', '')}` ({meta.get('rounds', '?')} round(s) per fixture, tool order "
  f"reversed every other round; whole bench {meta.get('bench_seconds', '?')} s). "
  f"{meta.get('h2k', '?')}, {meta.get('virt_v2v', '?')}, {meta.get('libguestfs', '?')}, "
  f"{meta.get('qemu', '?')}; h2k-guest's appliance: {meta.get('appliance', '?')}.")
p("")
if meta.get("contended") == "1":
    p("**Contended:** at least one run started or ran while another session's QEMU was running "
      "(marked * below); those numbers are slower than an idle machine's.")
else:
    p("No foreign QEMU ran during any measurement (the bench waits for an idle machine).")
p("")
p("Wall times in seconds; *idle median* is over the runs during which no foreign QEMU ran. *Own RSS* is the peak resident set of the measured process itself "
  "(VmHWM, sampled every 0.25 s); *tree RSS* is `/usr/bin/time -f %M`, which is the largest of the "
  "process and its waited-for children (the appliance's QEMU, qemu-img). Output size in MiB "
  "(file size).")

targets = []
for fx in fixtures:
    p("")
    src = sources.get(fx)
    if src:
        p(f"### {fx}: {os.path.basename(src[0])}, {src[1] / 2**30:.0f} GiB virtual, "
          f"{src[2] / MIB:.0f} MiB allocated")
    else:
        p(f"### {fx}")
    p("")
    p("| run | ok | median | min | max | idle median | own RSS MiB | tree RSS MiB | output MiB | note |")
    p("|---|---|---|---|---|---|---|---|---|---|")
    S = {}
    for tool, label in TOOLS:
        s = stats(fx, tool)
        S[tool] = s
        if s["n"] == 0:
            continue
        note = "; ".join(s["notes"])[:160] or ""
        if s["ok"] < s["n"] and not note:
            note = "failed"
        p(f"| {label}{' *' if s['contended'] else ''} | {s['ok']}/{s['n']} | {fmt(s['med'])} | "
          f"{fmt(s['min'])} | {fmt(s['max'])} | {fmt(s['idle'])} | "
          f"{fmt(s['own'] / 1024 if s['own'] else None)} | "
          f"{fmt(s['tree'] / 1024 if s['tree'] else None)} | "
          f"{fmt(s['size'] / MIB if s['size'] else None)} | {note} |")

    # h2k-guest per stage
    stages = ["sanity", "load", "appliance", "inspect", "fix", "convert"]
    cols = [t for t in ("h2k", "h2k-rebuild", "h2k-base", "h2k-z", "h2k-grown") if S[t]["reports"]]
    if cols:
        p("")
        p("h2k-guest per stage (median seconds, from the reports' `timeline[]` and `fixes[]`):")
        p("")
        p("| stage | " + " | ".join(cols) + " |")
        p("|---|" + "---|" * len(cols))
        for st in stages:
            p(f"| {st} | " + " | ".join(fmt(stage_med(S[t]["reports"], st)) for t in cols) + " |")
            for part in part_names(S, cols, st):
                p(f"| &nbsp;&nbsp;{st}: {part} | " + " | ".join(fmt(part_med(S[t]["reports"], st, part), 2) for t in cols) + " |")
        names = []
        for t in cols:
            for rep in S[t]["reports"]:
                for f_ in rep.get("fixes", []):
                    if f_.get("name") not in names:
                        names.append(f_.get("name"))
        for n in names:
            p(f"| &nbsp;&nbsp;fix: {n} | " + " | ".join(fmt(fix_med(S[t]["reports"], n), 2) for t in cols) + " |")
        p("| &nbsp;&nbsp;fix: rest (trim, unaccounted) | " + " | ".join(
            fmt((stage_med(S[t]["reports"], "fix") or 0) - sum(fix_med(S[t]["reports"], n) or 0 for n in names), 2)
            for t in cols) + " |")
        launches = sorted({(rep.get("appliance") or {}).get("launches") for t in cols for rep in S[t]["reports"]})
        p(f"| appliance launches per run | " + " | ".join(
            ",".join(str((rep.get("appliance") or {}).get("launches")) for rep in S[t]["reports"]) for t in cols) + " |")

    # Boots
    bs = [b for b in boots if b["fixture"] == fx]
    if bs:
        p("")
        p("Probe of the last round's outputs (`h2k-guest validate --boot --probe --bus virtio`; *whole* = multi-user, every fstab mount and swap, network up with a default route, no failed unit):")
        p("")
        p("| output | result | seconds to the probe | problems / what the console showed |")
        p("|---|---|---|---|")
        for b in bs:
            who = {"h2k": "h2k-guest (auto)", "h2k-rebuild": "h2k-guest --initramfs rebuild", "v2v": "virt-v2v"}.get(b["tool"], b["tool"])
            p(f"| {who} | {b['booted']} | {b['seconds'] if b['seconds'] == 'NA' else fmt(num(b['seconds']))} | {b['summary'][:200]} |")

    # Targets
    def ratio(a, b):
        return a / b if a is not None and b else None

    h, v = S["h2k"], S["v2v"]
    conv = stage_med(h["reports"], "convert")
    convz = stage_med(S["h2k-z"]["reports"], "convert")
    boot_h2k = next((b["booted"] for b in bs if b["tool"] == "h2k"), "not checked")
    boot_v2v = next((b["booted"] for b in bs if b["tool"] == "v2v"), "not checked")
    boot_rebuild = next((b["booted"] for b in bs if b["tool"] == "h2k-rebuild"), "not checked")
    r = ratio(h["med"], v["med"])
    if v["n"] and not v["ok"]:
        targets.append((fx, "end to end ≤ 0.5 × virt-v2v", "virt-v2v cannot convert this guest: "
                        + ("; ".join(v["notes"])[:200] or "failed"), "n/a"))
    targets.append((fx, "end to end ≤ 0.5 × virt-v2v, output whole",
                    f"{fmt(h['med'])} / {fmt(v['med'])} s = {fmt(r, 2)}"
                    + (f" (idle runs only: {fmt(h['idle'])} / {fmt(v['idle'])} s = {fmt(ratio(h['idle'], v['idle']), 2)})"
                       if h["idle"] and v["idle"] else "")
                    + f"; h2k output: {boot_h2k}, virt-v2v output: {boot_v2v}",
                    "met" if r is not None and r <= 0.5 and boot_h2k == "whole" else "MISSED" if r is not None else "n/a"))
    hr = S["h2k-rebuild"]
    if hr["n"]:
        targets.append((fx, "both initramfs strategies give a whole guest",
                        f"auto {fmt(h['med'])} s: {boot_h2k}; rebuild {fmt(hr['med'])} s: {boot_rebuild} "
                        f"(auto / rebuild = {fmt(ratio(h['med'], hr['med']), 2)})",
                        "met" if boot_h2k == "whole" and boot_rebuild == "whole" else "MISSED"))
    rb = ratio(h["med"], S["h2k-base"]["med"]) if "h2k-base" in S else None
    if rb is not None:
        targets.append((fx, "this build vs the baseline build (no slower than noise)",
                        f"{fmt(h['med'])} / {fmt(S['h2k-base']['med'])} s = {fmt(rb, 2)}",
                        "met" if rb <= 1.1 else "MISSED"))
    rz = ratio(S["h2k-z"]["med"], v["med"])
    if rz is not None:
        targets.append((fx, "(compressed) end to end ≤ 0.6 × virt-v2v",
                        f"{fmt(S['h2k-z']['med'])} / {fmt(v['med'])} s = {fmt(rz, 2)}",
                        "met" if rz <= 0.6 else "MISSED"))
    rc = ratio(conv, S["floor"]["med"])
    rcs = ratio(conv, S["floor-same"]["med"])
    rn = ratio(conv, S["floor-nbd"]["med"])
    targets.append((fx, "CONVERT ≤ 1.15 × the NBD floor",
                    f"{fmt(conv)} / {fmt(S['floor-nbd']['med'])} s = {fmt(rn, 2)} (vs the bare qemu-img floor: "
                    f"{fmt(conv)} / {fmt(S['floor']['med'])} s = {fmt(rc, 2)}; vs the same data: "
                    f"{fmt(conv)} / {fmt(S['floor-same']['med'])} s = {fmt(rcs, 2)})",
                    "met" if rn is not None and rn <= 1.15 else "MISSED" if rn is not None else "n/a"))
    rcz = ratio(convz, S["floor-z"]["med"])
    if rcz is not None:
        targets.append((fx, "(compressed) CONVERT ≤ 1.15 × compressed floor",
                        f"{fmt(convz)} / {fmt(S['floor-z']['med'])} s = {fmt(rcz, 2)}",
                        "met" if rcz <= 1.15 else "MISSED"))
    ls = [(rep.get("appliance") or {}).get("launches") for t in ("h2k", "h2k-rebuild", "h2k-z") for rep in S[t]["reports"]]
    if ls:
        targets.append((fx, "exactly one appliance launch", f"launches per run: {ls}",
                        "met" if all(x == 1 for x in ls) else "MISSED"))
    rs = ratio(h["size"], v["size"])
    if rs is not None:
        targets.append((fx, "output size ≤ virt-v2v's",
                        f"{fmt(h['size'] / MIB)} MiB vs {fmt(v['size'] / MIB)} MiB = {fmt(rs, 2)} "
                        f"(compressed: {fmt((S['h2k-z']['size'] or 0) / MIB)} MiB)",
                        "met" if rs <= 1.0 else "MISSED"))
    own = max([x for x in (h["own"], S["h2k-z"]["own"], S["h2k-grown"]["own"]) if x] or [0])
    if own:
        targets.append((fx, "h2k-guest's own peak RSS ≤ 64 MiB", f"{own / 1024:.1f} MiB",
                        "met" if own / 1024 <= 64 else "MISSED"))
    g = S["h2k-grown"]
    if g["med"] is not None and h["med"] is not None:
        gconv = stage_med(g["reports"], "convert")
        if h["idle"] and g["idle"]:  # compare like with like: both on an idle machine
            h = dict(h, med=h["idle"])
            g = dict(g, med=g["idle"])
        targets.append((fx, "100 GiB virtual, same data: about the same time",
                        f"total {fmt(g['med'])} s vs {fmt(h['med'])} s ({fmt(ratio(g['med'], h['med']), 2)}×); "
                        f"convert {fmt(gconv)} s vs {fmt(conv)} s; output {fmt((g['size'] or 0) / MIB)} MiB vs "
                        f"{fmt((h['size'] or 0) / MIB)} MiB",
                        "met" if ratio(g["med"], h["med"]) is not None and ratio(g["med"], h["med"]) <= 1.15 else "MISSED"))

if targets:
    p("")
    p("### Targets of issue 14 (this run)")
    p("")
    p("| fixture | target | measured | |")
    p("|---|---|---|---|")
    for t in targets:
        p(f"| {t[0]} | {t[1]} | {t[2]} | {t[3]} |")

print("\n".join(out))
