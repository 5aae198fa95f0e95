//! The key/value cache: one row of `kv_dim` values per (layer, K or V,
//! position), stored as f32, f16 or int8 with one f32 scale per
//! (row, kv head) — the caller trades RAM for accuracy.

use half::f16;

/// How cached keys and values are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum KvDtype {
    /// 4 bytes a value: exact.
    F32,
    /// 2 bytes a value (IEEE half).
    F16,
    /// 1 byte a value plus an f32 absmax scale per head and position.
    I8,
}

impl KvDtype {
    /// Lower-case name (`f32`, `f16`, `int8`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::I8 => "int8",
        }
    }

    /// Bytes of one cached value (scales excluded).
    pub const fn value_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 => 2,
            Self::I8 => 1,
        }
    }
}

/// Storage borrowed from the arena.
pub(crate) enum KvStore<'a> {
    F32(&'a mut [f32]),
    F16(&'a mut [u16]),
    I8 {
        codes: &'a mut [i8],
        scales: &'a mut [f32],
    },
}

/// The cache of all layers: `rows` = `n_layers · 2 · ctx`, each `kv_dim` wide.
pub(crate) struct KvCache<'a> {
    pub(crate) store: KvStore<'a>,
    pub(crate) ctx: usize,
    pub(crate) head_dim: usize,
    pub(crate) n_kv_heads: usize,
}

impl KvCache<'_> {
    fn row(&self, layer: usize, value: bool, pos: usize) -> usize {
        (layer * 2 + usize::from(value)) * self.ctx + pos
    }

    /// First element of the (layer, K or V) block: `ctx · kv_dim` values.
    fn block(&self, layer: usize, value: bool) -> usize {
        self.row(layer, value, 0) * self.head_dim * self.n_kv_heads
    }

    /// Stores one key (`value = false`) or value row of `kv_dim` floats.
    ///
    /// Values are kept position-major (one `kv_dim` row per position: the
    /// weighted sum reads a head's row at a time). Keys are kept
    /// dimension-major within each head (`[head][dim][position]`), so the
    /// scores of all positions build up as contiguous multiply-adds with no
    /// horizontal sums; see [`KvCache::key_scores`].
    pub(crate) fn store(&mut self, layer: usize, value: bool, pos: usize, src: &[f32]) {
        let (hd, nkv, ctx) = (self.head_dim, self.n_kv_heads, self.ctx);
        let row = self.row(layer, value, pos);
        let block = self.block(layer, value);
        // Where value `i` of the row goes.
        let at = |i: usize| {
            if value {
                block + pos * hd * nkv + i
            } else {
                block + i * ctx + pos
            }
        };
        match &mut self.store {
            KvStore::F32(d) => {
                for (i, &v) in src.iter().enumerate() {
                    d[at(i)] = v;
                }
            }
            KvStore::F16(d) => {
                for (i, &v) in src.iter().enumerate() {
                    d[at(i)] = f16::from_f32(v).to_bits();
                }
            }
            KvStore::I8 { codes, scales } => {
                for g in 0..nkv {
                    let head = &src[g * hd..(g + 1) * hd];
                    let max = head.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
                    let scale = max / 127.0;
                    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
                    scales[row * nkv + g] = scale;
                    for (j, &v) in head.iter().enumerate() {
                        codes[at(g * hd + j)] = libm::roundf(v * inv).clamp(-127.0, 127.0) as i8;
                    }
                }
            }
        }
    }

    /// `out[p] = q · K[layer, p, head g]` for the positions `p < out.len()`.
    ///
    /// Each position's dot is summed in dimension order, four dimensions a
    /// step: `out[p] = (((… + q₀k₀ + q₁k₁) + q₂k₂) + q₃k₃) …`, the same on
    /// every target. The loop over positions is what vectorizes.
    #[inline(always)]
    pub(crate) fn key_scores(&self, layer: usize, g: usize, q: &[f32], out: &mut [f32]) {
        let (hd, nkv, ctx) = (self.head_dim, self.n_kv_heads, self.ctx);
        let head = self.block(layer, false) + g * hd * ctx;
        out.fill(0.0);
        match &self.store {
            KvStore::F32(d) => {
                columns_dot(&d[head..head + hd * ctx], ctx, q, out, |v| v);
            }
            KvStore::F16(d) => {
                columns_dot(
                    &d[head..head + hd * ctx],
                    ctx,
                    q,
                    out,
                    super::ops::f16_to_f32,
                );
            }
            KvStore::I8 { codes, scales } => {
                columns_dot(&codes[head..head + hd * ctx], ctx, q, out, f32::from);
                let first = self.row(layer, false, 0) * nkv + g;
                for (o, s) in out.iter_mut().zip(scales[first..].iter().step_by(nkv)) {
                    *o *= s;
                }
            }
        }
    }

    /// `out += w · V[layer, pos, head g]`.
    #[inline(always)]
    pub(crate) fn add_value(&self, layer: usize, pos: usize, g: usize, w: f32, out: &mut [f32]) {
        let (hd, nkv) = (self.head_dim, self.n_kv_heads);
        let row = self.row(layer, true, pos);
        let base = row * hd * nkv + g * hd;
        match &self.store {
            KvStore::F32(d) => {
                for (o, &v) in out.iter_mut().zip(&d[base..base + hd]) {
                    *o += w * v;
                }
            }
            KvStore::F16(d) => {
                for (o, &v) in out.iter_mut().zip(&d[base..base + hd]) {
                    *o += w * super::ops::f16_to_f32(v);
                }
            }
            KvStore::I8 { codes, scales } => {
                let ws = w * scales[row * nkv + g];
                for (o, &v) in out.iter_mut().zip(&codes[base..base + hd]) {
                    *o += ws * f32::from(v);
                }
            }
        }
    }
}

/// `out[p] += Σ_j q[j] · conv(cols[j·stride + p])` for `p < out.len()`, over
/// the `q.len()` columns of a dimension-major block, four columns a step.
#[inline(always)]
fn columns_dot<T: Copy>(
    cols: &[T],
    stride: usize,
    q: &[f32],
    out: &mut [f32],
    conv: impl Fn(T) -> f32,
) {
    let n = out.len();
    let col = |j: usize| &cols[j * stride..j * stride + n];
    let mut quads = q.chunks_exact(4);
    let mut j = 0;
    for qs in quads.by_ref() {
        let (q0, q1, q2, q3) = (qs[0], qs[1], qs[2], qs[3]);
        let (c0, c1, c2, c3) = (col(j), col(j + 1), col(j + 2), col(j + 3));
        for ((((o, &a), &b), &c), &d) in out.iter_mut().zip(c0).zip(c1).zip(c2).zip(c3) {
            *o += ((q0 * conv(a) + q1 * conv(b)) + q2 * conv(c)) + q3 * conv(d);
        }
        j += 4;
    }
    for &qj in quads.remainder() {
        for (o, &a) in out.iter_mut().zip(col(j)) {
            *o += qj * conv(a);
        }
        j += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CTX: usize = 5;
    const LAYERS: usize = 2;
    const NKV: usize = 2;
    const MAX: usize = LAYERS * 2 * CTX * NKV * 70;

    /// The value a store of `v` (the row `row` of head `head`) reads back as,
    /// worked out from the storage type's definition, not from the cache.
    fn dequantized(store: &KvStore<'_>, row: &[f32], head: usize, hd: usize, v: f32) -> f64 {
        match store {
            KvStore::F32(_) => f64::from(v),
            KvStore::F16(_) => f64::from(f16::from_f32(v).to_f32()),
            KvStore::I8 { .. } => {
                let h = &row[head * hd..(head + 1) * hd];
                let scale = h.iter().fold(0.0f32, |m, &x| m.max(x.abs())) / 127.0;
                if scale == 0.0 {
                    return 0.0;
                }
                f64::from(libm::roundf(v / scale).clamp(-127.0, 127.0) * scale)
            }
        }
    }

    /// Keys and values of every (layer, position) stored, then read back:
    /// `key_scores` for every live length against an f64 dot of the
    /// dequantized keys, and `add_value` against the dequantized values —
    /// for every storage type and head sizes on and off the 4-column step.
    #[test]
    fn stored_keys_and_values_read_back() {
        for hd in [1usize, 3, 4, 7, 13, 64, 70] {
            let kvd = hd * NKV;
            // Distinct rows for every (layer, K/V, position).
            let row = |layer: usize, value: bool, pos: usize| -> [f32; 140] {
                let seed = (layer * 2 + usize::from(value)) * CTX + pos;
                core::array::from_fn(|i| libm::sinf(i as f32 * 0.7 + seed as f32 * 1.3) * 3.0)
            };
            let q: [f32; 70] = core::array::from_fn(|j| libm::cosf(j as f32 * 0.3) - 0.2);
            let q = &q[..hd];
            let (mut f32s, mut f16s, mut codes, mut scales) = (
                [0.0f32; MAX],
                [0u16; MAX],
                [0i8; MAX],
                [0.0f32; LAYERS * 2 * CTX * NKV],
            );
            let stores = [
                KvStore::F32(&mut f32s),
                KvStore::F16(&mut f16s),
                KvStore::I8 {
                    codes: &mut codes,
                    scales: &mut scales,
                },
            ];
            for store in stores {
                let mut kv = KvCache {
                    store,
                    ctx: CTX,
                    head_dim: hd,
                    n_kv_heads: NKV,
                };
                for layer in 0..LAYERS {
                    for pos in 0..CTX {
                        for value in [false, true] {
                            kv.store(layer, value, pos, &row(layer, value, pos)[..kvd]);
                        }
                    }
                }
                for layer in 0..LAYERS {
                    for g in 0..NKV {
                        for n in 1..=CTX {
                            let mut got = [0.0f32; CTX];
                            kv.key_scores(layer, g, q, &mut got[..n]);
                            for (p, &got) in got[..n].iter().enumerate() {
                                let k = row(layer, false, p);
                                let terms = (0..hd).map(|j| {
                                    dequantized(&kv.store, &k, g, hd, k[g * hd + j])
                                        * f64::from(q[j])
                                });
                                let want: f64 = terms.clone().sum();
                                let mag: f64 = terms.map(f64::abs).sum();
                                assert!(
                                    (f64::from(got) - want).abs() <= 1e-6 * mag + 1e-30,
                                    "hd {hd} layer {layer} g {g} n {n} p {p}: {got} vs {want}"
                                );
                            }
                        }
                        for pos in 0..CTX {
                            let v = row(layer, true, pos);
                            let mut out = [0.5f32; 70];
                            kv.add_value(layer, pos, g, -2.0, &mut out[..hd]);
                            for j in 0..hd {
                                let want =
                                    0.5 - 2.0 * dequantized(&kv.store, &v, g, hd, v[g * hd + j]);
                                assert!(
                                    (f64::from(out[j]) - want).abs() <= 1e-5,
                                    "hd {hd} layer {layer} g {g} pos {pos} j {j}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
