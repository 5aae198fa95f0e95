//! Quantizing every decoder linear of a model: the statistics, one method
//! per layer, a report per layer.

use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use super::factor::{
    quantize_linear_on, rank_for_bpw, AdmmOptions, FactorError, LayerEnergies, Method,
};
use super::stats::ModelStats;
use crate::backend::Compute;
use crate::blob_writer::TensorPayload;
use crate::model::backward::LinearId;
use crate::model::ModelWeights;

/// What to quantize with.
#[derive(Clone, Debug)]
pub struct QuantizeOptions {
    /// Method.
    pub method: Method,
    /// Target bits per weight of the factorized methods (scales counted).
    pub bpw: f64,
    /// Ranks are multiples of this.
    pub rank_multiple: usize,
    /// ADMM settings (`nanoquant`).
    pub admm: AdmmOptions,
    /// Where ADMM runs.
    pub compute: Compute,
}

/// The outcome for one linear.
#[derive(Clone, Debug, Serialize)]
pub struct LayerReport {
    /// Block index.
    pub block: usize,
    /// Blob tensor name (`blk.3.attn_q`).
    pub name: String,
    /// Output features.
    pub m: usize,
    /// Input features.
    pub n: usize,
    /// Rank (factorized methods).
    pub rank: Option<usize>,
    /// Stored bits, scales included (bias excluded).
    pub bits: u64,
    /// `bits / (m·n)`.
    pub bpw: f64,
    /// Energy-weighted relative reconstruction error.
    pub weighted_rel_error: f64,
    /// Wall time of this layer, seconds.
    pub seconds: f64,
}

/// Every decoder linear's payload and report.
pub struct QuantizedLinears {
    /// `payloads[block]` in [`LinearId::ALL`] order.
    pub payloads: Vec<Vec<TensorPayload>>,
    /// Reports in block, then [`LinearId::ALL`] order.
    pub reports: Vec<LayerReport>,
}

/// Per-layer ADMM seed: independent of the order layers are processed in.
pub(crate) fn layer_seed(seed: u64, block: usize, id: LinearId) -> u64 {
    seed ^ ((block as u64) << 8 | id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Quantizes every decoder linear of `w`, block by block: on the CPU the
/// seven linears of a block in parallel, on a GPU one after another (each
/// fills the device). `on_layer` sees each report as it completes.
pub fn quantize_linears(
    w: &ModelWeights,
    stats: Option<&ModelStats>,
    opts: &QuantizeOptions,
    on_layer: impl Fn(&LayerReport) + Sync,
) -> Result<QuantizedLinears, FactorError> {
    let mut payloads = Vec::with_capacity(w.layers.len());
    let mut reports = Vec::with_capacity(w.layers.len() * LinearId::ALL.len());
    for (b, l) in w.layers.iter().enumerate() {
        let one = |&id: &LinearId| {
            let start = Instant::now();
            let wt = id.weight(l);
            let (m, n) = (wt.rows, wt.cols);
            let bias = match id {
                LinearId::Q => l.bq.as_deref(),
                LinearId::K => l.bk.as_deref(),
                LinearId::V => l.bv.as_deref(),
                _ => None,
            };
            let uniform;
            let energies = match stats {
                Some(s) => s.get(b, id),
                None => {
                    uniform = LayerEnergies::uniform(m, n);
                    &uniform
                }
            };
            let rank = rank_for_bpw(m, n, opts.bpw, opts.rank_multiple)?;
            let admm = AdmmOptions {
                seed: layer_seed(opts.admm.seed, b, id),
                ..opts.admm
            };
            let q =
                quantize_linear_on(&opts.compute, wt, bias, energies, opts.method, rank, &admm)?;
            let report = LayerReport {
                block: b,
                name: super::export::linear_name(b, id),
                m,
                n,
                rank: q.rank,
                bits: q.bits,
                bpw: q.bits as f64 / (m * n) as f64,
                weighted_rel_error: q.weighted_rel_error,
                seconds: start.elapsed().as_secs_f64(),
            };
            on_layer(&report);
            Ok((q.payload, report))
        };
        let done: Vec<(TensorPayload, LayerReport)> = if opts.compute.is_gpu() {
            LinearId::ALL
                .iter()
                .map(one)
                .collect::<Result<_, FactorError>>()?
        } else {
            LinearId::ALL
                .par_iter()
                .map(one)
                .collect::<Result<_, FactorError>>()?
        };
        let (p, r): (Vec<_>, Vec<_>) = done.into_iter().unzip();
        payloads.push(p);
        reports.extend(r);
    }
    Ok(QuantizedLinears { payloads, reports })
}
