#!/usr/bin/env bash
# Build libfuse >= 3.17 into the project's virtualenv when the system's is older (issue 16):
# kernel passthrough needs libfuse 3.17's fuse_file_info and backing-id calls.
#
#   tools/build-libfuse.sh VENV
#
# The system's libfuse stays as it is (fusermount3 comes from it).
# Leaves VENV/lib/wsfs-libfuse/libfuse3.so.3 (wsfs's binding loads it from there, see
# wsfs/fuse/binding.py) and VENV/lib/wsfs-libfuse/passthrough_hp (libfuse's C example, the
# benchmark's ceiling).  The source is Debian trixie's fuse3 package, fetched through apt with a
# private configuration: the system's apt setup is neither read for sources nor changed.
# Never fails the caller: when it cannot build, it says why and wsfs runs on the system's libfuse
# (without passthrough).
set -uo pipefail

venv=${1:?usage: build-libfuse.sh VENV}
dest="$venv/lib/wsfs-libfuse"
want=3.17
suite=${WSFS_LIBFUSE_SUITE:-trixie}

notice() { echo "libfuse: $*" >&2; }
give_up() { notice "$*"; notice "wsfs runs on the system's libfuse $(system_version): no kernel passthrough"; exit 0; }

system_version() {
    local lib
    lib=$(ldconfig -p 2>/dev/null | awk '/libfuse3\.so\.3 /{print $NF; exit}')
    [ -n "$lib" ] && readlink -f "$lib" | sed -n 's/.*libfuse3\.so\.\([0-9.]*\)$/\1/p'
}

newer_or_same() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }

if [ -e "$dest/libfuse3.so.3" ] && [ -x "$dest/passthrough_hp" ]; then
    exit 0
fi
# WSFS_LIBFUSE_FROM=DIR: one built before (make install takes the checkout's .venv's)
from=${WSFS_LIBFUSE_FROM:-}
if [ -n "$from" ] && [ -e "$from/libfuse3.so.3" ] && [ -x "$from/passthrough_hp" ]; then
    mkdir -p "$dest" && cp -a "$from"/. "$dest"/ && echo "libfuse: $(readlink "$dest/libfuse3.so.3") copied into $dest"
    exit 0
fi
have=$(system_version)
if [ -n "$have" ] && newer_or_same "$have" "$want" && [ -z "${WSFS_LIBFUSE_BUILD:-}" ]; then
    echo "libfuse: the system's $have has passthrough; using it"
    exit 0
fi
[ "${WSFS_LIBFUSE_BUILD:-}" = "0" ] && give_up "WSFS_LIBFUSE_BUILD=0: not building libfuse $want"
command -v apt-get >/dev/null 2>&1 || give_up "no apt-get to fetch libfuse $want's source"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 && SUDO=sudo || give_up "not root and no sudo: cannot install meson"
fi
need=""
for tool in meson:meson ninja:ninja-build gcc:gcc pkg-config:pkg-config; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || need="$need ${tool#*:}"
done
if [ -n "$need" ]; then
    echo "libfuse: installing the build tools:$need"
    { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null; } ||
        give_up "could not install$need"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/src"
echo "deb-src http://deb.debian.org/debian $suite main" > "$work/sources.list"
apt=(-o Dir::Etc::SourceList="$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
     -o Dir::State::Lists="$work/lists" -o APT::Sandbox::User=root)
echo "libfuse: fetching fuse3's source from Debian $suite"
apt-get "${apt[@]}" -qq update >/dev/null 2>&1 || give_up "apt-get update of Debian $suite's sources failed (offline?)"
(cd "$work/src" && apt-get "${apt[@]}" -qq source --download-only fuse3 >/dev/null 2>&1) ||
    give_up "apt-get source fuse3 from Debian $suite failed"
orig=$(ls "$work"/src/fuse3_*.orig.tar.gz "$work"/src/fuse3_*.orig.tar.xz 2>/dev/null | head -n1)
[ -n "$orig" ] || give_up "no upstream tarball in Debian $suite's fuse3 source"
version=$(basename "$orig" | sed -n 's/^fuse3_\([0-9.]*\)\.orig.*/\1/p')
newer_or_same "$version" "$want" || give_up "Debian $suite has libfuse $version, older than $want"
tar -xf "$orig" -C "$work/src"
tree=$(find "$work/src" -mindepth 1 -maxdepth 1 -type d -name 'fuse-*' | head -n1)
echo "libfuse: building $version"
(cd "$tree" && meson setup build -Dexamples=true -Dutils=false -Dtests=false -Ddisable-mtab=true \
        --buildtype=release >"$work/build.log" 2>&1 && ninja -C build >>"$work/build.log" 2>&1) ||
    { tail -n 20 "$work/build.log" >&2; give_up "building libfuse $version failed"; }
mkdir -p "$dest"
lib=$(find "$tree/build/lib" -name "libfuse3.so.$version" | head -n1)
# 3.17's soname is libfuse3.so.4 (passthrough_hp asks for it); wsfs loads the path libfuse3.so.3
soname=$(objdump -p "$lib" 2>/dev/null | awk '/SONAME/{print $2}')
cp "$lib" "$dest/" && ln -sfn "libfuse3.so.$version" "$dest/libfuse3.so.3" &&
    { [ -z "$soname" ] || ln -sfn "libfuse3.so.$version" "$dest/$soname"; } &&
    cp "$tree/build/example/passthrough_hp" "$dest/passthrough_hp" || give_up "copying the build failed"
echo "libfuse: $version in $dest (passthrough_hp beside it)"
