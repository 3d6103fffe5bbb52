#!/usr/bin/env bash
# Screenshot of a run's TensorBoard: the per-size curves, coloured and labelled by size.
#
#   scripts/tensorboard_screenshot.sh RUN_DIR OUT.png [VIEW]
#
# RUN_DIR   a training run directory (its tb/ is used) or a TensorBoard log directory itself.
# OUT.png   where the PNG goes.
# VIEW      custom_scalars (default): every metric in one chart per tag, one line per size, the
#           runs d0008, d0016, ... listed in their colours on the left (the legend); or scalars
#           (TensorBoard's Scalars page: the same per-size colours, the tags matching TAGS).
#
# Starts TensorBoard on a free port of 127.0.0.1 (--load_fast=false: the pure-Python loader, no
# extra binary), waits until it answers and lists every run, opens the page with smoothing off and
# the run selector filtered to the size runs, takes a headless Chromium screenshot and stops
# TensorBoard again whatever happens. (The Time Series page draws its charts only when scrolled
# into view, which headless Chromium does not do: it comes out empty.)
#
# Environment: TENSORBOARD (default: the repository's .venv/bin/tensorboard, else tensorboard on
# PATH), CHROMIUM (default: chromium), RUNS (run regex, default ^d\d+$: the size runs), TAGS (tag
# regex of the scalars view, default ^val/), WINDOW (CSS pixels, default 1500,940), SCALE (device
# pixels per CSS pixel, default 1.25: a 1875x1175 PNG with legible labels), BUDGET_MS (virtual
# time Chromium gives the page to draw, default 20000).
# Chromium missing?  apt-get update && apt-get install -y chromium
# Example: nice -n 19 scripts/tensorboard_screenshot.sh runs/demo/2026-01-01_12-00-00 tb.png
set -euo pipefail

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
[[ "${1:-}" == "-h" || "${1:-}" == "--help" ]] && usage 0
[[ $# -ge 2 && $# -le 3 ]] || usage

run_dir=$1
out=$(realpath -m "$2")
view=${3:-custom_scalars}
case "$view" in
  custom_scalars | scalars) ;;
  *) echo "unknown VIEW '$view' (custom_scalars | scalars)" >&2; exit 2 ;;
esac
logdir=$run_dir
[[ -d "$run_dir/tb" ]] && logdir=$run_dir/tb
[[ -d "$logdir" ]] || { echo "no such directory: $logdir" >&2; exit 2; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tensorboard=${TENSORBOARD:-}
if [[ -z "$tensorboard" ]]; then
  if [[ -x "$repo/.venv/bin/tensorboard" ]]; then tensorboard=$repo/.venv/bin/tensorboard; else tensorboard=tensorboard; fi
fi
chromium=${CHROMIUM:-chromium}
command -v "$chromium" >/dev/null || {
  echo "$chromium not found: apt-get update && apt-get install -y chromium (or set CHROMIUM=...)" >&2
  exit 1
}
command -v "$tensorboard" >/dev/null || { echo "tensorboard not found (set TENSORBOARD=...)" >&2; exit 1; }

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url=http://127.0.0.1:$port
tb_log=$(mktemp -t tensorboard.XXXXXX.log)
profile=$(mktemp -d -t chromium-profile.XXXXXX)

"$tensorboard" --logdir "$logdir" --host 127.0.0.1 --port "$port" --load_fast=false >"$tb_log" 2>&1 &
tb_pid=$!
cleanup() {
  kill "$tb_pid" 2>/dev/null || true
  wait "$tb_pid" 2>/dev/null || true
  rm -rf "$profile" "$tb_log"
}
trap cleanup EXIT

# ready = it answers and lists every run folder that holds event files
want=$(find "$logdir" -name 'events.out.tfevents.*' -printf '%h\n' | sort -u | wc -l)
for _ in $(seq 1 120); do
  if ! kill -0 "$tb_pid" 2>/dev/null; then
    echo "TensorBoard exited:" >&2; cat "$tb_log" >&2; exit 1
  fi
  runs=$(curl -sf "$url/data/runs" 2>/dev/null || true)
  if [[ -n "$runs" ]] && [[ $(python3 -c 'import json, sys; print(len(json.loads(sys.argv[1])))' "$runs") -ge "$want" ]]; then
    break
  fi
  sleep 1
done
[[ -n "${runs:-}" ]] || { echo "TensorBoard did not answer on $url:" >&2; cat "$tb_log" >&2; exit 1; }
sleep 2  # the last run's scalars finish loading

# the dashboards keep their settings in the URL fragment: no smoothing, only the runs matching RUNS
runs_regex=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "${RUNS:-^d\d+$}")
page="$url/?darkMode=false#$view&_smoothingWeight=0&regexInput=$runs_regex"
if [[ "$view" == scalars ]]; then  # and only the tags matching TAGS
  page+="&tagFilter=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "${TAGS:-^val/}")"
fi

mkdir -p "$(dirname "$out")"
rm -f "$out"
"$chromium" --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$profile" \
  --window-size="${WINDOW:-1500,940}" --force-device-scale-factor="${SCALE:-1.25}" --virtual-time-budget="${BUDGET_MS:-20000}" \
  --screenshot="$out" "$page" 2>/dev/null
[[ -s "$out" ]] || { echo "no screenshot written to $out" >&2; exit 1; }
echo "$out: $view of $logdir (runs: $runs)"
