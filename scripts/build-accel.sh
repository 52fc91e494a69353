#!/bin/sh
# Compiles the project's C accelerator modules for one Python interpreter (docs/image.md).
#
#   scripts/build-accel.sh PYTHON DESTROOT [SOURCE...]   each SOURCE (default: all of ACCELERATORS)
#                                                       -> DESTROOT/<dir>/<name>$EXT_SUFFIX
#   scripts/build-accel.sh --list                       the sources, one a line
#
# Used by `make venv` (PYTHON = the venv's, DESTROOT = the checkout: the module lands next to its
# source) and by the image build (image/mkosi.build.chroot: the image's /usr/bin/python3, DESTROOT =
# its dist-packages). The include directory and the file name suffix come from PYTHON's own
# sysconfig, so one script serves pyenv's 3.11, Debian's 3.11 and trixie's 3.13.
#
# The output is deterministic: no debug info, the checkout's path mapped away (-ffile-prefix-map),
# symbols stripped; the same source and toolchain give the same bytes wherever the checkout is.
# Every failure is one line "build-accel: FILE: problem" (a compiler error is followed by the
# compiler's own diagnostics).
set -eu

# The C accelerators, relative to the checkout; each NAME.c is the module of its dotted path.
ACCELERATORS="gateway/filter/_xmlfast.c gateway/filter/_jsonfast.c gateway/relay/_http1fast.c gwcore/_memtune.c"
# The libraries each one links, by source (a case per module: POSIX sh has no maps).
libs_of() {
    case "$1" in
        gateway/filter/_xmlfast.c) echo "-lexpat" ;;
        *) echo "" ;;
    esac
}

SRC=$(cd "$(dirname "$0")/.." && pwd)
CC=${CC:-gcc}
CFLAGS_ACCEL="-O2 -fPIC -shared -Wall -Werror -ffile-prefix-map=$SRC=."

die() { echo "build-accel: $*" >&2; exit 1; }

if [ "${1:-}" = --list ]; then
    for s in $ACCELERATORS; do echo "$s"; done
    exit 0
fi
[ $# -ge 2 ] || die "usage: $0 PYTHON DESTROOT [SOURCE...] | --list"
python=$1
destroot=$2
shift 2
sources=${*:-$ACCELERATORS}

command -v "$python" >/dev/null 2>&1 || die "$python: no such Python interpreter"
command -v "$CC" >/dev/null 2>&1 || die "$CC: no C compiler found: install gcc and libc6-dev (scripts/setup-host.sh)"
command -v strip >/dev/null 2>&1 || die "strip: not found: install binutils (comes with gcc)"

# include, platinclude (pyconfig.h, per architecture on Debian), EXT_SUFFIX: one line each.
info=$("$python" -c 'import sysconfig as s; p = s.get_paths()
print(p["include"]); print(p["platinclude"]); print(s.get_config_var("EXT_SUFFIX"))' 2>&1) \
    || die "$python: cannot read its sysconfig: $(echo "$info" | tail -n 1)"
include=$(echo "$info" | sed -n 1p)
platinclude=$(echo "$info" | sed -n 2p)
suffix=$(echo "$info" | sed -n 3p)
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')

tmp=$(mktemp -d)
part=""
trap 'rm -rf "$tmp" ${part:+"$part"}' EXIT

for source in $sources; do
    case " $(echo $ACCELERATORS) " in
        *" $source "*) ;;
        *) die "$source: not an accelerator of this project (the list is ACCELERATORS in $0)" ;;
    esac
    [ -f "$SRC/$source" ] || die "$SRC/$source: no such file"
    [ -f "$include/Python.h" ] \
        || die "$source: Python.h not found in $include (Python $version's headers): install python3-dev"
    out="$destroot/${source%.c}$suffix"
    mkdir -p "$(dirname "$out")" || die "$out: cannot create its directory"
    # Written beside its final name and renamed when complete: an interrupted build never leaves
    # a half-written module where Python would import it.
    part="$out.part"
    # shellcheck disable=SC2046,SC2086  # flags and libraries are word lists
    if ! (cd "$SRC" && "$CC" $CFLAGS_ACCEL -I"$include" -I"$platinclude" -o "$part" \
            "$source" $(libs_of "$source")) >"$tmp/cc.log" 2>&1; then
        if grep -q "expat.h: No such file\|cannot find -lexpat" "$tmp/cc.log"; then
            problem="libexpat's headers or library not found: install libexpat1-dev"
        elif grep -q "Python.h: No such file" "$tmp/cc.log"; then
            problem="Python.h not found: install python3-dev"
        else
            problem="does not compile for Python $version: $(grep -m 1 'error' "$tmp/cc.log" || tail -n 1 "$tmp/cc.log")"
        fi
        echo "build-accel: $source: $problem" >&2
        sed 's/^/    /' "$tmp/cc.log" >&2
        exit 1
    fi
    strip --strip-unneeded "$part" || die "$source: strip failed"
    chmod 0644 "$part"
    mv -f "$part" "$out" || die "$out: cannot write"
    part=""
    echo "build-accel: $source -> $out (Python $version)"
done
