#!/usr/bin/env bash
# One command for each everyday job, on a fresh Debian/Ubuntu machine with Python and apt:
#   ./dev.sh demo [--sessions N]   start Tollgate (embedded redis-server) and drive a demo
#   ./dev.sh test [pytest args]    run the test suite (starts its own redis-servers)
#   ./dev.sh serve [args]          run the server (REDIS_URL to use an existing Redis)
#   ./dev.sh lint                  ruff and mypy
#   ./dev.sh bench [pytest args]   the benchmark suites
#   ./dev.sh bench-quick           every benchmark once, unmeasured (CI: they must not rot)
#   ./dev.sh wheel                 build sdist and wheel; run the wheel from a fresh venv
# It creates .venv and installs redis-server (Debian package) when they are missing.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${TOLLGATE_VENV:-.venv}
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

apt_install() {
  echo "dev.sh: installing $* with apt-get" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

ensure_redis() {
  command -v redis-server >/dev/null || apt_install redis-server
}

ensure_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$VENV"; }
  fi
  # Reinstall when the dependencies or the .proto files (generated code) changed.
  local stamp="$VENV/.tollgate-installed"
  if [ ! -f "$stamp" ] || [ -n "$(find pyproject.toml setup.py proto -newer "$stamp" \
       \( -name '*.proto' -o -name '*.toml' -o -name '*.py' \) -not -name '*_pb2*' | head -1)" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install -q -e '.[dev]'
    touch "$stamp"
  fi
}

package_check() {
  # As a user installs it: the wheel is built from the sdist (python -m build), installed
  # into a virtual environment outside the repository, and run from there (its first demo
  # compiles the kernels into the installed package's cache, about a minute).
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  "$VENV/bin/python" -m build --outdir "$tmp/dist" . >"$tmp/build.log" 2>&1 ||
    { cat "$tmp/build.log"; return 1; }
  # One namespace of ours and no test code: the suites import the uninstalled tests package.
  local listing
  listing=$("$VENV/bin/python" -m zipfile -l "$tmp"/dist/tollgate-*.whl | awk 'NR > 1 {print $1}')
  if grep -E "^tollgate/bench/(test_|conftest)" <<<"$listing"; then
    echo "dev.sh wheel: test code in the wheel" >&2; return 1
  fi
  if grep -vE "^tollgate(/|-[^/]*\.dist-info/)" <<<"$listing"; then
    echo "dev.sh wheel: installs more than the tollgate namespace" >&2; return 1
  fi
  python3 -m venv "$tmp/venv"
  "$tmp/venv/bin/python" -m pip install -q "$tmp"/dist/tollgate-*.whl
  (cd "$tmp" && "$tmp/venv/bin/tollgate" --help >/dev/null &&
   ! "$tmp/venv/bin/python" -c "import engine" 2>/dev/null &&
   "$tmp/venv/bin/tollgate" demo --sessions 50)
}

cmd=${1:-help}
[ $# -gt 0 ] && shift
case "$cmd" in
  demo)  ensure_redis; ensure_venv; exec "$VENV/bin/tollgate" demo "$@" ;;
  serve) ensure_redis; ensure_venv; exec "$VENV/bin/tollgate" serve "$@" ;;
  test)  ensure_redis; ensure_venv; exec "$VENV/bin/python" -m pytest "$@" ;;
  lint)  ensure_venv; "$VENV/bin/ruff" check . && exec "$VENV/bin/mypy" tollgate ;;
  bench) ensure_redis; ensure_venv
         exec "$VENV/bin/python" -m pytest bench --benchmark-enable --benchmark-only "$@" ;;
  bench-quick) ensure_redis; ensure_venv
         exec "$VENV/bin/python" -m pytest bench -q --benchmark-disable -p no:cacheprovider "$@" ;;
  wheel) ensure_redis; ensure_venv; package_check ;;
  *) sed -n '2,10p' "$0"; exit 2 ;;
esac
