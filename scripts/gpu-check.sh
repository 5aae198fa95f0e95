#!/usr/bin/env bash
# The GPU checks of nq-cuda (issue 8), as one short script for a machine
# with an NVIDIA GPU but possibly no Rust toolchain.
#
#   scripts/gpu-check.sh build        (here) builds the release nq-host and
#                                     the backend and GPU-vs-emulation test
#                                     binaries into gpu-check/
#   scripts/gpu-check.sh run OUTDIR   (on the GPU machine) finds the CUDA
#                                     libraries, runs every backend test with
#                                     NQ_REQUIRE_GPU=1 (a skip fails) and the
#                                     ADMM benchmark GPU vs CPU; logs to OUTDIR
#
# `run` also works straight from a checkout with cargo (it builds first when
# gpu-check/ is missing). With the device tool: build here, then
#   run(command="scripts/gpu-check.sh run $OUT", carry=["gpu-check"])
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=gpu-check

build() {
    mkdir -p "$BIN"
    cargo build --release -p nq-host
    # Test executables: (package, test target, name under $BIN).
    local pkg target name exe
    for spec in "nq-host backend backend-tests" "nq-host recon recon-tests" \
        "nq-host stats stats-tests" "nq-host kd kd-tests" \
        "nq-cuda-emu gpu emu-gpu-tests"; do
        read -r pkg target name <<<"$spec"
        exe=$(cargo test --release -p "$pkg" --test "$target" --no-run --message-format=json 2>/dev/null |
            python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[1] and m.get("executable"):
        print(m["executable"])' "$target")
        # Stripped: the device machine takes at most 64 MiB of working tree.
        strip -o "$BIN/$name" "$exe"
    done
    strip -o "$BIN/nq-host" target/release/nq-host
    ls -l "$BIN"
}

# cudarc opens libcublas.so / libcublasLt.so / libcusolver.so / libnvrtc.so
# by these names (and CUDA 12 sonames); link whatever versions this machine
# has (system CUDA or the Python wheels) under unversioned names.
find_libs() {
    local dir=/tmp/nq-cuda-libs name f
    mkdir -p "$dir"
    for name in cublas cublasLt cusolver cusparse nvrtc nvrtc-builtins nvJitLink; do
        f=$( (ldconfig -p 2>/dev/null | awk '{print $NF}'
            ls /usr/local/cuda/lib64/lib"$name".so* 2>/dev/null
            python3 - "$name" 2>/dev/null <<'PY'
import glob, site, sys
for s in site.getsitepackages():
    for p in glob.glob(f"{s}/nvidia/**/lib{sys.argv[1]}.so*", recursive=True):
        print(p)
PY
        ) | grep "/lib$name\.so" | sort -V | tail -n 1)
        if [[ -n $f ]]; then
            ln -sf "$f" "$dir/lib$name.so"
            echo "    lib$name.so -> $f"
        else
            echo "    lib$name.so: not found"
        fi
    done
    export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}

run() {
    local out=${1:?usage: scripts/gpu-check.sh run OUTDIR}
    mkdir -p "$out"
    [[ -x $BIN/backend-tests && -x $BIN/recon-tests && -x $BIN/stats-tests && -x $BIN/kd-tests &&
        -x $BIN/emu-gpu-tests ]] || build
    nvidia-smi -L | tee "$out/gpu.txt" || true
    find_libs | tee "$out/libs.txt"
    export NQ_REQUIRE_GPU=1
    "$BIN/nq-host" devices | tee -a "$out/gpu.txt"
    "$BIN/backend-tests" --nocapture --test-threads 1 2>&1 | tee "$out/backend-tests.log"
    "$BIN/emu-gpu-tests" --nocapture 2>&1 | tee "$out/emu-gpu-tests.log"
    "$BIN/recon-tests" --nocapture cuda 2>&1 | tee "$out/recon-tests.log"
    "$BIN/stats-tests" --nocapture cuda 2>&1 | tee "$out/stats-tests.log"
    "$BIN/kd-tests" --nocapture cuda 2>&1 | tee "$out/kd-tests.log"
    "$BIN/nq-host" bench admm --shapes 576x576,1536x576,4096x4096,11008x4096 --iters 10 \
        --json | tee "$out/bench-admm.json"
    "$BIN/nq-host" bench stats --json | tee "$out/bench-stats.json"
}

case "${1:-}" in
    build) build ;;
    run) run "${2:-}" ;;
    *)
        echo "usage: scripts/gpu-check.sh build | run OUTDIR" >&2
        exit 2
        ;;
esac
