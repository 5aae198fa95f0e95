//! A factorized layer's straight-through training on a compute backend:
//! latents, scales and their AdamW moments stay in backend buffers for the
//! whole phase; each step takes `∂L/∂Ŵ` up and gives `Ŵ` back.
//!
//! Block reconstruction (`recon.rs`) uses this on a GPU, where it replaces
//! four host products per step (`U·V`, `g·Vᵀ`, `Uᵀ·g`, `Ŵ`) and the
//! element-wise chain rule with device work and two `m × n` transfers. On
//! the CPU reconstruction keeps its own path ([`FactorState::grads`] and the
//! host AdamW), which this follows operation for operation: the gradients
//! are the same up to summation order (`tests/backend.rs` compares every
//! backend with it).

use nq_core::{F16Vector, FactorizedLinear, SignMatrix};

use crate::backend::{Backend, BackendError, Op};
use crate::blob_writer::TensorPayload;
use crate::model::Matrix;

use super::factor::FactorError;
use super::recon::{round_f16, FactorState};

/// `out = diag(s_post)·sign(la)·sign(lb)·diag(s_pre)` (`m × n`) for
/// latents `la` (`m × r`) and `lb` (`r × n`), with `u` and `v` (their
/// shapes) as scratch: the host's `FactorState::dense` operation for
/// operation.
pub(crate) fn signed_product<B: Backend>(
    be: &B,
    (la, lb): (&B::Buf, &B::Buf),
    (s_pre, s_post): (&B::Buf, &B::Buf),
    (u, v): (&mut B::Buf, &mut B::Buf),
    out: &mut B::Buf,
    (m, n, r): (usize, usize, usize),
) -> Result<(), BackendError> {
    be.signs(la, u)?;
    be.scale_rows(u, s_post)?;
    be.signs(lb, v)?;
    be.scale_columns(v, s_pre)?;
    be.matmul(out, u, v, Op::Nn, (m, n, r))
}

/// The training state of one factorized layer on backend `B`.
pub struct DeviceFactor<B: Backend> {
    m: usize,
    n: usize,
    r: usize,
    la: B::Buf,
    lb: B::Buf,
    s_pre: B::Buf,
    s_post: B::Buf,
    /// AdamW moments `(m, v)` of `la`, `lb`, `s_pre`, `s_post`.
    moments: [(B::Buf, B::Buf); 4],
    steps: i32,
    // Scratch, allocated once.
    u: B::Buf,
    v: B::Buf,
    p: B::Buf,
    g: B::Buf,
    dla: B::Buf,
    dlb: B::Buf,
    d_pre: B::Buf,
    d_post: B::Buf,
}

/// Learning rates and weight decay of one step.
#[derive(Clone, Copy, Debug)]
pub struct StepRates {
    /// Learning rate of the latents.
    pub latent: f32,
    /// Learning rate of the scales.
    pub scale: f32,
    /// Weight decay of the latents (the scales have none).
    pub weight_decay: f32,
}

impl<B: Backend> DeviceFactor<B> {
    /// Uploads `state`, with zero AdamW moments.
    pub fn new(be: &B, state: &FactorState) -> Result<Self, BackendError> {
        let (m, n, r) = state.dims();
        let moments = |len: usize| -> Result<(B::Buf, B::Buf), BackendError> {
            Ok((be.zeros(len)?, be.zeros(len)?))
        };
        Ok(Self {
            m,
            n,
            r,
            la: be.upload(&state.la.data)?,
            lb: be.upload(&state.lb.data)?,
            s_pre: be.upload(&state.s_pre)?,
            s_post: be.upload(&state.s_post)?,
            moments: [moments(m * r)?, moments(r * n)?, moments(n)?, moments(m)?],
            steps: 0,
            u: be.zeros(m * r)?,
            v: be.zeros(r * n)?,
            p: be.zeros(m * n)?,
            g: be.zeros(m * n)?,
            dla: be.zeros(m * r)?,
            dlb: be.zeros(r * n)?,
            d_pre: be.zeros(n)?,
            d_post: be.zeros(m)?,
        })
    }

    /// `(m, n, r)`.
    pub fn dims(&self) -> (usize, usize, usize) {
        (self.m, self.n, self.r)
    }

    /// One step from `dw = ∂L/∂Ŵ` (`m × n`, host): the straight-through
    /// gradients `∂L/∂L_a = (dw ⊙ s_post s_preᵀ)·Vᵀ`, `∂L/∂L_b = Uᵀ·(…)`,
    /// the scale gradients, then AdamW on all four.
    pub fn step(&mut self, be: &B, dw: &[f32], rates: StepRates) -> Result<(), BackendError> {
        let (m, n) = (self.m, self.n);
        if dw.len() != m * n {
            return Err(BackendError::Device(format!(
                "factor step: dW has {} values, not {m} × {n}",
                dw.len()
            )));
        }
        let dw = be.upload(dw)?;
        self.step_device(be, &dw, rates)
    }

    /// [`DeviceFactor::step`] with `dw` already on the device.
    pub fn step_device(
        &mut self,
        be: &B,
        dw: &B::Buf,
        rates: StepRates,
    ) -> Result<(), BackendError> {
        let (m, n, r) = (self.m, self.n, self.r);
        be.signs(&self.la, &mut self.u)?;
        be.signs(&self.lb, &mut self.v)?;
        be.matmul(&mut self.p, &self.u, &self.v, Op::Nn, (m, n, r))?;
        be.scale_grads(
            dw,
            &self.p,
            &self.s_pre,
            &self.s_post,
            &mut self.g,
            &mut self.d_pre,
            &mut self.d_post,
        )?;
        be.matmul(&mut self.dla, &self.g, &self.v, Op::Nt, (m, r, n))?;
        be.matmul(&mut self.dlb, &self.u, &self.g, Op::Tn, (r, n, m))?;
        self.steps += 1;
        let t = self.steps;
        let [(m0, v0), (m1, v1), (m2, v2), (m3, v3)] = &mut self.moments;
        let (lr, slr, wd) = (rates.latent, rates.scale, rates.weight_decay);
        be.adamw(&mut self.la, &self.dla, m0, v0, t, lr, wd)?;
        be.adamw(&mut self.lb, &self.dlb, m1, v1, t, lr, wd)?;
        be.adamw(&mut self.s_pre, &self.d_pre, m2, v2, t, slr, 0.0)?;
        be.adamw(&mut self.s_post, &self.d_post, m3, v3, t, slr, 0.0)?;
        Ok(())
    }

    /// `Ŵ = diag(s_post)·sign(L_a)·sign(L_b)·diag(s_pre)`, the weight the
    /// forward pass trains with, on the device (valid until the next call).
    pub fn dense_device(&mut self, be: &B) -> Result<&B::Buf, BackendError> {
        signed_product(
            be,
            (&self.la, &self.lb),
            (&self.s_pre, &self.s_post),
            (&mut self.u, &mut self.v),
            &mut self.p,
            (self.m, self.n, self.r),
        )?;
        Ok(&self.p)
    }

    /// [`DeviceFactor::dense_device`], downloaded.
    pub fn dense(&mut self, be: &B) -> Result<Matrix, BackendError> {
        let (m, n) = (self.m, self.n);
        let mut w = Matrix::zeros(m, n);
        be.download(self.dense_device(be)?, &mut w.data)?;
        Ok(w)
    }

    /// Hardens the layer (straight-through training ends): the exported
    /// layer with `bias` — the latents' signs packed on the device (only
    /// the bits come back), the scales rounded to f16 — and its weight
    /// `Ŵ` with those scales, which the state keeps from now on. What
    /// [`FactorState::payload`] and [`FactorState::hardened_dense`] give
    /// for [`DeviceFactor::state`], without downloading the latents.
    pub fn harden(
        &mut self,
        be: &B,
        bias: Option<&[f32]>,
    ) -> Result<(Matrix, TensorPayload), FactorError> {
        let (m, n, r) = (self.m, self.n, self.r);
        let (mut s_pre, mut s_post) = (vec![0.0; n], vec![0.0; m]);
        be.download(&self.s_pre, &mut s_pre)?;
        be.download(&self.s_post, &mut s_post)?;
        let shape = |_| FactorError::Numerical("factorized layer shape");
        let u = SignMatrix::new(m, r, be.pack_signs(&self.la, m, r)?).map_err(shape)?;
        let v = SignMatrix::new(r, n, be.pack_signs(&self.lb, r, n)?).map_err(shape)?;
        let layer = FactorizedLinear::new(
            u,
            v,
            F16Vector::from_f32(&s_pre),
            F16Vector::from_f32(&s_post),
            bias.map(F16Vector::from_f32),
        )
        .map_err(shape)?;
        let (pre, post) = (
            be.upload(&round_f16(&s_pre))?,
            be.upload(&round_f16(&s_post))?,
        );
        (self.s_pre, self.s_post) = (pre, post);
        Ok((self.dense(be)?, TensorPayload::Factorized(layer)))
    }

    /// The current latents and scales, downloaded.
    pub fn state(&self, be: &B) -> Result<FactorState, BackendError> {
        let (m, n, r) = (self.m, self.n, self.r);
        let get = |buf: &B::Buf, len: usize| -> Result<Vec<f32>, BackendError> {
            let mut v = vec![0.0; len];
            be.download(buf, &mut v)?;
            Ok(v)
        };
        Ok(FactorState {
            la: Matrix {
                rows: m,
                cols: r,
                data: get(&self.la, m * r)?,
            },
            lb: Matrix {
                rows: r,
                cols: n,
                data: get(&self.lb, r * n)?,
            },
            s_pre: get(&self.s_pre, n)?,
            s_post: get(&self.s_post, m)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use crate::quant::recon::Adam;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random(len: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
        (0..len).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
    }

    /// On the CPU backend the device path is reconstruction's host path
    /// operation for operation: bit-identical states and weights.
    #[test]
    fn cpu_backend_steps_equal_the_host_training_path() {
        let (m, n, r) = (24, 40, 8);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut host = FactorState {
            la: Matrix {
                rows: m,
                cols: r,
                data: random(m * r, &mut rng),
            },
            lb: Matrix {
                rows: r,
                cols: n,
                data: random(r * n, &mut rng),
            },
            s_pre: random(n, &mut rng),
            s_post: random(m, &mut rng),
        };
        let be = CpuBackend::default();
        let mut dev = DeviceFactor::new(&be, &host).unwrap();
        let mut adam = [
            Adam::new(m * r),
            Adam::new(r * n),
            Adam::new(n),
            Adam::new(m),
        ];
        let rates = StepRates {
            latent: 1e-2,
            scale: 1e-3,
            weight_decay: 0.05,
        };
        for _ in 0..4 {
            let dw = Matrix {
                rows: m,
                cols: n,
                data: random(m * n, &mut rng),
            };
            let gr = host.grads(&dw);
            adam[0].step(&mut host.la.data, &gr.la, rates.latent, rates.weight_decay);
            adam[1].step(&mut host.lb.data, &gr.lb, rates.latent, rates.weight_decay);
            adam[2].step(&mut host.s_pre, &gr.s_pre, rates.scale, 0.0);
            adam[3].step(&mut host.s_post, &gr.s_post, rates.scale, 0.0);
            dev.step(&be, &dw.data, rates).unwrap();
            assert_eq!(dev.dense(&be).unwrap().data, host.dense().data);
        }
        let got = dev.state(&be).unwrap();
        assert_eq!(got.la.data, host.la.data);
        assert_eq!(got.lb.data, host.lb.data);
        assert_eq!(got.s_pre, host.s_pre);
        assert_eq!(got.s_post, host.s_post);
        // A wrong dW shape is an error.
        assert!(dev.step(&be, &[0.0; 3], rates).is_err());
    }
}
