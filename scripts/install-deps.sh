#!/usr/bin/env bash
# Installs the Debian 12 packages moecomm needs to build and test. Idempotent: apt runs only when
# something is missing, so repeated runs cost nothing.
set -euo pipefail

packages=(cmake g++ make ninja-build pkg-config googletest libgtest-dev libgmock-dev libfmt-dev
          clang-format libbenchmark-dev libucx-dev libopenmpi-dev openmpi-bin iproute2
          libopenblas-dev libcli11-dev nlohmann-json3-dev python3-matplotlib
          openssh-client)  # Open MPI's mpirun looks for ssh even for one-host jobs

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages: ${missing[*]}; run this script as root (or install them)" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
