#!/bin/bash
# Device run (prepared 2026-12-05 for the next loan; package layout: everything under
# tollgate.*): scale-out of the current code, batch on 1, 2 and 4 masters x 1-8 workers, unary on 1 master; then bench load
# (one worker, ratios to the ceilings). Needs the ignored bundle .device/ (bundle.sh beside
# this script builds it: wheels in
# .device/whl, redis-server 7.0.15 with its libraries in .device/redis) and the generated
# tollgate/v1 modules carried beside the tree. Everything lands in $W, packed at the end into
# $OUT/results.tgz, with the tables in $OUT/summary.txt (only those two files: the device
# brings back at most 8). A step that fails or times out does not stop the next one.
#   bash bench/results/device-16core/run.sh          full run (about 6 min on 16 cores,
#                                                               at most BUDGET=420 s)
#   QUICK=1 bash bench/results/device-16core/run.sh  tiny settings, to test the script
set -u
cd "$(dirname "$0")/../../.." || exit 1
PY=${PY:-python3}; SITE=${SITE:-/tmp/site}; OUT=${OUT:-/tmp/out}; W=${W:-/tmp/out-work}
rm -rf "$W"; mkdir -p "$OUT" "$W"
exec > >(tee -a "$W/run.log") 2>&1
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }

finish() {
  trap - EXIT
  el "done"
  {
    echo "# device run $(date -u +%FT%TZ)${QUICK:+ (QUICK)}"
    grep -E "^(setup failed|pip install failed|python |cores:|redis-server:|\[[0-9]+ s\]|run [0-9]+:|  )" "$W/run.log"
    for s in batch unary; do
      echo; echo "## scale $s"
      cat "$W/$s/scale.md" 2>/dev/null || echo "(no scale.md)"
    done
    echo; echo "## bench load"
    cat "$W/load/results.md" 2>/dev/null || echo "(no results.md)"
  } > "$OUT/summary.txt"
  sleep 1  # the tee of run.log
  tar czf "$OUT/results.tgz" -C "$W" .
  ls -la "$OUT"
}
trap finish EXIT
die() { echo "setup failed:"; printf '%s\n' "$@" | tail -n 12 | sed 's/^/  /'; exit 1; }

# --- environment: our wheels first on the path, the bundled redis-server first on PATH ---
rm -rf "$SITE"
if ! $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .device/whl/*.whl; then
  echo "pip install failed: unpacking the wheels directly"  # none of them has a .data folder
  $PY -c "import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]" \
    "$SITE" .device/whl/*.whl || die "cannot unpack .device/whl (is .device carried?)"
fi
export PYTHONPATH="$SITE:$PWD" PATH="$PWD/.device/redis/bin:$PATH" PYTHONUNBUFFERED=1
V=$($PY -c "import sys, numpy, numba, grpc, google.protobuf as pb, redis, hiredis, matplotlib; print('python', sys.version.split()[0], sys.executable, '| numpy', numpy.__version__, '| numba', numba.__version__, '| grpc', grpc.__version__, '| protobuf', pb.__version__, '| redis-py', redis.__version__, '| hiredis', hiredis.__version__, '| matplotlib', matplotlib.__version__)" 2>&1) || die "$V"
echo "$V"
echo "cores: $(nproc); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
echo "redis-server: $(command -v redis-server); $(redis-server --version | cut -c1-40)"
case "$(command -v redis-server)" in "$PWD/.device/redis/bin/"*) ;; *) die "not the bundled redis-server";; esac
V=$($PY -c "import tollgate.v1.charging_pb2, tollgate.engine.ops.cli, tollgate.bench.scale, tollgate.bench.cli as c; assert not c.missing_bench_modules(), c.missing_bench_modules()" 2>&1) || die "$V"
el "environment ready"

if [ -n "${QUICK:-}" ]; then
  N=3000; S="--seconds 2 --warmup 1"; BW=1,2; BM=1,2; UW=1,2; UC=2; LS=2
  TC=120; TB=240; TU=120; TL=120
else
  N=20000; S="--seconds 5 --warmup 2"; BW=1,2,4,8; BM=1,2,4; UW=1,2,4,8; UC=6; LS=5
  TC=120; TB=260; TU=110; TL=110
fi

# step NAME TIMEOUT ARGS...: stdout to $W/NAME.out (and here), stderr to $W/NAME.err. No step
# runs past BUDGET seconds from the start (15 s are left for packing), whatever its own limit.
BUDGET=${BUDGET:-420}
step() {
  local name=$1 limit=$2; shift 2
  local left=$(( BUDGET - 15 - ($(date +%s) - T0) ))
  if [ "$left" -lt "$limit" ]; then limit=$left; fi
  if [ "$limit" -lt 20 ]; then el "$name: skipped (${left} s left of the budget)"; return; fi
  el "$name: start (limit $limit s)"
  timeout -k 10 "$limit" "$PY" "$@" 2> "$W/$name.err" | tee "$W/$name.out"
  local rc=${PIPESTATUS[0]}
  el "$name: exit $rc$([ "$rc" = 124 ] || [ "$rc" = 137 ] && echo ' (timed out)')"
  [ "$rc" = 0 ] || tr '\r' '\n' < "$W/$name.err" | grep -v '^ *$' | tail -n 8 | cut -c1-300 | sed 's/^/  /'
}

# Numba compiles the kernels into engine/charging/kernels/__pycache__/numba once: run 1 is
# the first start of a fresh install (compiles), run 2 a normal start (loads the cache).
step coldstart "$TC" -m tollgate bench coldstart --repeat 2 --no-progress
step batch "$TB" -m tollgate.bench.scale --masters "$BM" --workers "$BW" --api batch \
  --subscribers "$N" $S --out "$W/batch"
step unary "$TU" -m tollgate.bench.scale --masters 1 --workers "$UW" --api unary \
  --clients "$UC" --no-ceiling --subscribers "$N" $S --out "$W/unary"
step load "$TL" -m tollgate bench load --api batch --api unary --subscribers "$N" \
  --seconds "$LS" --no-progress --out "$W/load"
