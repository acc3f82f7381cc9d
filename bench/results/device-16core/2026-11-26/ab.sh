#!/bin/bash
# Device A/B: the previous commit (.device/old) against the working tree, alternating twice:
# bench.scale batch on 1 redis-server and a 4-master cluster, 1 and 8 workers.
cd "$(dirname "$0")/.." || exit 1
PY=${PY:-python3}; SITE=${SITE:-/tmp/site}; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .device/whl/*.whl || exit 1
export PATH="$PWD/.device/redis/bin:$PATH" PYTHONUNBUFFERED=1
NEW=$PWD; OLD=$PWD/.device/old
if [ -n "${QUICK:-}" ]; then A="--workers 1,2 --seconds 2 --warmup 1 --subscribers 3000"; else A="--workers 1,8 --seconds 6 --warmup 2"; fi
for round in 1 2; do
  for v in old new; do
    if [ $v = old ]; then R=$OLD; else R=$NEW; fi
    (cd "$R" && PYTHONPATH="$SITE:$R:$R/proto" timeout 110 $PY -m bench.scale $A --masters 1,4 --api batch --no-ceiling --out "$OUT/$v-$round" 2> "$OUT/$v-$round.err" | grep -E "^\| (1 redis|4-master)")
    el "$v round $round exit ${PIPESTATUS[0]}"
  done
done
