#!/usr/bin/env python3
"""Print one run's figures side by side: Slipway, the tar -x floor and the baseline, per phase,
with Slipway / best-baseline ratios and the issue's targets.

    bench/table.py DIR     (DIR holds slipway-<rep>.txt and, if the baseline ran, baseline.log;
                            with several repetitions every figure is the median)
"""
import glob
import os
import statistics
import sys


def parse_slipway(path):
    phases, extra = {}, {}
    for line in open(path):
        key, *vals = line.split()
        if key in ("full", "incr", "rollback"):
            wall, wire, cpu, rss, skew = vals
            phases[key] = dict(wall=float(wall), wire=int(wire), cpu=float(cpu), rss_kb=int(rss), skew_ms=int(skew))
        else:
            extra[key] = vals[0]
    return phases, extra


def median_of(runs):
    """Per phase and metric, the median over repetitions."""
    phases, extra = {}, dict(runs[0][1])
    for phase in ("full", "incr", "rollback"):
        got = [r[0][phase] for r in runs if phase in r[0]]
        if got:
            phases[phase] = {k: statistics.median(g[k] for g in got) for k in got[0]}
    for key in ("floor_s", "agent_rss_kb"):
        vals = [float(r[1][key]) for r in runs if key in r[1]]
        if vals:
            extra[key] = str(statistics.median(vals))
    extra["reps"] = str(len(runs))
    return phases, extra


def parse_baseline(path):
    rows = {}
    if not os.path.exists(path):
        return rows
    for line in open(path):
        if not line.startswith("variant="):
            continue
        kv = dict(f.split("=", 1) for f in line.split() if "=" in f)
        rows.setdefault((kv["variant"], kv["phase"]), []).append(dict(
            wall=float(kv["wall_s"]),
            wire=int(kv["bytes_wire"]),
            cpu=float(kv["cpu_s"]),
            skew_ms=round(float(kv["switch_skew_s"]) * 1000),
        ))
    return {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in rows.items()}


def mb(n):
    return f"{n / 1e6:.2f} MB"


def main():
    run = sys.argv[1]
    files = sorted(glob.glob(os.path.join(run, "slipway-*.txt")))
    if not files:
        sys.exit(f"no slipway-*.txt in {run}")
    phases, extra = median_of([parse_slipway(f) for f in files])
    base = parse_baseline(os.path.join(run, "baseline.log"))
    floor = float(extra.get("floor_s", "nan"))
    agent_rss = float(extra.get("agent_rss_kb", "0"))
    print(f"== {extra.get('preset')} n={extra.get('n')} reuse={extra.get('reuse')} (fresh fs: {extra.get('fresh_fs')}; "
          f"median of {extra['reps']} run(s))")
    print(f"{'phase':<9}{'who':<9}{'wall_s':>8}{'wire':>12}{'cpu_s':>8}{'ctl_rss':>10}{'agent_rss':>11}{'skew_ms':>9}")
    for phase in ("full", "incr", "rollback"):
        s = phases.get(phase)
        if not s:
            continue
        print(f"{phase:<9}{'slipway':<9}{s['wall']:>8.2f}{mb(s['wire']):>12}{s['cpu']:>8.2f}"
              f"{s['rss_kb'] / 1024:>7.1f} MB{agent_rss / 1024:>8.1f} MB{s['skew_ms']:>9.0f}")
        best = None
        for variant in ("walle", "rsync"):
            b = base.get((variant, phase))
            if not b:
                continue
            # The baseline's cpu_s is the whole fleet's (sshd, tar, rsync on every host).
            print(f"{'':<9}{variant:<9}{b['wall']:>8.2f}{mb(b['wire']):>12}{b['cpu']:>7.2f}*{'':>10}{'':>11}"
                  f"{b['skew_ms']:>9.0f}")
            best = b if best is None or b["wall"] < best["wall"] else best
        notes = []
        if best:
            notes.append(f"slipway/best wall {s['wall'] / best['wall']:.2f}")
        if phase == "full" and floor == floor:
            notes.append(f"floor {floor:.2f} s, slipway/floor {s['wall'] / floor:.2f}")
        if phase == "incr" and "full" in phases and phases["full"]["wire"]:
            notes.append(f"wire {100 * s['wire'] / phases['full']['wire']:.3f}% of full")
            rsync = base.get(("rsync", "incr"))
            if rsync and rsync["wire"]:
                notes.append(f"wire/rsync {s['wire'] / rsync['wire']:.3f}")
        if notes:
            print(f"{'':<9}{'':<9}" + "; ".join(notes))
    if base:
        print("* baseline cpu_s: the whole fleet's CPU (controller, sshd, tar/rsync on every host)")
    instr = [(p, extra.get(f"instr_{p}")) for p in ("full", "incr", "rollback")]
    if any(v for _, v in instr):
        print("controller instructions (callgrind, slipctl only; wall and cpu above are valgrind's): "
              + ", ".join(f"{p} {int(v):,}" for p, v in instr if v))


if __name__ == "__main__":
    main()
