//! Bare-metal check and timing of nanoquant's portable kernel on Cortex-M.
//!
//! For a few layer shapes small enough for a microcontroller's RAM, the
//! firmware builds a random layer, runs `forward` (batch 1: what decoding
//! does), checks it against the scalar oracle `forward_ref` within the
//! kernels' documented int8 error budget, and reports cycles per sign
//! weight. Output goes through semihosting; the last line is `bgemm: PASS`
//! or `bgemm: FAIL`, and the exit status says the same.
//!
//! Cycles come from the DWT cycle counter. QEMU does not model it, so when
//! the counter does not advance the firmware counts SysTick ticks instead
//! and labels them `emulated`: such numbers measure the emulator, not a
//! chip.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::DWT;
use cortex_m_rt::{entry, exception};
use cortex_m_semihosting::{debug, hprintln};
use nq_core::kernels::{self, error_bound_binary, error_bound_factorized};
use nq_core::sign::packed_len;
use nq_core::{BinaryLinear, F16Vector, FactorizedLinear, SignMatrix};

/// Largest dimension of any case.
const MAX_DIM: usize = 576;
/// Largest packed sign matrix of any case (576 × 256 either way round).
const MAX_SIGNS: usize = 576 * 32;
/// Scratch floats: enough for every case at batch 1 (checked at run time).
const SCRATCH: usize = 8 * 1024;

/// `(m, n, r)`; `r = 0` means a full-rank `BinaryLinear`.
const CASES: [(usize, usize, usize); 5] = [
    (64, 64, 32),
    (192, 576, 96),  // SmolLM2-135M k/v projection, 0.55 bpw
    (576, 576, 128), // SmolLM2-135M q/o projection, 0.55 bpw
    (576, 576, 256), // ... at 1.0 bpw
    (128, 256, 0),   // full-rank binary
];

/// SysTick wraps (24-bit counter) for the fallback clock.
static WRAPS: AtomicU32 = AtomicU32::new(0);

#[exception]
fn SysTick() {
    WRAPS.fetch_add(1, Ordering::Relaxed);
}

/// The cycle source the firmware found.
#[derive(Clone, Copy, PartialEq)]
enum Clock {
    Dwt,
    SysTick,
}

impl Clock {
    fn now(self) -> u64 {
        match self {
            Clock::Dwt => u64::from(DWT::cycle_count()),
            Clock::SysTick => loop {
                let w = WRAPS.load(Ordering::Relaxed);
                let v = cortex_m::peripheral::SYST::get_current();
                if WRAPS.load(Ordering::Relaxed) == w {
                    return (u64::from(w) << 24) + u64::from(0x00ff_ffff - v);
                }
            },
        }
    }

    /// Cycles between two readings (the DWT counter wraps at 2^32).
    fn since(self, start: u64) -> u64 {
        let now = self.now();
        match self {
            Clock::Dwt => u64::from((now as u32).wrapping_sub(start as u32)),
            Clock::SysTick => now - start,
        }
    }

    /// What one count is, for every output line.
    fn unit(self) -> &'static str {
        match self {
            Clock::Dwt => "cycles",
            Clock::SysTick => "emulated-ticks",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Clock::Dwt => "cycles (DWT)",
            Clock::SysTick => {
                "emulated SysTick ticks (no DWT counter, e.g. QEMU: not a chip's timing)"
            }
        }
    }
}

fn start_clock(cp: &mut cortex_m::Peripherals) -> Clock {
    cp.DCB.enable_trace();
    DWT::unlock();
    cp.DWT.enable_cycle_counter();
    let a = DWT::cycle_count();
    cortex_m::asm::delay(1000);
    if DWT::cycle_count() != a {
        return Clock::Dwt;
    }
    cp.SYST.set_clock_source(SystClkSource::Core);
    cp.SYST.set_reload(0x00ff_ffff);
    cp.SYST.clear_current();
    cp.SYST.enable_interrupt();
    cp.SYST.enable_counter();
    Clock::SysTick
}

/// xorshift32: test data without an allocator or a crate.
struct Rng(u32);

impl Rng {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0
    }
    /// Roughly uniform in [-a, a).
    fn value(&mut self, a: f32) -> f32 {
        ((self.next() >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * a
    }
    fn fill_bytes(&mut self, out: &mut [u8]) {
        for b in out {
            *b = self.next() as u8;
        }
    }
    /// `n` little-endian f16 values in [-a, a).
    fn fill_f16(&mut self, out: &mut [u8], a: f32) {
        for c in out.chunks_exact_mut(2) {
            c.copy_from_slice(&half::f16::from_f32(self.value(a)).to_bits().to_le_bytes());
        }
    }
}

struct Buffers {
    u: [u8; MAX_SIGNS],
    v: [u8; MAX_SIGNS],
    s_in: [u8; 2 * MAX_DIM],
    s_out: [u8; 2 * MAX_DIM],
    x: [f32; MAX_DIM],
    y: [f32; MAX_DIM],
    y_ref: [f32; MAX_DIM],
    t_ref: [f32; MAX_DIM],
    scratch: [f32; SCRATCH],
}

/// Checks `y` against `y_ref` within `scale_i · budget` (+ f32 rounding).
fn within_budget(y: &[f32], y_ref: &[f32], scale: &F16Vector<&[u8]>, budget: f32) -> bool {
    y.iter().zip(y_ref).enumerate().all(|(i, (&a, &b))| {
        let tol = scale.get(i).abs() * budget * 1.0001 + 1e-4 * b.abs() + 1e-5;
        (a - b).abs() <= tol
    })
}

fn run_case(
    b: &mut Buffers,
    rng: &mut Rng,
    clock: Clock,
    (m, n, r): (usize, usize, usize),
) -> bool {
    rng.fill_f16(&mut b.s_in[..2 * n], 1.0);
    rng.fill_f16(&mut b.s_out[..2 * m], 0.5);
    for xi in &mut b.x[..n] {
        *xi = rng.value(2.0);
    }
    let s_in = F16Vector::new(&b.s_in[..2 * n]).unwrap();
    let s_out = F16Vector::new(&b.s_out[..2 * m]).unwrap();
    let max_z = (0..n).fold(0.0f32, |a, j| a.max((s_in.get(j) * b.x[j]).abs()));
    let (x, y, y_ref) = (&b.x[..n], &mut b.y[..m], &mut b.y_ref[..m]);
    let (cycles, weights, ok) = if r > 0 {
        let (lu, lv) = (packed_len(m, r).unwrap(), packed_len(r, n).unwrap());
        rng.fill_bytes(&mut b.u[..lu]);
        rng.fill_bytes(&mut b.v[..lv]);
        let u = SignMatrix::new(m, r, &b.u[..lu]).unwrap();
        let v = SignMatrix::new(r, n, &b.v[..lv]).unwrap();
        let l = FactorizedLinear::new(u, v, s_in, s_out, None).unwrap();
        let need = l.forward_scratch_len(1);
        assert!(need <= SCRATCH, "scratch: need {need}");
        l.forward(x, 1, y, &mut b.scratch[..need]); // warm up
        let t0 = clock.now();
        l.forward(x, 1, y, &mut b.scratch[..need]);
        let cycles = clock.since(t0);
        l.forward_ref(x, y_ref, &mut b.t_ref[..r]);
        let max_t = b.t_ref[..r].iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let budget = error_bound_factorized(n, r, max_z, max_t);
        (cycles, r * (m + n), within_budget(y, y_ref, &s_out, budget))
    } else {
        let len = packed_len(m, n).unwrap();
        rng.fill_bytes(&mut b.u[..len]);
        let s = SignMatrix::new(m, n, &b.u[..len]).unwrap();
        let l = BinaryLinear::new(s, s_in, s_out, None).unwrap();
        let need = l.forward_scratch_len(1);
        assert!(need <= SCRATCH, "scratch: need {need}");
        l.forward(x, 1, y, &mut b.scratch[..need]);
        let t0 = clock.now();
        l.forward(x, 1, y, &mut b.scratch[..need]);
        let cycles = clock.since(t0);
        l.forward_ref(x, y_ref, &mut b.t_ref[..n]);
        let budget = error_bound_binary(n, max_z);
        (cycles, m * n, within_budget(y, y_ref, &s_out, budget))
    };
    let kind = if r > 0 { "factorized" } else { "binary" };
    let unit = clock.unit();
    let per_weight = cycles as f32 / weights as f32;
    hprintln!(
        "{:>10} {:>4}x{:<4} r={:<4} kernel={} weights={:>7} {unit}={:>9} {unit}/weight={:.3} weights/{unit}={:.3} {}",
        kind,
        m,
        n,
        r,
        kernels::selected(),
        weights,
        cycles,
        per_weight,
        1.0 / per_weight,
        if ok { "ok" } else { "MISMATCH" },
        unit = unit,
    );
    ok
}

#[entry]
fn main() -> ! {
    let mut cp = cortex_m::Peripherals::take().unwrap();
    let clock = start_clock(&mut cp);
    hprintln!("bgemm: nanoquant binary-factor kernels on Cortex-M, batch 1");
    hprintln!(
        "bgemm: kernel {}, timing in {}",
        kernels::selected(),
        clock.label()
    );
    let mut b = Buffers {
        u: [0; MAX_SIGNS],
        v: [0; MAX_SIGNS],
        s_in: [0; 2 * MAX_DIM],
        s_out: [0; 2 * MAX_DIM],
        x: [0.0; MAX_DIM],
        y: [0.0; MAX_DIM],
        y_ref: [0.0; MAX_DIM],
        t_ref: [0.0; MAX_DIM],
        scratch: [0.0; SCRATCH],
    };
    let mut rng = Rng(0x1234_5678);
    let mut ok = true;
    for case in CASES {
        ok &= run_case(&mut b, &mut rng, clock, case);
    }
    if ok {
        hprintln!("bgemm: PASS");
        debug::exit(debug::EXIT_SUCCESS);
    } else {
        hprintln!("bgemm: FAIL");
        debug::exit(debug::EXIT_FAILURE);
    }
    loop {
        cortex_m::asm::wfi();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    hprintln!("bgemm: panic: {}", info);
    hprintln!("bgemm: FAIL");
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}
