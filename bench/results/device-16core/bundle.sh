#!/bin/bash
# Builds the ignored bundle .device/ that run.sh needs on a lent device machine (Python 3.12,
# no network, no redis-server): cp312 wheels of what its image lacks or has in another
# version, and this machine's redis-server with its shared libraries behind a wrapper that
# gives them to redis alone. Run here, from anywhere; then carry .device and tollgate/v1.
set -eu
cd "$(dirname "$0")/../../.."
grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude
rm -rf .device && mkdir -p .device/whl .device/redis/bin .device/redis/lib .device/redis/libexec
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .device/whl \
  redis==8.2.0 hiredis==3.5.0 grpcio==1.85.3 grpcio-health-checking==1.85.1 \
  grpcio-reflection==1.85.1 protobuf==7.36.2 starlette==1.10.0 uvicorn==0.55.0 \
  matplotlib==3.11.2 pillow==13.0.0 kiwisolver==1.5.1 pyparsing==3.3.3 cycler==0.12.1 \
  python-dateutil==4.0.0 tzdata==2026.6 packaging==26.4
# /usr/bin/redis-server is a link to redis-check-rdb on Debian: the name it runs under picks
# its mode, so the target is copied under the server's name.
cp "$(readlink -f "$(command -v redis-server)")" .device/redis/libexec/redis-server
ldd .device/redis/libexec/redis-server | awk '/=> \//{print $3}' \
  | grep -vE '/(libc|libm|libstdc\+\+|libgcc_s|ld-linux[^/]*)\.so' \
  | xargs -I{} cp -L {} .device/redis/lib/
cat > .device/redis/bin/redis-server <<'SH'
#!/bin/sh
# Bundled redis-server with its own shared libraries (only this process sees them).
HERE=$(cd "$(dirname "$0")/.." && pwd)
LD_LIBRARY_PATH="$HERE/lib" exec "$HERE/libexec/redis-server" "$@"
SH
chmod +x .device/redis/bin/redis-server
du -sh .device
