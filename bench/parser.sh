#!/bin/sh
# Parser micro-benchmark: builds bench/parser.c against a Kourier build and
# Debian's libh2o (picohttpparser), runs it, prints the table.
#
#   bench/parser.sh [--build DIR] [--out DIR] [--docs] [-- PARSER-ARGS]
#
# --build DIR  an existing Kourier build (default: configure and build one
#              under the output folder, with the default flags: -O2)
# --out DIR    where the build and the binary go (/tmp/kourier-bench)
# --docs       also rewrite the parser table in docs/benchmarks.md (between
#              its bench:parser markers)
# PARSER-ARGS  passed to the benchmark: -r RUNS -t SECONDS -c CPU -k CASE
#              -P PROCS (the medians of PROCS fresh processes); or
#              -p PARSER [-k CASE] [-n ITERS], one parser untimed, a fixed
#              workload to run under a profiler (see bench/parser.c)
#
# The harness is compiled with -O2, as the Kourier build compiles the
# parser; picohttpparser is Debian's build of it (libh2o-evloop), installed
# with apt-get when missing. The benchmark is pinned to the last CPU.
# Not a test, never part of `make check`.

set -eu

here=$(cd "$(dirname "$0")" && pwd)
src=$(dirname "$here")
out=/tmp/kourier-bench
build=
docs=no

while [ $# -gt 0 ]; do
    case $1 in
    --build) build=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --docs) docs=yes; shift ;;
    --) shift; break ;;
    *) echo "usage: $0 [--build DIR] [--out DIR] [--docs] [-- ARGS]" >&2
       exit 2 ;;
    esac
done

cc=${CC:-cc}
mkdir -p "$out"

# picohttpparser: Debian ships it inside libh2o, without its header
if ! "$cc" -x c -o /dev/null - -lh2o-evloop >/dev/null 2>&1 <<'EOF'
int phr_parse_request();
int main(void) { return phr_parse_request == 0; }
EOF
then
    echo "parser.sh: installing libh2o-evloop-dev (picohttpparser)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        libh2o-evloop-dev >/dev/null
fi

if [ -z "$build" ]; then
    build=$out/parser-build
    mkdir -p "$build"
    if [ ! -f "$build/Makefile" ]; then
        echo "parser.sh: configuring Kourier in $build" >&2
        (cd "$build" && "$src/configure" -q)
    fi
fi
echo "parser.sh: building the parser in $build" >&2
make -s -C "$build" -j"$(nproc)" libkourier_core.la >/dev/null

if [ ! -f "$build/.libs/libkourier_core.a" ]; then
    echo "parser.sh: $build/.libs/libkourier_core.a is missing" >&2
    exit 1
fi

# -O2 for the harness, like the parser's own objects; only the parser's
# objects are taken from the core's archive.
"$cc" -O2 -g -Wall -Wextra -D_GNU_SOURCE \
    -I"$src/include" -I"$src/core" -I"$build" \
    -o "$out/parser" "$here/parser.c" \
    "$build/.libs/libkourier_core.a" -lh2o-evloop

cpu=$(($(nproc) - 1))
machine=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
pico=$(dpkg-query -W -f '${Version}' libh2o-evloop0.13 2>/dev/null || echo '?')
ccver=$("$cc" --version | head -n 1)
when=$(date -u '+%Y-%m-%d %H:%M UTC')
header="machine: $machine, $(nproc) CPUs, Linux $(uname -r); $when
compiler: $ccver, -O2; picohttpparser: Debian libh2o-evloop $pico
benchmark pinned to CPU $cpu"

echo "$header"
if [ "$docs" = no ]; then
    exec "$out/parser" -c "$cpu" "$@"
fi

"$out/parser" -c "$cpu" -m "$@" > "$out/parser.md"
cat "$out/parser.md"
doc=$src/docs/benchmarks.md
{
    printf '%s\n\n' "$(echo "$header" | sed 's/$/  /')"
    cat "$out/parser.md"
} > "$out/parser.block"
# Replace what lies between the markers, leave everything else as it is.
awk -v block="$out/parser.block" '
    /<!-- bench:parser:begin -->/ {
        print; while ((getline line < block) > 0) print line; skip = 1; next
    }
    /<!-- bench:parser:end -->/ { skip = 0 }
    !skip { print }
' "$doc" > "$out/benchmarks.md.new"
if ! grep -q '<!-- bench:parser:begin -->' "$doc"; then
    echo "parser.sh: $doc has no bench:parser markers" >&2
    exit 1
fi
cp "$out/benchmarks.md.new" "$doc"
echo "parser.sh: wrote the table into $doc" >&2
