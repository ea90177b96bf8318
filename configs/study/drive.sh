#!/bin/bash
# The study's driver (issue 10, docs/study.md): seed 0 of every split first, then seeds 1 and 2, then the
# allocation variants of Amazon A. Only scheduling: `doge run configs/study/amazon_X.toml` for X in a, b, c
# does the same runs in another order. Sweeps resume from their DONE markers: rerun to continue.
cd "$(dirname "$0")/../.."
export DOGE_DATA_DIR=${DOGE_DATA_DIR:-../shared/data/dogetickets}
CORE='tickets.methods=["random-balanced", "winning-balanced", "doge-balanced", "doge-nc-balanced"]'
for seed in 0 1 2; do
  for s in a b c; do
    echo "$(date -u +%FT%TZ) start core $s seed $seed" >> runs/study/drive.log
    .venv/bin/doge run configs/study/amazon_$s.toml -q --set "run.seeds=[$seed]" --set "$CORE" >> runs/study/run_$s.log 2>&1
    echo "$(date -u +%FT%TZ) end core $s seed $seed rc=$?" >> runs/study/drive.log
  done
done
for seed in 0 1 2; do
  echo "$(date -u +%FT%TZ) start all a seed $seed" >> runs/study/drive.log
  .venv/bin/doge run configs/study/amazon_a.toml -q --set "run.seeds=[$seed]" >> runs/study/run_a.log 2>&1
  echo "$(date -u +%FT%TZ) end all a seed $seed rc=$?" >> runs/study/drive.log
done
echo "$(date -u +%FT%TZ) ALLDONE" >> runs/study/drive.log
