#!/bin/bash
# The study's driver (docs/study.md): only scheduling, one `doge run` after another, seed by seed, so that
# every dataset has seed 0 before any has seed 1. `doge run configs/study/<name>.toml --out <dir>` for each
# name does the same runs in another order. Sweeps resume from their DONE markers: rerun it to continue, in
# the background:  nohup configs/study/drive.sh > /dev/null 2>&1 &
# Run directories live outside the work tree (a new session lays the work tree anew): $DOGE_STUDY_DIR,
# default ../runs/study beside it; drive.log there records what ran when. $DOGE: the doge command (default
# .venv/bin/doge; e.g. "python -m dogetickets.cli" with PYTHONPATH on a snapshot of the code).
# The order: each seed of MNLI, OntoNotes and Amazon A, B, C (one protocol: issue 23), then Table 4 (MNLI
# with 4 and 3 training genres). `configs/study/drive.sh report` writes docs/study.md from the run directories
# (`doge report`; given with MNLI, the 4- and 3-genre runs form its Table 4 section). Issue 10's Amazon runs:
# configs/study/issue10/drive-amazon.sh.
cd "$(dirname "$0")/../.."
export DOGE_DATA_DIR=${DOGE_DATA_DIR:-../shared/data/dogetickets}
STUDY=${DOGE_STUDY_DIR:-../runs/study}
read -r -a DOGE <<< "${DOGE:-.venv/bin/doge}"
NAMES=(mnli ontonotes amazon_a amazon_b amazon_c mnli-4 mnli-3)  # the run order: Table 2's five datasets, then Table 4's
if [ "${1:-}" = report ]; then  # configs/study/drive.sh report [doge report options, e.g. --seeds 0]: docs/study.md
  shift
  dirs=()  # in the paper's column order: Amazon A, B, C, MNLI, OntoNotes (then Table 4's MNLI variants)
  for name in amazon_a amazon_b amazon_c mnli ontonotes mnli-4 mnli-3; do [ -d "$STUDY/$name" ] && dirs+=("$STUDY/$name"); done
  exec "${DOGE[@]}" report "${dirs[@]}" --out docs/study.md --title "Does it work? The doge tickets study" \
    --command "./scripts/setup.sh" \
    --command "nohup configs/study/drive.sh > /dev/null 2>&1 &   # every dataset and seed, in the background; rerun to resume" \
    --command "configs/study/drive.sh report   # doge report of the study's run directories into docs/study.md" "$@"
fi
mkdir -p "$STUDY"
# The study's configs pin bf16: on a CPU without native bf16 (and no GPU) it would be emulated, several times
# slower: the driver does not start there (rather than crawl, or mix precisions within the study).
if ! grep -qE "avx512_bf16|amx_bf16" /proc/cpuinfo && ! command -v nvidia-smi > /dev/null; then
  echo "$(date -u +%FT%TZ) not started: this CPU has neither avx512_bf16 nor amx_bf16 (the study pins bf16)" >> "$STUDY/drive.log"
  exit 1
fi
while pgrep -f "dogetickets.cli run configs/study|doge run configs/study" > /dev/null; do sleep 20; done  # one at a time
step() {  # step NAME SEED: one seed of configs/study/NAME.toml
  echo "$(date -u +%FT%TZ) start $1 seed $2" >> "$STUDY/drive.log"
  "${DOGE[@]}" run "configs/study/$1.toml" -q --out "$STUDY/$1" --set "run.seeds=[$2]" >> "$STUDY/run_$1.log" 2>&1
  echo "$(date -u +%FT%TZ) end $1 seed $2 rc=$?" >> "$STUDY/drive.log"
}
for seed in 0 1 2; do for name in "${NAMES[@]:0:5}"; do step "$name" "$seed"; done; done
for seed in 0 1 2; do step mnli-4 $seed; step mnli-3 $seed; done
echo "$(date -u +%FT%TZ) ALLDONE" >> "$STUDY/drive.log"
