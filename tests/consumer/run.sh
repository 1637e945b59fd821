#!/usr/bin/env bash
# Installs the built library into a temporary prefix, builds the consumer project against it with
# find_package and pkg-config, and runs both programs.
set -euo pipefail
build_dir=$1
consumer_src=$2
cmake_bin=${3:-cmake}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$cmake_bin" --install "$build_dir" --prefix "$work/prefix" >/dev/null
libdir=$(find "$work/prefix" -name 'libmoecomm.so*' -printf '%h\n' | head -n 1)
export PKG_CONFIG_PATH="$libdir/pkgconfig"
sed -i "s#^prefix=.*#prefix=$work/prefix#" "$libdir/pkgconfig/moecomm.pc"
"$cmake_bin" -S "$consumer_src" -B "$work/build" -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
"$cmake_bin" --build "$work/build" >/dev/null
LD_LIBRARY_PATH="$libdir" "$work/build/consumer"
LD_LIBRARY_PATH="$libdir" "$work/build/consumer_c"
