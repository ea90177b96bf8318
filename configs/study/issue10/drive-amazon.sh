#!/bin/bash
# The Amazon study's driver (issue 10, docs/issue10/study.md), as it ran: seed by seed, Amazon A with every method (the allocation
# variants too), then B and C with the core methods. Only scheduling: `doge run configs/study/issue10/amazon_X.toml`
# for X in a, b, c does the same runs in another order. Sweeps resume from their DONE markers: rerun it to
# continue (in the background: `nohup configs/study/issue10/drive-amazon.sh > /dev/null 2>&1 &`); runs/study/drive.log
# records what ran when.
cd "$(dirname "$0")/../../.."
export DOGE_DATA_DIR=${DOGE_DATA_DIR:-../shared/data/dogetickets}
mkdir -p runs/study
while pgrep -f "doge run configs/study" > /dev/null; do sleep 20; done  # one study process at a time
CORE='tickets.methods=["random-balanced", "winning-balanced", "doge-balanced", "doge-nc-balanced"]'
for seed in 0 1 2; do
  for s in a b c; do
    if [ "$s" = a ]; then methods=(); else methods=(--set "$CORE"); fi
    echo "$(date -u +%FT%TZ) start $s seed $seed" >> runs/study/drive.log
    .venv/bin/doge run "configs/study/issue10/amazon_$s.toml" -q --set "run.seeds=[$seed]" "${methods[@]}" >> "runs/study/run_$s.log" 2>&1
    echo "$(date -u +%FT%TZ) end $s seed $seed rc=$?" >> runs/study/drive.log
  done
done
echo "$(date -u +%FT%TZ) ALLDONE" >> runs/study/drive.log
