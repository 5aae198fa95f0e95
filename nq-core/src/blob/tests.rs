//! A blob assembled by hand, byte by byte from FORMAT.md — independent of
//! the host-side writer — must parse to exactly what was written.

use super::*;

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Header 64 + config 128 + 2 entries 256 = 448 → header_len 448.
/// Tensor 0 "a.fact": FACTORIZED 2×3, rank 1, no bias:
///   U 2×1 → 64 B at 0; V 1×3 → 64 B at 64; s_pre 6 B at 128;
///   s_post 4 B at 192 → length 196, at offset 448, padded to 704.
/// Tensor 1 "b.meta": BYTES, 5 bytes at 704 → file ends at 768.
fn hand_made() -> [u8; 768] {
    let mut b = [0u8; 768];
    b[..8].copy_from_slice(&[0x89, b'N', b'Q', b'B', b'\r', b'\n', 0x1A, b'\n']);
    put_u32(&mut b, 8, 1);
    put_u32(&mut b, 12, 448);
    put_u32(&mut b, 16, 2);
    put_u32(&mut b, 20, 128);
    put_u64(&mut b, 24, 768);
    // Config: llama, 1 layer, d 4, ffn 8, 2 heads / 1 kv, head_dim 2, vocab 10.
    for (k, v) in [1u32, 1, 4, 8, 2, 1, 2, 10, 16].iter().enumerate() {
        put_u32(&mut b, 64 + 4 * k, *v);
    }
    b[64 + 36..64 + 40].copy_from_slice(&10000.0f32.to_le_bytes());
    b[64 + 40..64 + 44].copy_from_slice(&1e-5f32.to_le_bytes());
    put_u32(&mut b, 64 + 44, 1); // tied
    put_u32(&mut b, 64 + 48, u32::MAX);
    put_u32(&mut b, 64 + 52, 0);

    // Tensor data. U = [+1; -1] (row 1 bit set), V = [-1 +1 -1].
    let t0 = 448;
    b[t0 + 1] = 0b1;
    b[t0 + 64] = 0b101;
    for (k, v) in [1.0f32, 2.0, 0.5].iter().enumerate() {
        let h = half::f16::from_f32(*v).to_bits().to_le_bytes();
        b[t0 + 128 + 2 * k..t0 + 130 + 2 * k].copy_from_slice(&h);
    }
    for (k, v) in [3.0f32, -1.0].iter().enumerate() {
        let h = half::f16::from_f32(*v).to_bits().to_le_bytes();
        b[t0 + 192 + 2 * k..t0 + 194 + 2 * k].copy_from_slice(&h);
    }
    b[704..709].copy_from_slice(b"hello");

    let e0 = 192;
    b[e0..e0 + 6].copy_from_slice(b"a.fact");
    b[e0 + 48..e0 + 50].copy_from_slice(&3u16.to_le_bytes());
    b[e0 + 50..e0 + 52].copy_from_slice(&5u16.to_le_bytes());
    put_u32(&mut b, e0 + 56, 2);
    put_u32(&mut b, e0 + 60, 2);
    put_u32(&mut b, e0 + 64, 3);
    put_u32(&mut b, e0 + 68, 1);
    put_u64(&mut b, e0 + 72, 448);
    put_u64(&mut b, e0 + 80, 196);
    let c0 = crc32(&b[448..448 + 196]);
    put_u32(&mut b, e0 + 88, c0);

    let e1 = 320;
    b[e1..e1 + 6].copy_from_slice(b"b.meta");
    b[e1 + 48..e1 + 50].copy_from_slice(&5u16.to_le_bytes());
    b[e1 + 50..e1 + 52].copy_from_slice(&6u16.to_le_bytes());
    put_u32(&mut b, e1 + 56, 1);
    put_u32(&mut b, e1 + 60, 5);
    put_u32(&mut b, e1 + 64, 1);
    put_u64(&mut b, e1 + 72, 704);
    put_u64(&mut b, e1 + 80, 5);
    let c1 = crc32(b"hello");
    put_u32(&mut b, e1 + 88, c1);

    let h = header_crc(&b[..448]).unwrap();
    put_u32(&mut b, 32, h);
    b
}

#[test]
fn parses_a_hand_assembled_blob() {
    let bytes = hand_made();
    let view = Blob::parse(&bytes).unwrap();
    view.verify().unwrap();
    let c = view.config();
    assert_eq!(
        (c.n_layers, c.d_model, c.d_ffn, c.vocab_size),
        (1, 4, 8, 10)
    );
    assert!(c.tied_embeddings && !c.attn_bias && !c.qk_norm);
    assert_eq!((c.bos_id, c.eos_id), (None, Some(0)));
    assert_eq!(view.len(), 2);
    assert_eq!(
        view.find("b.meta").unwrap().as_raw_bytes().unwrap(),
        b"hello"
    );
    assert!(view.find("c").is_none() && view.find("a").is_none());

    let l = view.find("a.fact").unwrap().as_factorized().unwrap();
    assert_eq!((l.out_features(), l.in_features(), l.rank()), (2, 3, 1));
    // W = diag(3, -1) · [+1; -1] · [-1 +1 -1] · diag(1, 2, 0.5)
    //   = [[-3, 6, -1.5], [-1, 2, -0.5]]
    let mut w = [0.0f32; 6];
    l.dequantize_into(&mut w);
    assert_eq!(w, [-3.0, 6.0, -1.5, -1.0, 2.0, -0.5]);
    let (mut y, mut t) = ([0.0f32; 2], [0.0f32; 1]);
    l.forward_ref(&[2.0, 1.0, 4.0], &mut y, &mut t);
    assert_eq!(y, [-6.0, -2.0]);
}

#[test]
fn each_rule_of_the_hand_made_blob_is_enforced() {
    let good = hand_made();
    let reseal = |b: &mut [u8]| {
        let h = header_crc(&b[..448]).unwrap();
        put_u32(b, 32, h);
    };
    let check = |edit: &dyn Fn(&mut [u8]), want: fn(&BlobError) -> bool| {
        let mut b = good;
        edit(&mut b);
        reseal(&mut b);
        let err = Blob::parse(&b).err();
        assert!(err.as_ref().is_some_and(want), "{err:?}");
    };
    check(&|b| b[0] = 0, |e| *e == BlobError::BadMagic);
    check(&|b| put_u32(b, 8, 2), |e| {
        *e == BlobError::UnsupportedVersion(2)
    });
    check(&|b| put_u32(b, 64, 9), |e| *e == BlobError::UnknownArch(9));
    check(&|b| put_u32(b, 64 + 20, 3), |e| {
        *e == BlobError::BadConfig {
            field: "n_kv_heads",
        }
    });
    check(&|b| put_u32(b, 192 + 68, 3), |e| {
        *e == BlobError::BadRank { index: 0 }
    });
    check(&|b| put_u64(b, 320 + 72, 640), |e| {
        *e == BlobError::Overlap { index: 1 }
    });
    check(&|b| put_u64(b, 320 + 72, 705), |e| {
        *e == BlobError::Misaligned { index: 1 }
    });
    check(&|b| b[700] = 1, |e| {
        *e == BlobError::NonZeroPadding { offset: 700 }
    });
    check(&|b| b[192 + 10] = 1, |e| {
        *e == BlobError::BadName { index: 0 }
    });
    // Swapping the names breaks the sort order.
    check(
        &|b| {
            b[192] = b'c';
        },
        |e| *e == BlobError::NamesNotSorted { index: 1 },
    );
    // Without resealing, any header edit is a CRC mismatch.
    let mut b = good;
    b[64 + 8] ^= 1;
    assert!(matches!(
        Blob::parse(&b),
        Err(BlobError::HeaderCrcMismatch { .. })
    ));
    // A data edit passes parse and fails verify.
    let mut b = good;
    b[706] ^= 0x40;
    assert_eq!(
        Blob::parse(&b).unwrap().verify(),
        Err(BlobError::TensorCrcMismatch { index: 1 })
    );
}
