"""``recsys-bench SUITE [--quick] [--compare GIT_REF] [--repeats N] [--out DIR]``: the one benchmark command.

Suites:

- ``speed``: training step time (s/step, tokens/s, achieved GFLOP/s and its share of the measured
  fp32 / bf16 matmul peaks, peak RSS) at D=256 and D=1024 (``--quick``: D=1024, fewer steps), for
  the nested ladder 8..D and the single width D (nesting overhead).
- ``eval``: one full-ranking evaluation pass over 943 users at every size (s/pass), all sizes vs
  the largest size alone.
- ``serving``, ``scale``: run ``python -m benchmarks.serving`` / ``benchmarks.scale`` from a source
  checkout (arguments after ``--`` are passed on, e.g. ``recsys-bench serving -- --run-dir RUN``);
  they write their own result files (benchmarks/results/serving.md, scale.{md,json,png}).
- ``quality``: trains named recipes over >= 3 seeds, nested and independent, and reports test
  metrics at every size as mean +- std (``recsys/bench/quality.py``; ``recsys-bench quality --help``).

``--compare REF`` checks REF out into a temporary git worktree and runs every measurement of the
suite in both trees, interleaved (this tree, REF, this tree, REF, ...), each in its own process;
the report gives each pair's ratio and their median. Every result records the machine (CPU model,
bf16 flags, cores, torch threads, measured fp32/bf16 matmul peaks, GPU), versions, commit and
the command line. Results go to ``benchmarks/results/<suite>.{md,json,png}`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from recsys.bench import machine, report, suites

ROOT = Path(__file__).resolve().parents[2]  # the source checkout holding recsys/ (and benchmarks/)
SCRIPTS = {"serving": "benchmarks.serving", "scale": "benchmarks.scale"}
# --quick for the script suites (arguments after -- come later and win)
QUICK_SCRIPT_ARGS = {
    "serving": ["--quick"],
    "scale": ["--items", "100000", "--steps", "2"],
}


def default_out() -> Path:
    return (ROOT if (ROOT / "benchmarks").is_dir() else Path.cwd()) / "benchmarks" / "results"


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    parser = argparse.ArgumentParser(
        prog="recsys-bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("suite", choices=[*suites.MEASURED, *SCRIPTS, "quality"])
    parser.add_argument("--quick", action="store_true", help="D=1024 only, fewer steps/passes")
    parser.add_argument(
        "--compare", metavar="GIT_REF", help="also measure GIT_REF, interleaved, and report ratios"
    )
    parser.add_argument("--repeats", type=int, default=3, help="fresh-process runs per configuration (>= 3)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: usable CPUs)")
    parser.add_argument("--dims", type=int, nargs="+", help="widths D to measure (default: the suite's)")
    parser.add_argument("--steps", type=int, help="timed training steps per run (speed)")
    parser.add_argument("--passes", type=int, help="timed evaluation passes per run (eval)")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument(
        "--bf16", dest="bf16", action="store_const", const=True, help="every tree under CPU bf16 autocast"
    )
    precision.add_argument(
        "--fp32", dest="bf16", action="store_const", const=False, help="every tree in fp32"
    )
    parser.add_argument(
        "--only",
        choices=["ladder", "single", "published"],
        help="measure only the nested ladder, the single width or the published block",
    )
    parser.add_argument(
        "--ablate",
        action="store_true",
        help="speed: the default step at the largest D with every lever, then without each one",
    )
    parser.add_argument("--no-peak", action="store_true", help="skip the matmul peak measurement (tests)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args, extra


def worktree(ref: str) -> tuple[Path, str]:
    """A detached git worktree of ``ref`` under a temporary folder; returns (path, commit)."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    path = Path(tempfile.mkdtemp(prefix="recsys-bench-")) / commit[:12]
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), commit],
        capture_output=True,
        text=True,
        check=True,
    )
    return path, commit


def remove_worktree(path: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], capture_output=True)
    shutil.rmtree(path.parent, ignore_errors=True)
    subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], capture_output=True)


def run_script(suite: str, quick: bool, extra: list[str]) -> int:
    if not (ROOT / "benchmarks" / f"{suite}.py").is_file():
        raise SystemExit(
            f"recsys-bench {suite} needs a source checkout (benchmarks/{suite}.py next to recsys/)"
        )
    cmd = [sys.executable, "-m", SCRIPTS[suite], *(QUICK_SCRIPT_ARGS[suite] if quick else []), *extra]
    print("running:", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT).returncode


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["quality"]:  # its own options (recipes, seeds, modes): recsys/bench/quality.py
        from recsys.bench import quality

        quality.main(argv[1:])
        return
    args, extra = parse_args(argv)
    if args.suite in SCRIPTS:
        if args.compare:
            raise SystemExit(f"--compare is not supported for {args.suite}")
        raise SystemExit(run_script(args.suite, args.quick, extra))
    threads = args.threads or machine.cpu_info()["usable_cpus"]
    overrides = {"dims": args.dims, "steps": args.steps, "passes": args.passes, "bf16": args.bf16}
    if args.ablate and (args.suite != "speed" or args.compare):
        raise SystemExit("--ablate is for the speed suite, without --compare")
    if args.ablate:
        cfgs = suites.ablation_configs(args.quick, threads, overrides)
    else:
        cfgs = suites.configs(args.suite, args.quick, threads, overrides)
    if args.only:
        cfgs = [c for c in cfgs if c.name.endswith("/" + args.only)]
    print(f"[{args.suite}] machine and matmul peaks ...", flush=True)
    info = machine.describe(ROOT, threads, peaks=not args.no_peak)
    trees = {"this tree": ROOT}
    compare, wt = None, None
    try:
        if args.compare:
            wt, commit = worktree(args.compare)
            trees[args.compare] = wt
            compare = {"ref": args.compare, "ref_commit": commit}
        runs, summary = suites.run_suite(
            args.suite, trees, cfgs, args.repeats, log=lambda m: print(m, flush=True)
        )
    finally:
        if wt is not None:
            remove_worktree(wt)
    if compare:
        compare["ratios"] = suites.pair_ratios(runs, args.suite, cfgs, args.compare, "this tree")
    first = cfgs[0].params
    doc = {
        "suite": args.suite,
        "quick": args.quick,
        "repeats": args.repeats,
        "steps": first["steps"],
        "passes": first["passes"],
        "params": {k: v for k, v in first.items() if k not in ("ladder", "suite")},
        "configs": {c.name: c.params["ladder"] for c in cfgs},
        "machine": info,
        "summary": summary,
        "nesting_ratio": suites.nesting_ratios(summary, cfgs),
        "compare": compare,
        "ablation": suites.ablation_ratios(runs, cfgs) if args.ablate else None,
        "published_ratio": suites.published_ratios(runs, cfgs) if args.suite == "speed" else {},
        "runs": runs,
    }
    out = args.out or default_out()
    paths = report.write("speed_levers" if args.ablate else args.suite, doc, out)
    print(Path(paths[1]).read_text())
    print("wrote", ", ".join(str(p) for p in paths))
    if os.environ.get("RECSYS_BENCH_PRINT_JSON"):
        print(json.dumps(doc["summary"]))


if __name__ == "__main__":
    main()
