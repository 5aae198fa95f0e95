//! The key/value cache: one row of `kv_dim` values per (layer, K or V,
//! position), stored as f32, f16 or int8 with one f32 scale per
//! (row, kv head) — the caller trades RAM for accuracy.

use half::f16;

use super::ops::dot_lanes;

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

    /// Stores one key (`value = false`) or value row of `kv_dim` floats.
    pub(crate) fn store(&mut self, layer: usize, value: bool, pos: usize, src: &[f32]) {
        let (hd, nkv) = (self.head_dim, self.n_kv_heads);
        let row = self.row(layer, value, pos);
        let base = row * hd * nkv;
        match &mut self.store {
            KvStore::F32(d) => d[base..base + hd * nkv].copy_from_slice(src),
            KvStore::F16(d) => {
                for (o, &v) in d[base..base + hd * nkv].iter_mut().zip(src) {
                    *o = f16::from_f32(v).to_bits();
                }
            }
            KvStore::I8 { codes, scales } => {
                for g in 0..nkv {
                    let head = &src[g * hd..(g + 1) * hd];
                    let max = head.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
                    let scale = max / 127.0;
                    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
                    scales[row * nkv + g] = scale;
                    let out = &mut codes[base + g * hd..base + (g + 1) * hd];
                    for (o, &v) in out.iter_mut().zip(head) {
                        *o = libm::roundf(v * inv).clamp(-127.0, 127.0) as i8;
                    }
                }
            }
        }
    }

    /// `q · K[layer, pos, head g]`.
    #[inline(always)]
    pub(crate) fn dot_key(&self, layer: usize, pos: usize, g: usize, q: &[f32]) -> f32 {
        let (hd, nkv) = (self.head_dim, self.n_kv_heads);
        let row = self.row(layer, false, pos);
        let base = row * hd * nkv + g * hd;
        match &self.store {
            KvStore::F32(d) => super::ops::dot(&d[base..base + hd], q),
            KvStore::F16(d) => dot_lanes::<8, u16>(&d[base..base + hd], q, super::ops::f16_to_f32),
            KvStore::I8 { codes, scales } => {
                dot_lanes::<8, i8>(&codes[base..base + hd], q, f32::from) * scales[row * nkv + g]
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `dot_key` (8 lanes and a tail) against an f64 dot of the dequantized
    /// keys, for every storage type and head sizes on and off the lane width.
    #[test]
    fn key_dots_match_the_dequantized_cache() {
        for hd in [1usize, 7, 8, 13, 64, 70] {
            let nkv = 2;
            let key: [f32; 140] = core::array::from_fn(|j| libm::sinf(j as f32 * 0.7) * 3.0);
            let q: [f32; 70] = core::array::from_fn(|j| libm::cosf(j as f32 * 0.3));
            let key = &key[..hd * nkv];
            let (mut f32s, mut f16s, mut codes, mut scales) =
                ([0.0f32; 140], [0u16; 140], [0i8; 140], [0.0f32; 2]);
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
                    ctx: 1,
                    head_dim: hd,
                    n_kv_heads: nkv,
                };
                kv.store(0, false, 0, key);
                for g in 0..nkv {
                    let deq: [f64; 70] = core::array::from_fn(|j| {
                        if j >= hd {
                            return 0.0;
                        }
                        let k = g * hd + j;
                        f64::from(match &kv.store {
                            KvStore::F32(d) => d[k],
                            KvStore::F16(d) => f16::from_bits(d[k]).to_f32(),
                            KvStore::I8 { codes, scales } => f32::from(codes[k]) * scales[g],
                        })
                    });
                    let want: f64 = (0..hd).map(|j| deq[j] * f64::from(q[j])).sum();
                    let mag: f64 = (0..hd).map(|j| (deq[j] * f64::from(q[j])).abs()).sum();
                    let got = f64::from(kv.dot_key(0, 0, g, &q[..hd]));
                    assert!(
                        (got - want).abs() <= 1e-6 * mag + 1e-30,
                        "hd {hd} g {g}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
