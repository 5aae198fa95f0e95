//! [`Backend`] over nq-cuda: buffers live on the GPU for a whole
//! factorization; only the start (weights, initial factors) and the end
//! (factors, latents) cross the bus.

use super::{
    cross_entropy_shape, kd_loss_shape, Backend, BackendError, BlockBackend, GpuMath, Heads,
    ModelBackend, Op,
};

/// One CUDA device as a quantizer backend.
pub struct CudaBackend {
    gpu: nq_cuda::Gpu,
}

impl CudaBackend {
    /// Opens CUDA device `ordinal` with IEEE f32 products (the setting whose
    /// results match the CPU backend to rounding).
    pub fn open(ordinal: usize) -> Result<Self, BackendError> {
        Self::open_with(ordinal, GpuMath::F32)
    }

    /// [`CudaBackend::open`] with the given product arithmetic.
    pub fn open_with(ordinal: usize, math: GpuMath) -> Result<Self, BackendError> {
        let precision = match math {
            GpuMath::F32 => nq_cuda::GemmPrecision::F32,
            GpuMath::Tf32 => nq_cuda::GemmPrecision::Tf32,
            GpuMath::Bf16 => nq_cuda::GemmPrecision::Bf16,
        };
        let gpu = nq_cuda::Gpu::new(ordinal, precision).map_err(device)?;
        Ok(Self { gpu })
    }

    /// The device.
    pub fn gpu(&self) -> &nq_cuda::Gpu {
        &self.gpu
    }
}

fn device(e: nq_cuda::CudaError) -> BackendError {
    // The two numerical outcomes of the Cholesky inverse read the same as
    // the CPU backend's.
    match e.to_string().as_str() {
        "normal equations not positive definite" => {
            BackendError::Numerical("normal equations not positive definite")
        }
        "non-finite inverse" => BackendError::Numerical("non-finite inverse"),
        s => BackendError::Device(s.to_string()),
    }
}

fn gpu_op(op: Op) -> nq_cuda::Op {
    match op {
        Op::Nt => nq_cuda::Op::Nt,
        Op::Nn => nq_cuda::Op::Nn,
        Op::Tn => nq_cuda::Op::Tn,
    }
}

impl Backend for CudaBackend {
    type Buf = nq_cuda::Buf;

    fn upload(&self, data: &[f32]) -> Result<Self::Buf, BackendError> {
        self.gpu.upload(data).map_err(device)
    }
    fn zeros(&self, len: usize) -> Result<Self::Buf, BackendError> {
        self.gpu.zeros(len).map_err(device)
    }
    fn download(&self, buf: &Self::Buf, out: &mut [f32]) -> Result<(), BackendError> {
        self.gpu.download(buf, out).map_err(device)
    }
    fn copy(&self, dst: &mut Self::Buf, src: &Self::Buf) -> Result<(), BackendError> {
        self.gpu.copy(dst, src).map_err(device)
    }
    fn matmul(
        &self,
        c: &mut Self::Buf,
        a: &Self::Buf,
        b: &Self::Buf,
        op: Op,
        shape: (usize, usize, usize),
    ) -> Result<(), BackendError> {
        self.gpu.matmul(c, a, b, gpu_op(op), shape).map_err(device)
    }
    fn normalize_rows(
        &self,
        x: &mut Self::Buf,
        rows: usize,
        cols: usize,
    ) -> Result<(), BackendError> {
        self.gpu.normalize_rows(x, rows, cols).map_err(device)
    }
    fn divide_by_column_norms(
        &self,
        dst: &mut Self::Buf,
        src: &Self::Buf,
        rows: usize,
        cols: usize,
    ) -> Result<(), BackendError> {
        self.gpu
            .divide_by_column_norms(dst, src, rows, cols)
            .map_err(device)
    }
    fn svid(
        &self,
        x: &Self::Buf,
        rows: usize,
        cols: usize,
        iters: usize,
        out: &mut Self::Buf,
    ) -> Result<(), BackendError> {
        self.gpu.svid(x, rows, cols, iters, out).map_err(device)
    }
    fn add(&self, out: &mut Self::Buf, a: &Self::Buf, b: &Self::Buf) -> Result<(), BackendError> {
        self.gpu.add(out, a, b).map_err(device)
    }
    fn sub(&self, out: &mut Self::Buf, a: &Self::Buf, b: &Self::Buf) -> Result<(), BackendError> {
        self.gpu.sub(out, a, b).map_err(device)
    }
    fn add_penalty(
        &self,
        rhs: &mut Self::Buf,
        rho: f32,
        z: &Self::Buf,
        u: &Self::Buf,
    ) -> Result<(), BackendError> {
        self.gpu.add_penalty(rhs, rho, z, u).map_err(device)
    }
    fn dual_update(
        &self,
        u: &mut Self::Buf,
        x: &Self::Buf,
        z: &Self::Buf,
    ) -> Result<(), BackendError> {
        self.gpu.dual_update(u, x, z).map_err(device)
    }
    fn invert_shifted(
        &self,
        gram: &Self::Buf,
        shift: f32,
        r: usize,
        inverse: &mut Self::Buf,
    ) -> Result<(), BackendError> {
        self.gpu
            .invert_shifted(gram, shift, r, inverse)
            .map_err(device)
    }
    fn signs(&self, x: &Self::Buf, out: &mut Self::Buf) -> Result<(), BackendError> {
        self.gpu.signs(x, out).map_err(device)
    }
    fn scale_rows(&self, x: &mut Self::Buf, s: &Self::Buf) -> Result<(), BackendError> {
        self.gpu.scale_rows(x, s).map_err(device)
    }
    fn scale_columns(&self, x: &mut Self::Buf, s: &Self::Buf) -> Result<(), BackendError> {
        let rows = x.len().checked_div(s.len()).unwrap_or(0);
        self.gpu.scale_columns(x, s, rows).map_err(device)
    }
    fn scale_grads(
        &self,
        dw: &Self::Buf,
        p: &Self::Buf,
        s_pre: &Self::Buf,
        s_post: &Self::Buf,
        g: &mut Self::Buf,
        d_pre: &mut Self::Buf,
        d_post: &mut Self::Buf,
    ) -> Result<(), BackendError> {
        self.gpu
            .scale_grads((dw, p), (s_pre, s_post), g, d_pre, d_post)
            .map_err(device)
    }
    fn pack_signs(&self, x: &Self::Buf, rows: usize, cols: usize) -> Result<Vec<u8>, BackendError> {
        let len = super::pack_shape(x.len(), rows, cols)?;
        let packed = self.gpu.pack_signs(x, rows, cols).map_err(device)?;
        let mut bytes = self.gpu.download_bytes(&packed).map_err(device)?;
        bytes.truncate(len);
        Ok(bytes)
    }

    fn adamw(
        &self,
        p: &mut Self::Buf,
        g: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        step: i32,
        lr: f32,
        wd: f32,
    ) -> Result<(), BackendError> {
        self.gpu.adamw(p, g, (m, v), step, lr, wd).map_err(device)
    }
}

impl BlockBackend for CudaBackend {
    fn matmul_acc(
        &self,
        c: &mut Self::Buf,
        a: &Self::Buf,
        b: &Self::Buf,
        op: Op,
        shape: (usize, usize, usize),
    ) -> Result<(), BackendError> {
        self.gpu
            .matmul_acc(c, a, b, gpu_op(op), shape)
            .map_err(device)
    }
    fn rmsnorm(
        &self,
        x: &Self::Buf,
        w: &Self::Buf,
        eps: f32,
        out: &mut Self::Buf,
        inv: &mut Self::Buf,
    ) -> Result<(), BackendError> {
        let rows = inv.len();
        self.gpu.rmsnorm(x, w, out, rows, eps).map_err(device)?;
        self.gpu
            .rmsnorm_inv(x, rows, w.len(), eps, inv)
            .map_err(device)
    }
    fn rmsnorm_backward(
        &self,
        x: &Self::Buf,
        w: &Self::Buf,
        inv: &Self::Buf,
        dy: &Self::Buf,
        dx: &mut Self::Buf,
        accumulate: bool,
    ) -> Result<(), BackendError> {
        self.gpu
            .rmsnorm_backward((x, w, inv), dy, inv.len(), dx, accumulate, None)
            .map_err(device)
    }
    fn add_bias(&self, y: &mut Self::Buf, b: &Self::Buf) -> Result<(), BackendError> {
        let rows = y.len().checked_div(b.len()).unwrap_or(0);
        self.gpu.add_bias(y, b, rows).map_err(device)
    }
    fn rope(
        &self,
        x: &mut Self::Buf,
        cos: &Self::Buf,
        sin: &Self::Buf,
        t: usize,
        heads: usize,
        inverse: bool,
    ) -> Result<(), BackendError> {
        if inverse {
            self.gpu.rope_backward(x, cos, sin, t, heads)
        } else {
            self.gpu.rope(x, cos, sin, t, heads)
        }
        .map_err(device)
    }
    fn attention(
        &self,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        out: &mut Self::Buf,
        probs: &mut Self::Buf,
        t: usize,
        heads: Heads,
    ) -> Result<(), BackendError> {
        self.gpu.attention(q, k, v, out, t, heads).map_err(device)?;
        self.gpu
            .attention_probs((q, k), probs, t, heads)
            .map_err(device)
    }
    fn attention_backward(
        &self,
        (q, k, v): (&Self::Buf, &Self::Buf, &Self::Buf),
        probs: &Self::Buf,
        d_out: &Self::Buf,
        dq: &mut Self::Buf,
        dk: &mut Self::Buf,
        dv: &mut Self::Buf,
        t: usize,
        heads: Heads,
    ) -> Result<(), BackendError> {
        self.gpu
            .attention_backward((q, k, v, probs), d_out, (dq, dk, dv), t, heads)
            .map_err(device)
    }
    fn silu_mul(
        &self,
        out: &mut Self::Buf,
        g: &Self::Buf,
        u: &Self::Buf,
    ) -> Result<(), BackendError> {
        self.gpu.silu_mul(out, g, u).map_err(device)
    }
    fn swiglu_backward(
        &self,
        g: &Self::Buf,
        u: &Self::Buf,
        d_act: &Self::Buf,
        dg: &mut Self::Buf,
        du: &mut Self::Buf,
    ) -> Result<(), BackendError> {
        self.gpu
            .swiglu_backward((g, u), d_act, dg, du)
            .map_err(device)
    }
    fn add_assign(&self, x: &mut Self::Buf, y: &Self::Buf) -> Result<(), BackendError> {
        self.gpu.add_assign(x, y).map_err(device)
    }
    fn weighted_mse_grad(
        &self,
        y: &Self::Buf,
        target: &Self::Buf,
        imp: &Self::Buf,
        norm: f64,
        dy: &mut Self::Buf,
    ) -> Result<(), BackendError> {
        self.gpu
            .weighted_mse_grad((y, target), imp, norm, dy)
            .map_err(device)
    }
}

impl ModelBackend for CudaBackend {
    fn row_norms(&self, x: &Self::Buf, width: usize) -> Result<Vec<f32>, BackendError> {
        self.gpu.row_norms(x, width).map_err(device)
    }

    fn add_clipped_squares(
        &self,
        x: &Self::Buf,
        scales: &[f32],
        acc: &mut [f64],
    ) -> Result<(), BackendError> {
        self.gpu.add_clipped_squares(x, scales, acc).map_err(device)
    }

    fn cross_entropy(
        &self,
        logits: &Self::Buf,
        tokens: &[u32],
        vocab: usize,
        dlogits: &mut Self::Buf,
    ) -> Result<f64, BackendError> {
        cross_entropy_shape((logits.len(), dlogits.len()), tokens, vocab)?;
        self.gpu
            .cross_entropy(logits, tokens, vocab, dlogits)
            .map_err(device)
    }

    fn kd_loss(
        &self,
        logits: &Self::Buf,
        teacher: (&[u32], &[f32]),
        k: usize,
        vocab: usize,
        dlogits: &mut Self::Buf,
    ) -> Result<f64, BackendError> {
        kd_loss_shape((logits.len(), dlogits.len()), teacher, k, vocab)?;
        self.gpu
            .kd_loss(logits, teacher, k, vocab, dlogits)
            .map_err(device)
    }
}

impl crate::linalg::GemmOffload for CudaBackend {
    fn gemm(
        &self,
        c: &mut [f32],
        ldc: usize,
        a: &[f32],
        a_strides: (usize, usize),
        b: &[f32],
        b_strides: (usize, usize),
        shape: (usize, usize, usize),
        accumulate: bool,
    ) -> bool {
        match self
            .gpu
            .gemm_host(c, ldc, a, a_strides, b, b_strides, shape, accumulate)
        {
            Ok(done) => done,
            Err(e) => {
                // The CPU computes this product instead; say so once.
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    eprintln!("warning: GPU product failed ({e}); computing products on the CPU")
                });
                false
            }
        }
    }
}
