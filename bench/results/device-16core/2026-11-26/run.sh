#!/bin/bash
# Device run (this session): scale-out of the current code, batch on 1 and 4 masters, unary
# on 1; then bench load (one worker, ratios to the ceilings). Everything lands in $OUT.
cd "$(dirname "$0")/.." || exit 1
PY=${PY:-python3}; SITE=${SITE:-/tmp/site}; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .device/whl/*.whl || exit 1
export PYTHONPATH="$SITE:$PWD:$PWD/proto" PATH="$PWD/.device/redis/bin:$PATH" PYTHONUNBUFFERED=1
$PY -c "import sys, numpy, numba, grpc, google.protobuf as pb, redis, hiredis; print(sys.version.split()[0], 'numpy', numpy.__version__, 'numba', numba.__version__, 'grpc', grpc.__version__, 'protobuf', pb.__version__, 'redis-py', redis.__version__, 'hiredis', hiredis.__version__)" || exit 1
echo "cores: $(nproc); $(grep -m1 'model name' /proc/cpuinfo); $(redis-server --version | cut -c1-40)"
el start
if [ -n "${QUICK:-}" ]; then A="--workers 1,2 --seconds 2 --warmup 1 --subscribers 3000"; L="--seconds 2 --subscribers 3000"; else A="--seconds 6 --warmup 2"; L="--seconds 5"; fi
timeout 280 $PY -m bench.scale $A --masters 1,4 --api batch --out "$OUT/batch" 2> "$OUT/batch.err" | tee "$OUT/batch.out"
el "batch exit ${PIPESTATUS[0]}"; tail -c 600 "$OUT/batch.err"
timeout 110 $PY -m bench.scale $A --masters 1 --api unary --clients 6 --no-ceiling --out "$OUT/unary" 2> "$OUT/unary.err" | tee "$OUT/unary.out"
el "unary exit ${PIPESTATUS[0]}"; tail -c 600 "$OUT/unary.err"
timeout 110 $PY -m engine.cli bench load --api batch --api unary $L --no-progress --out "$OUT/load" > "$OUT/load.out" 2>&1
el "load exit $?"; tail -12 "$OUT/load.out"
