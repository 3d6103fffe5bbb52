"""Writes a suite's results: ``<suite>.json`` (everything), ``<suite>.md`` (tables) and ``<suite>.png``."""

from __future__ import annotations

import json
from pathlib import Path

TITLES = {
    "speed": "Training step speed (synthetic ML-100K-shaped data)",
    "eval": "Full-ranking evaluation speed (943 users, every size)",
    "speed_levers": "What each training-speed lever buys (synthetic ML-100K-shaped data)",
}

LEVER_TEXT = {
    "bf16": "bf16 autocast (fp32 master weights, loss, scan, metrics) -> fp32",
    "fused_adamw": "fused AdamW -> per-parameter loop",
    "packing": "LRU block on real positions only -> every position",
    "triangular": "block-triangular pieces -> one masked dense GEMM per nested linear",
    "cpu_scan": "step-by-step scan on CPU -> recursive doubling",
    "loss_chunks": "loss logits in chunks of half the CPU cache -> 256 MiB chunks",
    "fast_dropout": "dropout mask from 16-bit words (4 per random draw) -> torch's Bernoulli per element",
    # measured once (benchmarks/results/speed_levers.md), then removed for showing no gain
    "allocator": "glibc keeps freed blocks -> default mmap/munmap per large tensor",
}


def _fmt(s: dict, scale: float = 1.0, digits: int = 3) -> str:
    return f"{s['median'] * scale:.{digits}f} [{s['min'] * scale:.{digits}f}, {s['max'] * scale:.{digits}f}]"


def machine_lines(machine: dict) -> list[str]:
    cpu, peak = machine["cpu"], machine["matmul_peak"]
    flags = ", ".join(f for f, on in cpu["flags"].items() if on) or "none of " + ", ".join(cpu["flags"])
    lines = [
        f"- Command: `{machine['command']}`",
        f"- Commit: `{machine['git']['commit']}`"
        + (" (dirty working tree)" if machine["git"]["dirty"] else ""),
        f"- CPU: {cpu['model']}; {cpu['usable_cpus']} usable of {cpu['logical_cpus']} logical CPUs; "
        f"torch threads {machine['torch_threads']}; bf16-relevant flags: {flags}",
        f"- GPU: {', '.join(machine['gpu']) or 'none'}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()),
    ]
    for key, p in peak.items():
        m, k, n = p["shape"]
        lines.append(
            f"- Measured matmul peak {key}: {p['gflops']:.1f} GFLOP/s "
            f"(({m} x {k}) @ ({k} x {n}) {p['dtype']} tensors, median of {len(p['seconds'])})"
        )
    if (
        "bf16" in peak
        and not (cpu["flags"].get("avx512_bf16") or cpu["flags"].get("amx_bf16"))
        and not machine["gpu"]
    ):
        lines.append("- This CPU has no bf16 hardware (avx512_bf16 / amx_bf16): its bf16 matmul is emulated")
    return lines


def _precision_note(p: dict) -> str:
    if p.get("bf16") is None:
        return "each tree in the precision and AdamW options it ships (column `precision`)"
    return "every tree under bf16 autocast" if p["bf16"] else "every tree in fp32"


def tree_precisions(doc: dict) -> dict[str, str]:
    """{tree: "bf16" | "fp32" (+ ", fused AdamW")} as its worker runs reported."""
    out: dict[str, str] = {}
    for run in doc.get("runs", []):
        r = run["result"]
        text = r.get("precision", "bf16" if doc["params"].get("bf16") else "fp32")
        if doc["suite"] == "speed" and r.get("adamw_options", {}).get("fused"):
            text += ", fused AdamW"
        out.setdefault(run["tree"], text)
    return out


def ratio_table(first_column: str, ratios: dict[str, dict]) -> list[str]:
    """Markdown rows of per-pair ratios: label | median (bold) | min | max | pairs."""
    lines = [f"| {first_column} | median ratio | min | max | pairs |", "| --- | ---: | ---: | ---: | ---: |"]
    for label, r in ratios.items():
        lines.append(f"| {label} | **{r['median']:.2f}x** | {r['min']:.2f} | {r['max']:.2f} | {r['n']} |")
    return lines


def markdown(suite: str, doc: dict) -> str:
    machine, summary = doc["machine"], doc["summary"]
    peak = machine["matmul_peak"]
    speed = doc["suite"] == "speed"
    unit = "s/step" if speed else "s/pass"
    rate = ("tokens_per_s", "tokens/s") if speed else ("users_per_s", "users/s")
    p = doc["params"]
    if speed:
        what = (
            f"One AdamW training step (model.loss forward + backward, clip 1.0, step) on {doc['steps']} DISTINCT "
            f"random batches per run (after {p['warmup']} warm-up); batch {p['batch']}, max_len {p['max_len']}, "
            f"catalog {p['num_items']} items, {p['feature_dim']}-d text features, {p['num_blocks']} LRU block "
            f"(FFN {p['ffn_multiplier']}D), dropout {p['dropout']}; {_precision_note(p)}. "
            "tokens/s: non-padding target positions per step (mean) / median step time. GFLOP/s: FLOPs of one step "
            "(FlopCounterMode) / median step time."
        )
    else:
        what = (
            f"One full-ranking `evaluate_split` pass over {p['users']} users (random histories, length up to "
            f"{p['max_len']}), batch {p['eval_batch']}, catalog {p['num_items']} items, every size of the ladder; "
            f"{doc['passes']} timed passes per run after a warm-up. GFLOP/s: FLOPs of one pass (FlopCounterMode) "
            "/ median pass time."
        )
    lines = [
        f"# {TITLES[suite]}{' (quick)' if doc['quick'] else ''}",
        "",
        *machine_lines(machine),
        "",
        what,
        f"Each figure: median [min, max] over {doc['repeats']} runs, each run a fresh process (its peak RSS "
        "is that configuration's, torch import included). `ladder`: nested ladder 8..D; `single`: width D only.",
        "",
        f"| tree | precision | config | {unit} | {rate[1]} | GFLOP/s | % fp32 peak | % bf16 peak | peak RSS (MiB) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    precisions = tree_precisions(doc)
    for label, by_cfg in summary.items():
        for name, s in by_cfg.items():
            g = s["gflops"]["median"]
            fp32 = f"{100 * g / peak['fp32']['gflops']:.1f}" if "fp32" in peak else "-"
            bf16 = f"{100 * g / peak['bf16']['gflops']:.1f}" if "bf16" in peak else "-"
            lines.append(
                f"| {label} | {precisions.get(label, '-')} | {name} | {_fmt(s['seconds'])} | {_fmt(s[rate[0]], digits=0)} | "
                f"{g:.1f} | {fp32} | {bf16} | {s['peak_rss_mib']['median']:.0f} |"
            )
    overhead = (
        "Nesting overhead (median s/step of the full ladder 8..D / the single width D):"
        if speed
        else "All sizes vs the largest size alone (median s/pass of the ladder 8..D / the single width D):"
    )
    lines += ["", overhead, ""]
    for label, by_d in doc["nesting_ratio"].items():
        for d, r in by_d.items():
            lines.append(f"- {label} {d}: {r:.2f}x")
    if doc.get("published_ratio"):
        lines += [
            "",
            "## Against the published fMRLRec block (re-implemented: `recsys/bench/published.py`)",
            "",
            "Same data, same D and ladder, same process layout; the published block runs as published "
            "(fp32, per-chunk linears, complex LRU maps, square gated FFN, every position, one matmul "
            "per size). Ratio = tokens/s of this tree's default step / tokens/s of the published block, "
            "pair by pair in the same repeat.",
            "",
            *ratio_table("D", doc["published_ratio"]),
        ]
    if doc.get("ablation"):
        lines += [
            "",
            "## Without each lever",
            "",
            "Ratio = s/step without the lever / s/step with every lever, pair by pair in the same repeat "
            "(> 1: the lever makes the step faster).",
            "",
            *ratio_table(
                "lever turned off (-> what runs instead)",
                {LEVER_TEXT.get(lever, lever): r for lever, r in doc["ablation"].items()},
            ),
        ]
    if doc.get("compare"):
        c = doc["compare"]
        lines += [
            "",
            f"## Side by side: `{c['ref']}` (`{c['ref_commit']}`) vs this tree",
            "",
            f"Interleaved runs (for each repeat and config: this tree, then `{c['ref']}`), each in its own "
            "process. Ratio = time at the ref / time here (> 1: this tree is faster), one per pair.",
            "",
            *ratio_table("config", c["ratios"]),
        ]
    return "\n".join(lines) + "\n"


def plot(suite: str, doc: dict, path: Path) -> bool:
    """s/step (or s/pass) per configuration and tree, median with min-max bars: against D on a
    log2 axis when several widths were measured, else one bar per (tree, configuration)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    unit = "s/step" if doc["suite"] == "speed" else "s/pass"
    dims = {int(n.split("/")[0][1:]) for by_cfg in doc["summary"].values() for n in by_cfg}
    fig, ax = plt.subplots(figsize=(7, 4))
    if len(dims) > 1:
        kinds = sorted({n.split("/", 1)[1] for by_cfg in doc["summary"].values() for n in by_cfg})
        for label, by_cfg in doc["summary"].items():
            for kind in kinds:
                pts = sorted(
                    (int(n.split("/")[0][1:]), s["seconds"])
                    for n, s in by_cfg.items()
                    if n.split("/", 1)[1] == kind
                )
                if not pts:
                    continue
                xs = [d for d, _ in pts]
                ys = [s["median"] for _, s in pts]
                err = [[s["median"] - s["min"] for _, s in pts], [s["max"] - s["median"] for _, s in pts]]
                ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=f"{label}: {kind}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("width D")
    else:
        bars = [
            (f"{label}\n{name}", s["seconds"])
            for label, by_cfg in doc["summary"].items()
            for name, s in by_cfg.items()
        ]
        xs = range(len(bars))
        medians = [s["median"] for _, s in bars]
        err = [[s["median"] - s["min"] for _, s in bars], [s["max"] - s["median"] for _, s in bars]]
        ax.bar(xs, medians, yerr=err, capsize=3, color="tab:blue")
        ax.set_xticks(list(xs), [b[0] for b in bars], fontsize=7)
    ax.set_ylabel(f"{unit} (median, min-max)")
    ax.set_title(TITLES[suite], fontsize=9)
    if len(dims) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write(suite: str, doc: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{suite}.json", out / f"{suite}.md"]
    paths[0].write_text(json.dumps(doc, indent=1))
    paths[1].write_text(markdown(suite, doc))
    png = out / f"{suite}.png"
    png.unlink(missing_ok=True)  # a plot of another run must not sit beside these results
    if plot(suite, doc, png):
        paths.append(png)
    return paths
