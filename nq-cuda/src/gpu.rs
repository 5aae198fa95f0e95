//! A CUDA device ready for nanoquant's work: context, stream, cuBLAS and
//! cuSOLVER handles, and the NVRTC-compiled kernels of [`crate::kernels`].
//!
//! Every operation takes row-major `f32` device buffers ([`Buf`]) with
//! explicit shapes, checks the shapes (a wrong length is an error, not an
//! out-of-bounds access) and is queued on the one stream; only
//! [`Gpu::download`] and the Cholesky solve (which reads back its status)
//! wait for the device.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use cudarc::cublas::{sys as blas_sys, CudaBlas, Gemm, GemmConfig};
use cudarc::cusolver::sys as solver_sys;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use crate::{geometry, kernels, nvrtc, CudaError, DeviceInfo};

/// A row-major `f32` matrix in device memory.
pub type Buf = CudaSlice<f32>;

/// Which operand of a product is transposed (row-major shapes: `c` is
/// `m × n`, the inner dimension `k`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `c = a · bᵀ`, `a` `m × k`, `b` `n × k`.
    Nt,
    /// `c = a · b`, `a` `m × k`, `b` `k × n`.
    Nn,
    /// `c = aᵀ · b`, `a` `k × m`, `b` `k × n`.
    Tn,
}

/// Arithmetic of the cuBLAS products.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GemmPrecision {
    /// IEEE f32 (matches the CPU backend to rounding).
    #[default]
    F32,
    /// TF32 tensor cores (10-bit mantissa products, f32 accumulation).
    Tf32,
    /// bf16 tensor cores: f32 operands rounded to bf16 (8-bit mantissas)
    /// inside cuBLAS (`CUBLAS_COMPUTE_32F_FAST_16BF`), f32 accumulation
    /// and output.
    Bf16,
}

/// Launches kernel `$name` with `$cfg` and the arguments, in order.
///
/// Every kernel bounds its indexing by the shape arguments passed with it;
/// callers check those shapes against the buffers before launching.
macro_rules! launch {
    ($gpu:expr, $name:expr, $cfg:expr, $($arg:expr),+ $(,)?) => {{
        let cfg: cudarc::driver::LaunchConfig = $cfg;
        let f = $gpu.function($name)?;
        let mut b = $gpu.stream.launch_builder(f);
        $( b.arg($arg); )+
        // SAFETY: see the macro's documentation; the arguments match the
        // kernel's parameter list in kernels/*.cu (types and order).
        unsafe { b.launch(cfg) }.map_err(|e| err($name, e))?;
    }};
}

use crate::geometry::{grid_stride, per_elem, per_row, single_block};

#[path = "gpu_train.rs"]
mod train;
pub use train::{HeadShape, ADAM_BETA1, ADAM_BETA2, ADAM_EPS};

#[path = "gpu_stats.rs"]
mod stats;

/// cuSOLVER dense handle.
struct Solver(solver_sys::cusolverDnHandle_t);

// SAFETY: the handle is only used under `Gpu::solver`'s lock, one thread at
// a time, which is what cuSOLVER requires of a handle.
unsafe impl Send for Solver {}

/// An initialized CUDA device.
pub struct Gpu {
    info: DeviceInfo,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    functions: HashMap<&'static str, CudaFunction>,
    /// The solver handle, one user at a time.
    solver: Mutex<Solver>,
    precision: GemmPrecision,
}

fn err(what: &str, e: impl std::fmt::Debug) -> CudaError {
    CudaError::new(format!("{what}: {e:?}"))
}

/// Library names of cuBLAS and cuSOLVER (CUDA 12 and 13).
fn math_libraries_present() -> Result<(), CudaError> {
    for (what, names) in [
        (
            "cuBLAS",
            &["libcublas.so", "libcublas.so.12", "libcublas.so.13"][..],
        ),
        (
            "cuBLASLt",
            &["libcublasLt.so", "libcublasLt.so.12", "libcublasLt.so.13"][..],
        ),
        (
            "cuSOLVER",
            &["libcusolver.so", "libcusolver.so.11", "libcusolver.so.12"][..],
        ),
    ] {
        // SAFETY: as in `driver_library_present`: load and drop.
        let found = names
            .iter()
            .any(|n| unsafe { libloading::Library::new(n) }.is_ok());
        if !found && !cfg!(windows) {
            return Err(CudaError::new(format!(
                "{what} library not found ({})",
                names.join(" or ")
            )));
        }
    }
    Ok(())
}

impl Gpu {
    /// Opens device `ordinal`: compiles the kernels for its architecture
    /// and creates the library handles. Never panics; every failure (no
    /// driver, no such device, a library missing) is an error.
    pub fn new(ordinal: usize, precision: GemmPrecision) -> Result<Self, CudaError> {
        let probe = crate::probe();
        let info = probe
            .devices()
            .iter()
            .find(|d| d.ordinal == ordinal)
            .cloned()
            .ok_or_else(|| {
                CudaError::new(format!("no CUDA device {ordinal}: {}", probe.describe()))
            })?;
        math_libraries_present()?;
        catch_unwind(AssertUnwindSafe(|| Self::open(info, precision)))
            .unwrap_or_else(|_| Err(CudaError::new("a CUDA library could not be used")))
    }

    fn open(info: DeviceInfo, precision: GemmPrecision) -> Result<Self, CudaError> {
        let (major, minor) = info.compute_capability;
        if precision != GemmPrecision::F32 && major < 8 {
            // cuBLAS would quietly compute in f32 instead.
            return Err(CudaError::new(format!(
                "{precision:?} products need tensor cores of compute capability 8.0 \
                 (Ampere) or newer; {} is {major}.{minor}",
                info.name
            )));
        }
        let arch = nvrtc::arch_for((major * 10 + minor) as u32)?;
        let ctx = CudaContext::new(info.ordinal).map_err(|e| err("CUDA context", e))?;
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(|e| err("cuBLAS", e))?;
        let mode = match precision {
            GemmPrecision::F32 | GemmPrecision::Bf16 => blas_sys::cublasMath_t::CUBLAS_DEFAULT_MATH,
            GemmPrecision::Tf32 => blas_sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH,
        };
        // SAFETY: `blas` owns a live handle.
        let status = unsafe { blas_sys::cublasSetMathMode(*blas.handle(), mode) };
        if status != blas_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            return Err(err("cublasSetMathMode", status));
        }
        let mut functions = HashMap::new();
        for src in kernels::ALL {
            let ptx = nvrtc::compile(src.file, src.source, arch)?;
            let module = ctx
                .load_module(Ptx::from_src(ptx))
                .map_err(|e| err(src.file, e))?;
            for &name in src.entry_points {
                let f = module.load_function(name).map_err(|e| err(name, e))?;
                functions.insert(name, f);
            }
        }
        let mut handle = std::ptr::null_mut();
        // SAFETY: cusolverDnCreate writes a fresh handle; it is bound to our
        // stream (cudarc's stream handle is the driver's CUstream, which the
        // runtime API accepts as cudaStream_t).
        unsafe {
            check_solver(
                solver_sys::cusolverDnCreate(&mut handle),
                "cusolverDnCreate",
            )?;
            check_solver(
                solver_sys::cusolverDnSetStream(handle, stream.cu_stream() as _),
                "cusolverDnSetStream",
            )?;
        }
        Ok(Self {
            info,
            ctx,
            stream,
            blas,
            functions,
            solver: Mutex::new(Solver(handle)),
            precision,
        })
    }

    /// The arithmetic of this device's cuBLAS products.
    pub fn precision(&self) -> GemmPrecision {
        self.precision
    }

    /// The device.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// Copies host data to a new device buffer.
    pub fn upload(&self, data: &[f32]) -> Result<Buf, CudaError> {
        self.stream.memcpy_stod(data).map_err(|e| err("upload", e))
    }

    /// A new zeroed device buffer of `len` values.
    pub fn zeros(&self, len: usize) -> Result<Buf, CudaError> {
        self.stream.alloc_zeros(len).map_err(|e| err("alloc", e))
    }

    /// Copies a device buffer into `out` (same length) and waits for it.
    pub fn download(&self, buf: &Buf, out: &mut [f32]) -> Result<(), CudaError> {
        if buf.len() != out.len() {
            return Err(CudaError::new("download: length mismatch"));
        }
        self.stream
            .memcpy_dtoh(buf, out)
            .map_err(|e| err("download", e))?;
        self.stream.synchronize().map_err(|e| err("synchronize", e))
    }

    /// `dst = src` (same length).
    pub fn copy(&self, dst: &mut Buf, src: &Buf) -> Result<(), CudaError> {
        if dst.len() != src.len() {
            return Err(CudaError::new("copy: length mismatch"));
        }
        self.stream
            .memcpy_dtod(src, dst)
            .map_err(|e| err("copy", e))
    }

    /// Row-major `c = op(a, b)` (`c` `m × n`, inner dimension `k`) through
    /// cuBLAS, which is column-major: a row-major matrix read column-major
    /// is its transpose, so `cᵀ = op(b)ᵀ op(a)ᵀ` is computed with the
    /// operands swapped.
    pub fn matmul(
        &self,
        c: &mut Buf,
        a: &Buf,
        b: &Buf,
        op: Op,
        shape: (usize, usize, usize),
    ) -> Result<(), CudaError> {
        self.gemm(c, a, b, op, shape, false)
    }

    /// [`Gpu::matmul`] adding into `c`: `c += op(a, b)`.
    pub fn matmul_acc(
        &self,
        c: &mut Buf,
        a: &Buf,
        b: &Buf,
        op: Op,
        shape: (usize, usize, usize),
    ) -> Result<(), CudaError> {
        self.gemm(c, a, b, op, shape, true)
    }

    fn gemm(
        &self,
        c: &mut Buf,
        a: &Buf,
        b: &Buf,
        op: Op,
        (m, n, k): (usize, usize, usize),
        accumulate: bool,
    ) -> Result<(), CudaError> {
        if c.len() != m * n || a.len() != m * k || b.len() != k * n {
            return Err(CudaError::new(
                "matmul: operand sizes do not match the shape",
            ));
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 {
            // An empty inner dimension: c = 0 (cuBLAS would reject ld = 0).
            if accumulate {
                return Ok(());
            }
            return self.stream.memset_zeros(c).map_err(|e| err("memset", e));
        }
        self.bind()?;
        let int =
            |x: usize| i32::try_from(x).map_err(|_| CudaError::new("matmul: dimension over 2^31"));
        use blas_sys::cublasOperation_t::{CUBLAS_OP_N as N, CUBLAS_OP_T as T};
        // (op on b, op on a, ld of b, ld of a) in cuBLAS's column-major terms.
        let (tb, ta, ldb, lda) = match op {
            Op::Nt => (T, N, k, k),
            Op::Nn => (N, N, n, k),
            Op::Tn => (N, T, n, m),
        };
        let cfg = GemmConfig {
            transa: tb,
            transb: ta,
            m: int(n)?,
            n: int(m)?,
            k: int(k)?,
            alpha: 1.0f32,
            lda: int(ldb)?,
            ldb: int(lda)?,
            beta: if accumulate { 1.0f32 } else { 0.0f32 },
            ldc: int(n)?,
        };
        // SAFETY: the sizes checked above cover every element the product
        // reads (b: k·n, a: m·k) and writes (c: m·n) with these strides.
        unsafe { self.sgemm(cfg, b, a, c) }
    }

    /// One cuBLAS product `c = α·op(a)·op(b) + β·c` (column-major) in the
    /// configured arithmetic: `cublasSgemm` for f32 and TF32 (the handle's
    /// math mode), `cublasGemmEx` with bf16 compute for bf16.
    ///
    /// # Safety
    /// The buffers must hold every element `cfg` reaches.
    unsafe fn sgemm(
        &self,
        cfg: GemmConfig<f32>,
        a: &Buf,
        b: &Buf,
        c: &mut Buf,
    ) -> Result<(), CudaError> {
        if self.precision != GemmPrecision::Bf16 {
            // SAFETY: forwarded from the caller.
            return unsafe { self.blas.gemm(cfg, a, b, c) }.map_err(|e| err("cublasSgemm", e));
        }
        use blas_sys::cudaDataType::CUDA_R_32F as F32;
        let (pa, _ra) = a.device_ptr(&self.stream);
        let (pb, _rb) = b.device_ptr(&self.stream);
        let (pc, _rc) = c.device_ptr_mut(&self.stream);
        // SAFETY: f32 device buffers the caller vouches for; α and β live
        // on the host for the call (the handle's default pointer mode).
        let status = unsafe {
            blas_sys::cublasGemmEx(
                *self.blas.handle(),
                cfg.transa,
                cfg.transb,
                cfg.m,
                cfg.n,
                cfg.k,
                (&raw const cfg.alpha).cast(),
                pa as *const std::ffi::c_void,
                F32,
                cfg.lda,
                pb as *const std::ffi::c_void,
                F32,
                cfg.ldb,
                (&raw const cfg.beta).cast(),
                pc as *mut std::ffi::c_void,
                F32,
                cfg.ldc,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_16BF,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        };
        if status == blas_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            Ok(())
        } else {
            Err(err("cublasGemmEx", status))
        }
    }

    /// `c = a · b` (`+= ` with `accumulate`) on host memory through cuBLAS:
    /// uploads the operands, multiplies, downloads `c` (waits). Operands
    /// are strided like `nq_host::linalg`'s: element `(i, p)` of `a`
    /// (`m × k`) at `i·a_strides.0 + p·a_strides.1`, of `b` (`k × n`) at
    /// `p·b_strides.0 + j·b_strides.1`; `c` is row-major with row stride
    /// `ldc ≥ n`, and only its `m × n` block is written. Returns `Ok(false)`,
    /// touching nothing, when an operand is neither row- nor column-major
    /// (a unit stride on one side) or too large for cuBLAS's `int`.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_host(
        &self,
        c: &mut [f32],
        ldc: usize,
        a: &[f32],
        a_strides: (usize, usize),
        b: &[f32],
        b_strides: (usize, usize),
        (m, n, k): (usize, usize, usize),
        accumulate: bool,
    ) -> Result<bool, CudaError> {
        use blas_sys::cublasOperation_t::{CUBLAS_OP_N as N, CUBLAS_OP_T as T};
        if m == 0 || n == 0 || k == 0 || ldc < n {
            return Ok(false);
        }
        self.bind()?;
        // cuBLAS computes cᵀ (n × m, column-major, ld = ldc) = bᵀ · aᵀ.
        // bᵀ(j, p) = b(p, j) sits at p·rs + j·cs: column-major n × k with
        // ld = rs when cs = 1 (op N), or column-major k × n with ld = cs
        // read transposed when rs = 1 (op T). Likewise aᵀ (k × m).
        let pick = |(rs, cs): (usize, usize), rows: usize, cols: usize| {
            if cs == 1 && rs >= rows.max(1) {
                Some((N, rs))
            } else if rs == 1 && cs >= cols.max(1) {
                Some((T, cs))
            } else {
                None
            }
        };
        let (Some((op_b, ld_b)), Some((op_a, ld_a))) =
            (pick(b_strides, n, k), pick(a_strides, k, m))
        else {
            return Ok(false);
        };
        let reach = |(rs, cs): (usize, usize), rows: usize, cols: usize| {
            (rows - 1) * rs + (cols - 1) * cs + 1
        };
        let (len_a, len_b, len_c) = (
            reach(a_strides, m, k),
            reach(b_strides, k, n),
            (m - 1) * ldc + n,
        );
        if a.len() < len_a || b.len() < len_b || c.len() < len_c {
            return Err(CudaError::new("gemm_host: operand shorter than its shape"));
        }
        let int = |x: usize| i32::try_from(x).ok();
        let (Some(mi), Some(ni), Some(ki), Some(lda), Some(ldb), Some(ldci)) =
            (int(m), int(n), int(k), int(ld_a), int(ld_b), int(ldc))
        else {
            return Ok(false);
        };
        if [len_a, len_b, len_c].iter().any(|&l| int(l).is_none()) {
            return Ok(false);
        }
        let da = self.upload(&a[..len_a])?;
        let db = self.upload(&b[..len_b])?;
        // Without accumulation the gaps of a strided c must survive the
        // round trip, so c goes up whenever it has gaps.
        let mut dc = if accumulate || ldc != n {
            self.upload(&c[..len_c])?
        } else {
            self.zeros(len_c)?
        };
        let cfg = GemmConfig {
            transa: op_b,
            transb: op_a,
            m: ni,
            n: mi,
            k: ki,
            alpha: 1.0f32,
            lda: ldb,
            ldb: lda,
            beta: if accumulate { 1.0 } else { 0.0 },
            ldc: ldci,
        };
        // SAFETY: `pick` and the reach lengths above guarantee every element
        // cuBLAS reads (bᵀ, aᵀ with these ops and leading dimensions) and
        // writes (n × m with ld = ldc) lies inside the uploaded buffers.
        unsafe { self.sgemm(cfg, &db, &da, &mut dc) }?;
        // Into a temporary first: `c` changes only once everything worked,
        // so a caller that falls back to the CPU after an error never sees
        // (and accumulates onto) a half-written `c`.
        let mut result = vec![0.0f32; len_c];
        self.download(&dc, &mut result)?;
        c[..len_c].copy_from_slice(&result);
        Ok(true)
    }

    /// Makes this device's context current on the calling thread: cuBLAS
    /// and cuSOLVER (runtime-API libraries) use whatever context is current.
    fn bind(&self) -> Result<(), CudaError> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| err("bind context", e))
    }

    fn function(&self, name: &'static str) -> Result<&CudaFunction, CudaError> {
        self.functions
            .get(name)
            .ok_or_else(|| CudaError::new(format!("kernel {name} not loaded")))
    }

    fn alloc_f64(&self, len: usize) -> Result<CudaSlice<f64>, CudaError> {
        self.stream
            .alloc_zeros::<f64>(len.max(1))
            .map_err(|e| err("alloc", e))
    }

    /// Each row of `x` (`rows × cols`) scaled to unit norm.
    pub fn normalize_rows(&self, x: &mut Buf, rows: usize, cols: usize) -> Result<(), CudaError> {
        let (r, c) = shape(x.len(), rows, cols)?;
        if rows > 0 {
            launch!(self, "nq_normalize_rows", per_row(rows), x, &r, &c);
        }
        Ok(())
    }

    /// `dst = src / ‖column‖` for each column of `src` (`rows × cols`).
    pub fn divide_by_column_norms(
        &self,
        dst: &mut Buf,
        src: &Buf,
        rows: usize,
        cols: usize,
    ) -> Result<(), CudaError> {
        let (r, c) = shape(src.len(), rows, cols)?;
        shape(dst.len(), rows, cols)?;
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        let mut sums = self.alloc_f64(cols)?;
        launch!(
            self,
            "nq_column_sumsq",
            per_elem(cols),
            src,
            &r,
            &c,
            &mut sums
        );
        launch!(
            self,
            "nq_divide_columns",
            grid_stride(rows * cols),
            dst,
            src,
            &sums,
            &r,
            &c
        );
        Ok(())
    }

    /// SVID (DESIGN.md §3): `out = sign(x) ⊙ u vᵀ` with `u vᵀ` the rank-1
    /// alternating-least-squares fit of `|x|` from `v = 1`, `iters ≥ 1`.
    pub fn svid(
        &self,
        x: &Buf,
        rows: usize,
        cols: usize,
        iters: usize,
        out: &mut Buf,
    ) -> Result<(), CudaError> {
        let (r, c) = shape(x.len(), rows, cols)?;
        shape(out.len(), rows, cols)?;
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        let mut u = self.alloc_f64(rows)?;
        let mut v = self.alloc_f64(cols)?;
        let mut vv = self.alloc_f64(1)?;
        let mut uu = self.alloc_f64(1)?;
        let one = 1.0f64;
        launch!(self, "nq_fill_f64", per_elem(cols), &mut v, &c, &one);
        for _ in 0..iters.max(1) {
            launch!(self, "nq_sumsq_f64", single_block(), &v, &c, &mut vv);
            launch!(self, "nq_svid_u", per_row(rows), x, &v, &vv, &mut u, &r, &c);
            launch!(self, "nq_sumsq_f64", single_block(), &u, &r, &mut uu);
            launch!(
                self,
                "nq_svid_v",
                per_elem(cols),
                x,
                &u,
                &uu,
                &mut v,
                &r,
                &c
            );
        }
        launch!(
            self,
            "nq_svid_out",
            grid_stride(rows * cols),
            x,
            &u,
            &v,
            out,
            &r,
            &c
        );
        Ok(())
    }

    /// Checks three equally long buffers and returns their length as `int`.
    fn same_len(out: &Buf, a: &Buf, b: &Buf) -> Result<i32, CudaError> {
        if a.len() != out.len() || b.len() != out.len() {
            return Err(CudaError::new("element-wise operands differ in length"));
        }
        i32::try_from(out.len()).map_err(|_| CudaError::new("buffer over 2^31 values"))
    }

    /// `out = a + b`.
    pub fn add(&self, out: &mut Buf, a: &Buf, b: &Buf) -> Result<(), CudaError> {
        let n = Self::same_len(out, a, b)?;
        launch!(self, "nq_add", grid_stride(out.len()), out, a, b, &n);
        Ok(())
    }

    /// `out = a − b`.
    pub fn sub(&self, out: &mut Buf, a: &Buf, b: &Buf) -> Result<(), CudaError> {
        let n = Self::same_len(out, a, b)?;
        launch!(self, "nq_sub", grid_stride(out.len()), out, a, b, &n);
        Ok(())
    }

    /// `rhs += ρ (z − u)`.
    pub fn add_penalty(&self, rhs: &mut Buf, rho: f32, z: &Buf, u: &Buf) -> Result<(), CudaError> {
        let n = Self::same_len(rhs, z, u)?;
        if rho != 0.0 {
            launch!(
                self,
                "nq_add_penalty",
                grid_stride(rhs.len()),
                rhs,
                &rho,
                z,
                u,
                &n
            );
        }
        Ok(())
    }

    /// `u += x − z`.
    pub fn dual_update(&self, u: &mut Buf, x: &Buf, z: &Buf) -> Result<(), CudaError> {
        let n = Self::same_len(u, x, z)?;
        launch!(self, "nq_dual_update", grid_stride(u.len()), u, x, z, &n);
        Ok(())
    }

    /// `inverse = (gram + shift·I)⁻¹` for a symmetric `r × r` `gram`, by an
    /// f64 Cholesky factorization and inversion (cuSOLVER potrf + potri).
    /// A system that is not positive definite, or an inverse that does not
    /// fit f32, is an error.
    pub fn invert_shifted(
        &self,
        gram: &Buf,
        shift: f32,
        r: usize,
        inverse: &mut Buf,
    ) -> Result<(), CudaError> {
        if gram.len() != r * r || inverse.len() != r * r {
            return Err(CudaError::new("invert_shifted: sizes do not match r × r"));
        }
        if r == 0 {
            return Ok(());
        }
        let ri = i32::try_from(r).map_err(|_| CudaError::new("rank over 2^31"))?;
        shape(r * r, r, r)?;
        self.bind()?;
        let solver = self
            .solver
            .lock()
            .map_err(|_| CudaError::new("cuSOLVER handle poisoned by an earlier failure"))?;
        let handle = solver.0;
        let mut sys = self.alloc_f64(r * r)?;
        launch!(
            self,
            "nq_shifted_system",
            grid_stride(r * r),
            gram,
            &mut sys,
            &ri,
            &shift
        );

        use solver_sys::cublasFillMode_t::CUBLAS_FILL_MODE_LOWER as LOWER;
        let (mut lwork, mut lwork_inv) = (0i32, 0i32);
        {
            let (p, _sync) = sys.device_ptr_mut(&self.stream);
            // SAFETY: `p` is an r × r f64 device matrix (lda = r); the
            // size queries only read the shape.
            unsafe {
                check_solver(
                    solver_sys::cusolverDnDpotrf_bufferSize(
                        handle,
                        LOWER,
                        ri,
                        p as *mut f64,
                        ri,
                        &mut lwork,
                    ),
                    "potrf_bufferSize",
                )?;
                check_solver(
                    solver_sys::cusolverDnDpotri_bufferSize(
                        handle,
                        LOWER,
                        ri,
                        p as *mut f64,
                        ri,
                        &mut lwork_inv,
                    ),
                    "potri_bufferSize",
                )?;
            }
        }
        let lwork = lwork.max(lwork_inv).max(1);
        let mut work = self.alloc_f64(lwork as usize)?;
        let mut info = self
            .stream
            .alloc_zeros::<i32>(1)
            .map_err(|e| err("alloc", e))?;
        for step in ["potrf", "potri"] {
            let status = {
                let (p, _s1) = sys.device_ptr_mut(&self.stream);
                let (w, _s2) = work.device_ptr_mut(&self.stream);
                let (i, _s3) = info.device_ptr_mut(&self.stream);
                let (p, w, i) = (p as *mut f64, w as *mut f64, i as *mut i32);
                // SAFETY: sys is r × r (lda r), work holds lwork values and
                // info one i32, all device memory used on this handle's stream.
                unsafe {
                    if step == "potrf" {
                        solver_sys::cusolverDnDpotrf(handle, LOWER, ri, p, ri, w, lwork, i)
                    } else {
                        solver_sys::cusolverDnDpotri(handle, LOWER, ri, p, ri, w, lwork, i)
                    }
                }
            };
            check_solver(status, step)?;
            let mut host = [0i32];
            self.stream
                .memcpy_dtoh(&info, &mut host)
                .map_err(|e| err("download", e))?;
            self.stream
                .synchronize()
                .map_err(|e| err("synchronize", e))?;
            if host[0] != 0 {
                return Err(CudaError::new("normal equations not positive definite"));
            }
        }
        let mut bad = self
            .stream
            .alloc_zeros::<i32>(1)
            .map_err(|e| err("alloc", e))?;
        launch!(
            self,
            "nq_inverse_to_f32",
            grid_stride(r * r),
            &sys,
            inverse,
            &ri,
            &mut bad
        );
        let mut host = [0i32];
        self.stream
            .memcpy_dtoh(&bad, &mut host)
            .map_err(|e| err("download", e))?;
        self.stream
            .synchronize()
            .map_err(|e| err("synchronize", e))?;
        if host[0] != 0 {
            return Err(CudaError::new("non-finite inverse"));
        }
        Ok(())
    }

    /// `out = rmsnorm(x) ⊙ w` row by row (`rows × d`, `w` of `d`); the
    /// mean square is summed in f64.
    pub fn rmsnorm(
        &self,
        x: &Buf,
        w: &Buf,
        out: &mut Buf,
        rows: usize,
        eps: f32,
    ) -> Result<(), CudaError> {
        let d = w.len();
        let (r, di) = shape(x.len(), rows, d)?;
        shape(out.len(), rows, d)?;
        if rows > 0 {
            launch!(self, "nq_rmsnorm", per_row(rows), x, w, out, &r, &di, &eps);
        }
        Ok(())
    }

    /// [`Gpu::rmsnorm`] in place.
    pub fn rmsnorm_in_place(
        &self,
        x: &mut Buf,
        w: &Buf,
        rows: usize,
        eps: f32,
    ) -> Result<(), CudaError> {
        let d = w.len();
        let (r, di) = shape(x.len(), rows, d)?;
        if rows > 0 {
            launch!(
                self,
                "nq_rmsnorm_inplace",
                per_row(rows),
                x,
                w,
                &r,
                &di,
                &eps
            );
        }
        Ok(())
    }

    /// `y[r] += b` for every row of `y` (`rows × b.len()`).
    pub fn add_bias(&self, y: &mut Buf, b: &Buf, rows: usize) -> Result<(), CudaError> {
        let (r, n) = shape(y.len(), rows, b.len())?;
        if y.is_empty() {
            return Ok(());
        }
        let cfg = grid_stride(y.len());
        launch!(self, "nq_add_bias", cfg, y, b, &r, &n);
        Ok(())
    }

    /// RoPE ("rotate halves") on every head of `x` (`t × heads·2·half`,
    /// row `p` at position `p`) with angle tables `cos`, `sin` (`t × half`
    /// each).
    pub fn rope(
        &self,
        x: &mut Buf,
        cos: &Buf,
        sin: &Buf,
        t: usize,
        heads: usize,
    ) -> Result<(), CudaError> {
        self.rotate("nq_rope", x, cos, sin, t, heads)
    }

    /// Launches `nq_rope` or `nq_rope_backward` after checking the shapes.
    fn rotate(
        &self,
        kernel: &'static str,
        x: &mut Buf,
        cos: &Buf,
        sin: &Buf,
        t: usize,
        heads: usize,
    ) -> Result<(), CudaError> {
        let width = x.len().checked_div(t).unwrap_or(0);
        if t == 0
            || heads == 0
            || width == 0
            || x.len() != t * width
            || !width.is_multiple_of(2 * heads)
        {
            return Err(CudaError::new("rope: shape does not match the buffer"));
        }
        let half = width / heads / 2;
        if cos.len() != t * half || sin.len() != t * half {
            return Err(CudaError::new(
                "rope: angle tables are not t × half for this head width",
            ));
        }
        let (ti, hi) = shape(t * heads, t, heads)?;
        let half_i = i32::try_from(half).map_err(|_| CudaError::new("head too wide"))?;
        launch!(
            self,
            kernel,
            grid_stride(t * heads * half),
            x,
            cos,
            sin,
            &ti,
            &hi,
            &half_i
        );
        Ok(())
    }

    /// Causal grouped-query attention: `out` (`t × heads·d`) from `q`
    /// (`t × heads·d`), `k`, `v` (`t × kv_heads·d`), scores scaled by
    /// `1/√d`, softmax sums in f64.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        q: &Buf,
        k: &Buf,
        v: &Buf,
        out: &mut Buf,
        t: usize,
        (heads, kv_heads, d): (usize, usize, usize),
    ) -> Result<(), CudaError> {
        let (ti, hi, kvi, di) =
            train::attention_shape(t, (heads, kv_heads, d), &[q, out], &[k, v])?;
        if t == 0 {
            return Ok(());
        }
        let scale = 1.0 / (d as f32).sqrt();
        let cfg = geometry::attention(t, heads, 1);
        launch!(
            self,
            "nq_attention",
            cfg,
            q,
            k,
            v,
            out,
            &ti,
            &hi,
            &kvi,
            &di,
            &scale
        );
        Ok(())
    }

    /// `out = silu(g) ⊙ u`.
    pub fn silu_mul(&self, out: &mut Buf, g: &Buf, u: &Buf) -> Result<(), CudaError> {
        let n = Self::same_len(out, g, u)?;
        launch!(self, "nq_silu_mul", grid_stride(out.len()), out, g, u, &n);
        Ok(())
    }

    /// `x += y`.
    pub fn add_assign(&self, x: &mut Buf, y: &Buf) -> Result<(), CudaError> {
        if x.len() != y.len() {
            return Err(CudaError::new("add_assign: length mismatch"));
        }
        let n = i32::try_from(x.len()).map_err(|_| CudaError::new("buffer over 2^31 values"))?;
        launch!(self, "nq_add_assign", grid_stride(x.len()), x, y, &n);
        Ok(())
    }

    /// Copies bytes (packed signs) to the device.
    pub fn upload_bytes(&self, data: &[u8]) -> Result<CudaSlice<u8>, CudaError> {
        self.stream.memcpy_stod(data).map_err(|e| err("upload", e))
    }

    /// `out[tok] = S · x[tok]` for `t` tokens, `S` a `rows × cols` sign
    /// matrix packed in the blob's tile layout (`col_bytes` bytes per row,
    /// FORMAT.md §6.1) on the device; `x` is `t × cols`, `out` `t × rows`.
    #[allow(clippy::too_many_arguments)]
    pub fn sign_matmul(
        &self,
        signs: &CudaSlice<u8>,
        (rows, cols, col_bytes): (usize, usize, usize),
        x: &Buf,
        t: usize,
        out: &mut Buf,
    ) -> Result<(), CudaError> {
        let tiles = rows.div_ceil(16);
        if col_bytes * 8 < cols || signs.len() < tiles * 16 * col_bytes {
            return Err(CudaError::new(
                "sign_matmul: packed signs smaller than the shape",
            ));
        }
        let (ti, ci) = shape(x.len(), t, cols)?;
        let (_, ri) = shape(out.len(), t, rows)?;
        let cb = i32::try_from(col_bytes).map_err(|_| CudaError::new("row too wide"))?;
        if t == 0 || rows == 0 {
            return Ok(());
        }
        if t > 65_535 {
            return Err(CudaError::new(
                "sign_matmul: more than 65535 tokens at once",
            ));
        }
        let cfg = geometry::sign_matmul(rows, t);
        launch!(
            self,
            "nq_sign_matmul",
            cfg,
            signs,
            &ri,
            &ci,
            &cb,
            x,
            &ti,
            out
        );
        Ok(())
    }

    /// `y[r][j] *= s[j]` for every row of `y` (`rows × s.len()`).
    pub fn scale_columns(&self, y: &mut Buf, s: &Buf, rows: usize) -> Result<(), CudaError> {
        let (r, n) = shape(y.len(), rows, s.len())?;
        if y.is_empty() {
            return Ok(());
        }
        let cfg = grid_stride(y.len());
        launch!(self, "nq_scale_columns", cfg, y, s, &r, &n);
        Ok(())
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.ctx.synchronize().map_err(|e| err("synchronize", e))
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        // cuSOLVER is a runtime-API library: it uses the calling thread's
        // current context, which must be ours.
        let _ = self.ctx.bind_to_thread();
        if let Ok(mut s) = self.solver.lock() {
            if !s.0.is_null() {
                // SAFETY: the handle was created in `open` and is destroyed
                // once (then nulled).
                unsafe { solver_sys::cusolverDnDestroy(s.0) };
                s.0 = std::ptr::null_mut();
            }
        }
    }
}

fn check_solver(s: solver_sys::cusolverStatus_t, what: &str) -> Result<(), CudaError> {
    if s == solver_sys::cusolverStatus_t::CUSOLVER_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(err(what, s))
    }
}

/// Checks `len == rows · cols` and that both fit the kernels' `int`.
fn shape(len: usize, rows: usize, cols: usize) -> Result<(i32, i32), CudaError> {
    if rows.checked_mul(cols) != Some(len) {
        return Err(CudaError::new(format!(
            "buffer of {len} values is not {rows} × {cols}"
        )));
    }
    let r = i32::try_from(rows).map_err(|_| CudaError::new("rows over 2^31"))?;
    let c = i32::try_from(cols).map_err(|_| CudaError::new("cols over 2^31"))?;
    i32::try_from(len).map_err(|_| CudaError::new("matrix over 2^31 values"))?;
    Ok((r, c))
}

#[cfg(test)]
mod tests {
    use crate::geometry::BLOCK;
    use crate::kernels;

    #[test]
    fn launch_block_size_matches_the_kernels_reduction_arrays() {
        assert!(BLOCK.is_power_of_two());
        assert!(kernels::COMMON.contains(&format!("#define NQ_BLOCK {BLOCK}\n")));
        assert!(kernels::ALL
            .iter()
            .all(|k| k.source.starts_with(kernels::COMMON)));
    }
}
