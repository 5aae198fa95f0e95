#!/usr/bin/env bash
# The main job, end to end, on a fresh machine:
#   1. fetch the demo model (SmolLM2-135M-Instruct GGUF) and texts if missing,
#   2. build nq-host (release),
#   3. quantize the model to 1.0 bits per weight (cpu preset, calibration on
#      the Brown corpus),
#   4. evaluate FP and quantized perplexity on Botchan (ctx 512, 16 windows),
#   5. generate a short continuation with the quantized model,
#   6. print a summary.
#
# Environment: BPW (default 1.0), METHOD (nanoquant), PRESET (cpu),
# WINDOWS (16), OUT (out/), PROMPT, QUANT_ARGS (extra `nq-host quantize`
# flags, e.g. "--recipe admm-only" for a fast run without reconstruction).
#
# With the cpu preset the quantization takes about 30 minutes on a
# 2-core machine (statistics, ADMM and block reconstruction of 210 layers).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

BPW="${BPW:-1.0}"
METHOD="${METHOD:-nanoquant}"
PRESET="${PRESET:-cpu}"
WINDOWS="${WINDOWS:-16}"
OUT="${OUT:-out}"
PROMPT="${PROMPT:-Once upon a time, in a small village,}"
QUANT_ARGS="${QUANT_ARGS:-}"
MODEL="assets/SmolLM2-135M-Instruct.Q4_1.gguf"
BLOB="$OUT/smollm2-${METHOD}-${BPW}bpw.nqb"

say() { printf '\n==> %s\n' "$*"; }

if ! command -v cargo >/dev/null 2>&1; then
    echo "quickstart: cargo not found; install Rust from https://rustup.rs" >&2
    exit 1
fi

say "assets"
if [[ -f $MODEL && -f assets/botchan.txt && -f assets/brown.txt ]]; then
    echo "    present in assets/"
else
    scripts/fetch-assets.sh
fi

say "build (release)"
cargo build --release -q -p nq-host
NQ="$ROOT/target/release/nq-host"
mkdir -p "$OUT"

say "quantize: $METHOD, $BPW bpw, preset $PRESET"
# shellcheck disable=SC2086 # QUANT_ARGS is a list of flags
"$NQ" quantize --model "$MODEL" --bpw "$BPW" --method "$METHOD" --preset "$PRESET" \
    --calib assets/brown.txt --out "$BLOB" --report "$OUT/report.json" ${QUANT_ARGS:-}

say "inspect"
"$NQ" inspect "$BLOB" | tail -n 4

say "perplexity, FP32 reference (Botchan, ctx 512, $WINDOWS windows)"
"$NQ" eval --model "$MODEL" --text assets/botchan.txt --windows "$WINDOWS" --json >"$OUT/eval-fp.json"
say "perplexity, quantized"
"$NQ" eval --model "$BLOB" --text assets/botchan.txt --windows "$WINDOWS" --json >"$OUT/eval-q.json"

say "generate (quantized, greedy)"
"$NQ" run --model "$BLOB" --prompt "$PROMPT" --tokens 32

say "summary"
python3 - "$OUT/eval-fp.json" "$OUT/eval-q.json" "$OUT/report.json" "$BLOB" <<'PY'
import json, os, sys
fp, q, rep = (json.load(open(p)) for p in sys.argv[1:4])
blob = sys.argv[4]
print(f"    blob              {blob} ({os.path.getsize(blob) / 2**20:.1f} MiB)")
print(f"    decoder linears   {rep['decoder_linear_bpw']:.3f} bits per weight ({rep['method']})")
print(f"    whole file        {rep['file_bpw']:.3f} bits per weight")
print(f"    perplexity FP32   {fp['ppl']:.3f}  (top-1 {fp['top1']:.4f})")
print(f"    perplexity quant  {q['ppl']:.3f}  (top-1 {q['top1']:.4f}, {q['ppl'] / fp['ppl']:.2f}x FP)")
print(f"    quantize time     {rep['total_seconds']:.0f} s on {rep['threads']} threads")
PY
