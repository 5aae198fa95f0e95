//! Greedy generation from a blob file must give the token ids another
//! machine's runtime gave. `scripts/test.sh` writes a tiny blob and the x86
//! host runtime's ids (`nq-host run --print-ids`), then runs this test on
//! aarch64 under qemu (NEON / dotprod kernels) with
//! `NQ_RUNTIME_BLOB=path NQ_RUNTIME_IDS=1,2,…`. Skips (saying so) when unset.

use nq_core::runtime::argmax;
use nq_core::{Blob, KvDtype, Runtime};

/// The prompt the CI step gives `nq-host run --prompt-ids`.
const PROMPT: [u32; 5] = [1, 2, 3, 4, 5];

#[test]
fn blob_generates_the_expected_ids() {
    let (Some(path), Some(ids)) = (
        std::env::var_os("NQ_RUNTIME_BLOB"),
        std::env::var("NQ_RUNTIME_IDS").ok(),
    ) else {
        eprintln!("SKIP: NQ_RUNTIME_BLOB / NQ_RUNTIME_IDS not set");
        return;
    };
    let want: Vec<u32> = ids
        .trim()
        .split(',')
        .map(|t| t.parse().expect("NQ_RUNTIME_IDS: comma-separated ids"))
        .collect();
    let bytes = std::fs::read(path).expect("read NQ_RUNTIME_BLOB");
    let view = Blob::parse(&bytes).expect("parse");
    view.verify().expect("verify");
    let ctx = 32;
    let mut arena = vec![0u8; Runtime::arena_bytes(view.config(), ctx, KvDtype::F32)];
    let mut rt = Runtime::new(view, &mut arena, ctx, KvDtype::F32).expect("runtime");
    let mut next = argmax(rt.prefill(&PROMPT).expect("prefill"));
    let mut got = vec![next];
    while got.len() < want.len() {
        next = argmax(rt.decode(next).expect("decode"));
        got.push(next);
    }
    eprintln!("kernel {}: {got:?}", nq_core::kernels::selected());
    assert_eq!(got, want);
}
