//! [`Gpu`] operations of calibration statistics and model reconstruction
//! (`kernels/stats.cu`): token norms and clipped channel energies of an
//! activation site, and the two losses over the logits with their
//! gradients. Small host-side results (norms, per-channel sums, per-row
//! losses) come back; the activations and logits stay on the device.

use cudarc::driver::{CudaSlice, DeviceRepr, PushKernelArg, ValidAsZeroBits};

use super::{err, shape, Buf, Gpu};
use crate::geometry::{per_elem, per_row};
use crate::CudaError;

impl Gpu {
    /// Copies `buf` back to the host and waits.
    pub(super) fn fetch<T: DeviceRepr + ValidAsZeroBits + Clone + Default>(
        &self,
        buf: &CudaSlice<T>,
    ) -> Result<Vec<T>, CudaError> {
        let mut out = vec![T::default(); buf.len()];
        self.stream
            .memcpy_dtoh(buf, &mut out)
            .map_err(|e| err("download", e))?;
        self.stream
            .synchronize()
            .map_err(|e| err("synchronize", e))?;
        Ok(out)
    }

    /// `‖x[r]‖₂` of each row of `x` (`rows × width`), on the host.
    pub fn row_norms(&self, x: &Buf, width: usize) -> Result<Vec<f32>, CudaError> {
        if width == 0 {
            return Err(CudaError::new("row_norms: zero width"));
        }
        let rows = x.len() / width;
        let (r, w) = shape(x.len(), rows, width)?;
        if rows == 0 {
            return Ok(Vec::new());
        }
        let mut out = self.zeros(rows)?;
        launch!(self, "nq_row_norms", per_row(rows), x, &mut out, &r, &w);
        self.fetch(&out)
    }

    /// `acc[j] += Σ_r (x[r][j]·scales[r])²` for `x` (`scales.len() ×
    /// acc.len()`): products in f32, squares and sums in f64 with rows in
    /// order (the CPU statistics' arithmetic). `acc` lives on the host.
    pub fn add_clipped_squares(
        &self,
        x: &Buf,
        scales: &[f32],
        acc: &mut [f64],
    ) -> Result<(), CudaError> {
        let (r, w) = shape(x.len(), scales.len(), acc.len())?;
        if x.is_empty() {
            return Ok(());
        }
        let s = self.upload(scales)?;
        let mut sums = self.stream.memcpy_stod(acc).map_err(|e| err("upload", e))?;
        launch!(
            self,
            "nq_clipped_squares",
            per_elem(acc.len()),
            x,
            &s,
            &mut sums,
            &r,
            &w
        );
        acc.copy_from_slice(&self.fetch(&sums)?);
        Ok(())
    }

    /// Next-token cross-entropy of `logits` (`t × vocab`, `t =
    /// tokens.len()`): `dlogits` gets `(softmax − onehot(next)) / (t − 1)`
    /// (the last row 0); returns the mean loss over the `t − 1` predictions.
    pub fn cross_entropy(
        &self,
        logits: &Buf,
        tokens: &[u32],
        vocab: usize,
        dlogits: &mut Buf,
    ) -> Result<f64, CudaError> {
        let t = tokens.len();
        let (ti, vi) = shape(logits.len(), t, vocab)?;
        shape(dlogits.len(), t, vocab)?;
        if t < 2 {
            return Err(CudaError::new("cross_entropy: fewer than 2 tokens"));
        }
        if tokens.iter().any(|&id| id as usize >= vocab) {
            return Err(CudaError::new(
                "cross_entropy: token outside the vocabulary",
            ));
        }
        let next = self
            .stream
            .memcpy_stod(&tokens[1..])
            .map_err(|e| err("upload", e))?;
        let mut loss = self
            .stream
            .alloc_zeros::<f64>(t)
            .map_err(|e| err("alloc", e))?;
        let n = (t - 1) as f64;
        launch!(
            self,
            "nq_cross_entropy",
            per_row(t),
            logits,
            &next,
            dlogits,
            &mut loss,
            &ti,
            &vi,
            &n
        );
        Ok(self.fetch(&loss)?[..t - 1].iter().sum::<f64>() / n)
    }

    /// Cross-entropy of `logits` (`rows × vocab`) against a truncated
    /// teacher: `k` distinct token ids and their probabilities per row
    /// (`ids`, `probs`: `rows × k`). `dlogits` gets `(softmax − p̃) / rows`;
    /// returns the mean loss.
    pub fn kd_loss(
        &self,
        logits: &Buf,
        (ids, probs): (&[u32], &[f32]),
        k: usize,
        vocab: usize,
        dlogits: &mut Buf,
    ) -> Result<f64, CudaError> {
        let rows = logits.len().checked_div(vocab).unwrap_or(0);
        let (ri, vi) = shape(logits.len(), rows, vocab)?;
        shape(dlogits.len(), rows, vocab)?;
        let (_, ki) = shape(ids.len(), rows, k)?;
        shape(probs.len(), rows, k)?;
        if rows == 0 || k == 0 {
            return Err(CudaError::new("kd_loss: no rows or no teacher tokens"));
        }
        if ids.iter().any(|&id| id as usize >= vocab) {
            return Err(CudaError::new("kd_loss: token outside the vocabulary"));
        }
        let ids = self.stream.memcpy_stod(ids).map_err(|e| err("upload", e))?;
        let probs = self.upload(probs)?;
        let mut loss = self
            .stream
            .alloc_zeros::<f64>(rows)
            .map_err(|e| err("alloc", e))?;
        launch!(
            self,
            "nq_kd_loss",
            per_row(rows),
            logits,
            &ids,
            &probs,
            dlogits,
            &mut loss,
            &ri,
            &vi,
            &ki
        );
        Ok(self.fetch(&loss)?.iter().sum::<f64>() / rows as f64)
    }
}
