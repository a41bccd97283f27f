"""The report both side-by-side probes print (probes/ab_hit_miss.py on Lua,
kernel/ab_hit_miss.py on the kernel's backends): one table row per binary from
its wall times and its `ltocache stats --json` after the misses and the hits."""


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * p))] * 1e3


def print_table(bins, wall, hit, miss, compiler_share=False):
    """compiler_share adds own CPU per miss as a share of the compiler's CPU on those misses."""
    share_head = "miss own CPU / compiler CPU | " if compiler_share else ""
    print("| binary | hit p50 ms | hit p90 ms | own CPU per hit ms | own CPU per miss ms | "
          f"{share_head}pass-through p50 ms | hits | misses |")
    print("|---|---:|---:|---:|---:|" + ("---:|" if compiler_share else "") + "---:|---:|---:|")
    for t in bins:
        h, m = hit[t], miss[t]
        share = ""
        if compiler_share:
            share = f"{100 * m['own_cpu_seconds_on_misses'] / max(1e-9, m['compiler_cpu_seconds_on_misses']):.2f} % | "
        print(f"| {t} | {pct(wall[(t, 'hit')], .5):.2f} | {pct(wall[(t, 'hit')], .9):.2f} | "
              f"{h['own_cpu_seconds_on_hits'] * 1e3 / max(1, h['hits']):.3f} | "
              f"{m['own_cpu_seconds_on_misses'] * 1e3 / max(1, m['misses']):.3f} | "
              f"{share}{pct(wall[(t, 'pass')], .5):.2f} | {h['hits']} | {m['misses']} |")
