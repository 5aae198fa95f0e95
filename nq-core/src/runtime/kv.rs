//! The key/value cache: `kv_dim` values per (layer, K or V, position),
//! stored as f32, f16 or int8 with one f32 scale per (layer, K or V,
//! position, kv head) — the caller trades RAM for accuracy. Values are
//! position-major, keys dimension-major within each head (see
//! [`KvCache::store`]).

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

    /// Sets `scores[i·stride + p] = qs[i] · K[layer, p, head g]` for the query
    /// heads `qs` (`m · head_dim` values, all attending to kv head `g`) and
    /// the positions `p < n`, `HEADS_AT_ONCE` query heads per sweep over
    /// the keys.
    ///
    /// Each position's dot is summed in dimension order, four dimensions a
    /// step: `s += ((q₀k₀ + q₁k₁) + q₂k₂) + q₃k₃`, the same on every target
    /// and for every grouping of heads. The loop over positions is
    /// what vectorizes.
    #[inline(always)]
    pub(crate) fn key_scores(
        &self,
        layer: usize,
        g: usize,
        qs: &[f32],
        scores: &mut [f32],
        stride: usize,
        n: usize,
    ) {
        let (hd, ctx) = (self.head_dim, self.ctx);
        let head = self.block(layer, false) + g * hd * ctx;
        let mut rows = scores.chunks_mut(stride);
        for q in qs.chunks(HEADS_AT_ONCE * hd) {
            match q.len() / hd {
                3 => self.key_scores_n::<3>(layer, g, head, q, &mut rows, n),
                2 => self.key_scores_n::<2>(layer, g, head, q, &mut rows, n),
                _ => self.key_scores_n::<1>(layer, g, head, q, &mut rows, n),
            }
        }
    }

    #[inline(always)]
    fn key_scores_n<'r, const G: usize>(
        &self,
        layer: usize,
        g: usize,
        head: usize,
        qs: &[f32],
        rows: &mut impl Iterator<Item = &'r mut [f32]>,
        n: usize,
    ) {
        let (hd, nkv, ctx) = (self.head_dim, self.n_kv_heads, self.ctx);
        let mut outs: [&mut [f32]; G] = core::array::from_fn(|_| match rows.next() {
            Some(r) => &mut r[..n],
            None => &mut [],
        });
        let qs: [&[f32]; G] = core::array::from_fn(|i| &qs[i * hd..(i + 1) * hd]);
        for o in outs.iter_mut() {
            o.fill(0.0);
        }
        match &self.store {
            KvStore::F32(d) => columns_dot(&d[head..head + hd * ctx], ctx, qs, &mut outs, |v| v),
            KvStore::F16(d) => columns_dot(
                &d[head..head + hd * ctx],
                ctx,
                qs,
                &mut outs,
                super::ops::f16_to_f32,
            ),
            KvStore::I8 { codes, scales } => {
                columns_dot(&codes[head..head + hd * ctx], ctx, qs, &mut outs, f32::from);
                let first = self.row(layer, false, 0) * nkv + g;
                for out in outs {
                    for (o, s) in out.iter_mut().zip(scales[first..].iter().step_by(nkv)) {
                        *o *= s;
                    }
                }
            }
        }
    }

    /// `outs[i] += Σ_p ws[i·stride + p] · V[layer, p, head g]` over the
    /// positions `p < n`, for the query heads `i` (`outs`: `m · head_dim`
    /// values), `HEADS_AT_ONCE` heads and four positions a step. Each
    /// output value sums its terms in position order, the same on every
    /// target and for every grouping.
    #[inline(always)]
    pub(crate) fn add_values(
        &self,
        layer: usize,
        g: usize,
        ws: &[f32],
        stride: usize,
        n: usize,
        outs: &mut [f32],
    ) {
        let hd = self.head_dim;
        let mut rows = ws.chunks(stride);
        for out in outs.chunks_mut(HEADS_AT_ONCE * hd) {
            match out.len() / hd {
                3 => self.add_values_n::<3>(layer, g, &mut rows, n, out),
                2 => self.add_values_n::<2>(layer, g, &mut rows, n, out),
                _ => self.add_values_n::<1>(layer, g, &mut rows, n, out),
            }
        }
    }

    #[inline(always)]
    fn add_values_n<'r, const G: usize>(
        &self,
        layer: usize,
        g: usize,
        rows: &mut impl Iterator<Item = &'r [f32]>,
        n: usize,
        outs: &mut [f32],
    ) {
        let (hd, nkv) = (self.head_dim, self.n_kv_heads);
        let ws: [&[f32]; G] = core::array::from_fn(|_| rows.next().map_or(&[][..], |r| &r[..n]));
        let mut outs: [&mut [f32]; G] = {
            let mut it = outs.chunks_exact_mut(hd);
            core::array::from_fn(|_| it.next().unwrap_or_default())
        };
        let row0 = self.row(layer, true, 0);
        let at = |p: usize| (row0 + p) * hd * nkv + g * hd;
        match &self.store {
            KvStore::F32(d) => {
                weighted_rows(n, |p| &d[at(p)..at(p) + hd], ws, &mut outs, |v| v, |_| 1.0)
            }
            KvStore::F16(d) => weighted_rows(
                n,
                |p| &d[at(p)..at(p) + hd],
                ws,
                &mut outs,
                super::ops::f16_to_f32,
                |_| 1.0,
            ),
            KvStore::I8 { codes, scales } => weighted_rows(
                n,
                |p| &codes[at(p)..at(p) + hd],
                ws,
                &mut outs,
                f32::from,
                |p| scales[(row0 + p) * nkv + g],
            ),
        }
    }
}

/// Query heads sharing one sweep over a kv head's keys or values: their
/// loads and conversions are shared. Three keeps a sweep's accumulators
/// and operands within 16 vector registers.
pub(crate) const HEADS_AT_ONCE: usize = 3;

/// `outs[i][p] += Σ_j qs[i][j] · conv(cols[j·stride + p])` over the
/// columns of a dimension-major block, four columns a step.
#[inline(always)]
fn columns_dot<T: Copy, const G: usize>(
    cols: &[T],
    stride: usize,
    qs: [&[f32]; G],
    outs: &mut [&mut [f32]; G],
    conv: impl Fn(T) -> f32,
) {
    let n = outs[0].len();
    let hd = qs[0].len();
    for o in outs.iter_mut() {
        *o = &mut core::mem::take(o)[..n];
    }
    let col = |j: usize| &cols[j * stride..j * stride + n];
    let mut j = 0;
    while j + 4 <= hd {
        let (c0, c1, c2, c3) = (col(j), col(j + 1), col(j + 2), col(j + 3));
        let q: [[f32; 4]; G] =
            core::array::from_fn(|i| [qs[i][j], qs[i][j + 1], qs[i][j + 2], qs[i][j + 3]]);
        for p in 0..n {
            let k = [conv(c0[p]), conv(c1[p]), conv(c2[p]), conv(c3[p])];
            for (o, q) in outs.iter_mut().zip(&q) {
                o[p] += ((q[0] * k[0] + q[1] * k[1]) + q[2] * k[2]) + q[3] * k[3];
            }
        }
        j += 4;
    }
    while j < hd {
        let c = col(j);
        for p in 0..n {
            let k = conv(c[p]);
            for (o, q) in outs.iter_mut().zip(&qs) {
                o[p] += q[j] * k;
            }
        }
        j += 1;
    }
}

/// `outs[i][c] += Σ_p (ws[i][p] · scale(p)) · conv(row(p)[c])` over the
/// positions `p < n`, summed in position order, four positions a step.
#[inline(always)]
fn weighted_rows<'a, T: Copy + 'a, const G: usize>(
    n: usize,
    row: impl Fn(usize) -> &'a [T],
    ws: [&[f32]; G],
    outs: &mut [&mut [f32]; G],
    conv: impl Fn(T) -> f32,
    scale: impl Fn(usize) -> f32,
) {
    let hd = outs[0].len();
    for o in outs.iter_mut() {
        *o = &mut core::mem::take(o)[..hd];
    }
    let mut p = 0;
    while p + 4 <= n {
        let (r0, r1, r2, r3) = (row(p), row(p + 1), row(p + 2), row(p + 3));
        let s = [scale(p), scale(p + 1), scale(p + 2), scale(p + 3)];
        let w: [[f32; 4]; G] =
            core::array::from_fn(|i| core::array::from_fn(|t| ws[i][p + t] * s[t]));
        for c in 0..hd {
            let v = [conv(r0[c]), conv(r1[c]), conv(r2[c]), conv(r3[c])];
            for (o, w) in outs.iter_mut().zip(&w) {
                o[c] = (((o[c] + w[0] * v[0]) + w[1] * v[1]) + w[2] * v[2]) + w[3] * v[3];
            }
        }
        p += 4;
    }
    while p < n {
        let r = row(p);
        let s = scale(p);
        let w: [f32; G] = core::array::from_fn(|i| ws[i][p] * s);
        for c in 0..hd {
            let v = conv(r[c]);
            for (o, w) in outs.iter_mut().zip(&w) {
                o[c] += w * v;
            }
        }
        p += 1;
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

    /// Keys and values of every (layer, position) stored, then read back
    /// for `M` query heads at once (grouped by `HEADS_AT_ONCE` inside):
    /// `key_scores` for every live length against an f64 dot of the
    /// dequantized keys, `add_values` against an f64 weighted sum of the
    /// dequantized values, and both bit for bit against one head at a time
    /// — for every storage type and head sizes on and off the 4-column step.
    #[test]
    fn stored_keys_and_values_read_back() {
        const M: usize = 5;
        for hd in [1usize, 3, 4, 7, 13, 64, 70] {
            let kvd = hd * NKV;
            // Distinct rows for every (layer, K/V, position).
            let row = |layer: usize, value: bool, pos: usize| -> [f32; 140] {
                let seed = (layer * 2 + usize::from(value)) * CTX + pos;
                core::array::from_fn(|i| libm::sinf(i as f32 * 0.7 + seed as f32 * 1.3) * 3.0)
            };
            let qs: [f32; M * 70] =
                core::array::from_fn(|j| libm::cosf(j as f32 * 0.3) - 0.2 * (j % 3) as f32);
            let qs = &qs[..M * hd];
            let ws: [f32; M * CTX] = core::array::from_fn(|i| 0.1 + (i % 7) as f32 * 0.13);
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
                let deq = |r: &[f32; 140], g: usize, j: usize| {
                    dequantized(&kv.store, r, g, hd, r[g * hd + j])
                };
                for layer in 0..LAYERS {
                    for g in 0..NKV {
                        for n in 1..=CTX {
                            let mut got = [7.0f32; M * CTX]; // overwritten, not added to
                            kv.key_scores(layer, g, qs, &mut got, CTX, n);
                            for i in 0..M {
                                let q = &qs[i * hd..(i + 1) * hd];
                                let mut one = [-3.0f32; CTX];
                                kv.key_scores(layer, g, q, &mut one, CTX, n);
                                assert_eq!(got[i * CTX..i * CTX + n], one[..n], "grouped keys");
                                for p in 0..n {
                                    let k = row(layer, false, p);
                                    let terms = (0..hd).map(|j| deq(&k, g, j) * f64::from(q[j]));
                                    let want: f64 = terms.clone().sum();
                                    let mag: f64 = terms.map(f64::abs).sum();
                                    let got = f64::from(got[i * CTX + p]);
                                    assert!(
                                        (got - want).abs() <= 1e-6 * mag + 1e-30,
                                        "hd {hd} layer {layer} g {g} n {n} p {p}: {got} vs {want}"
                                    );
                                }
                            }
                            let mut out = [0.5f32; M * 70];
                            kv.add_values(layer, g, &ws, CTX, n, &mut out[..M * hd]);
                            for i in 0..M {
                                let mut one = [0.5f32; 70];
                                kv.add_values(layer, g, &ws[i * CTX..], CTX, n, &mut one[..hd]);
                                assert_eq!(out[i * hd..(i + 1) * hd], one[..hd], "grouped values");
                                for j in 0..hd {
                                    let terms = (0..n).map(|p| {
                                        f64::from(ws[i * CTX + p]) * deq(&row(layer, true, p), g, j)
                                    });
                                    let want = 0.5 + terms.clone().sum::<f64>();
                                    let mag = 0.5 + terms.map(f64::abs).sum::<f64>();
                                    let got = f64::from(out[i * hd + j]);
                                    assert!(
                                        (got - want).abs() <= 1e-6 * mag,
                                        "hd {hd} layer {layer} g {g} n {n} j {j}: {got} vs {want}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
