#!/usr/bin/env bash
# Dependencies point one way: include <- src -> transport, kernels; transport and kernels see only
# src/core. Fails naming the file and the include that breaks the rule.
set -euo pipefail
root=${1:-.}
cd "$root"
fail=0
check() {  # folder, forbidden include prefix regex, reason
  local hits
  hits=$(grep -rnE "#include \"($2)" "$1" --include='*.hpp' --include='*.cpp' --include='*.h' \
         --include='*.cu' --include='*.cuh' || true)
  if [ -n "$hits" ]; then
    echo "layering violation ($3):"
    echo "$hits"
    fail=1
  fi
}
check include 'src/|transport/|kernels/' "public headers include only public headers"
check transport 'src/(bootstrap|routing|ep|experts|capi|group)|kernels/' "transport sees src/core only"
check kernels 'src/(bootstrap|routing|ep|experts|capi|group)|transport/' "kernels see src/core only"
check src/core 'src/(bootstrap|routing|ep|experts|capi|group)|transport/' "core is the bottom layer"
if [ "$fail" -eq 0 ]; then echo "layering: OK"; fi
exit "$fail"
