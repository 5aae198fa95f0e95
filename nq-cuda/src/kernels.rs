//! The CUDA C sources of nanoquant's kernels, compiled at run time with
//! NVRTC (and in CI to PTX and SASS, see `tests/compile.rs`).

/// One kernel source file.
#[derive(Clone, Copy, Debug)]
pub struct KernelSource {
    /// File name under `nq-cuda/kernels/`.
    pub file: &'static str,
    /// CUDA C source (with `kernels/common.cuh` in front).
    pub source: &'static str,
    /// The `extern "C"` entry points it defines.
    pub entry_points: &'static [&'static str],
}

/// A kernel file with `kernels/common.cuh` (block size, block reductions)
/// in front of it.
macro_rules! with_common {
    ($file:literal) => {
        concat!(include_str!("../kernels/common.cuh"), include_str!($file))
    };
}

/// The shared prelude, for the block-size check.
#[cfg(test)]
pub(crate) const COMMON: &str = include_str!("../kernels/common.cuh");

/// ADMM's element-wise and reduction steps.
pub const ADMM: KernelSource = KernelSource {
    file: "admm.cu",
    source: with_common!("../kernels/admm.cu"),
    entry_points: &[
        "nq_normalize_rows",
        "nq_column_sumsq",
        "nq_divide_columns",
        "nq_fill_f64",
        "nq_sumsq_f64",
        "nq_svid_u",
        "nq_svid_v",
        "nq_svid_out",
        "nq_add",
        "nq_sub",
        "nq_add_penalty",
        "nq_dual_update",
        "nq_shifted_system",
        "nq_inverse_to_f32",
    ],
};

/// The element-wise parts of the transformer forward pass.
pub const FORWARD: KernelSource = KernelSource {
    file: "forward.cu",
    source: with_common!("../kernels/forward.cu"),
    entry_points: &[
        "nq_rmsnorm",
        "nq_rmsnorm_inplace",
        "nq_rmsnorm_inv",
        "nq_add_bias",
        "nq_rope",
        "nq_rope_backward",
        "nq_attention",
        "nq_attention_probs",
        "nq_silu_mul",
        "nq_add_assign",
    ],
};

/// Products with packed sign matrices (blob layout) and scale vectors.
pub const SIGNS: KernelSource = KernelSource {
    file: "signs.cu",
    source: with_common!("../kernels/signs.cu"),
    entry_points: &["nq_sign_matmul", "nq_scale_columns"],
};

/// The element-wise parts of the transformer block's backward pass.
pub const BACKWARD: KernelSource = KernelSource {
    file: "backward.cu",
    source: with_common!("../kernels/backward.cu"),
    entry_points: &[
        "nq_rmsnorm_backward",
        "nq_rmsnorm_weight_grad",
        "nq_swiglu_backward",
        "nq_attention_backward_q",
        "nq_attention_backward_kv",
    ],
};

/// Reconstruction's per-parameter steps: signs, scale gradients, AdamW,
/// sign packing.
pub const TRAIN: KernelSource = KernelSource {
    file: "train.cu",
    source: with_common!("../kernels/train.cu"),
    entry_points: &[
        "nq_signs",
        "nq_scale_rows",
        "nq_scale_outer",
        "nq_scale_grad_post",
        "nq_scale_grad_pre",
        "nq_adamw",
        "nq_weighted_mse_grad",
        "nq_pack_signs",
    ],
};

/// Calibration statistics and model reconstruction: token norms, clipped
/// channel energies, the next-token and distillation losses.
pub const STATS: KernelSource = KernelSource {
    file: "stats.cu",
    source: with_common!("../kernels/stats.cu"),
    entry_points: &[
        "nq_row_norms",
        "nq_clipped_squares",
        "nq_cross_entropy",
        "nq_kd_loss",
    ],
};

/// Every kernel source of the crate.
pub const ALL: &[KernelSource] = &[ADMM, FORWARD, SIGNS, BACKWARD, TRAIN, STATS];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_point_is_defined_in_its_source() {
        for k in ALL {
            for e in k.entry_points {
                let decl = format!("__global__ void {e}(");
                assert!(k.source.contains(&decl), "{}: {e} not found", k.file);
            }
        }
    }
}
