//! The instruction sets this crate's kernels may use: the widest this CPU has, or fewer where
//! the environment variable [`VARIABLE`] caps them (as `ONEDNN_MAX_CPU_ISA` caps oneDNN).
//!
//! The cap makes every kernel path reachable on one machine: an AVX-512 CPU runs the AVX2
//! builds (and the scalar ones) of the products, the fused row-wise steps, the losses and
//! AdamW, so the tests check each path wherever they run. It also pins the bf16 products'
//! kernel: unset, a process times `vdpbf16ps` against the widened f32 kernel and keeps the
//! faster, so two runs may sum in different orders; `avx512bf16` takes `vdpbf16ps` without
//! timing and `avx512` the widened kernel.
//!
//! Only this crate's kernels follow it: Burn's f32 matmul (the gemm crate) and burn-flex's
//! element-wise kernels pick their instructions themselves.

use std::fmt;
use std::sync::OnceLock;

/// The environment variable that caps the kernels' instruction set.
pub const VARIABLE: &str = "DISTILL_CPU_ISA";

/// Instruction sets, narrowest first (so a cap is an upper bound in `Ord`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Plain loops (baseline x86-64 or another architecture).
    Portable,
    /// AVX2 with FMA.
    Avx2,
    /// AVX-512 F/DQ/VL/BW.
    Avx512,
    /// AVX-512 with the bf16 dot product `vdpbf16ps`.
    Avx512Bf16,
}

/// A value of [`VARIABLE`] that names no instruction set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownIsa(pub String);

impl fmt::Display for UnknownIsa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{VARIABLE}={:?} names no instruction set: use one of {}, or unset it to let each \
             kernel take the widest this CPU has",
            self.0,
            Isa::ALL.map(Isa::name).join(", ")
        )
    }
}

impl std::error::Error for UnknownIsa {}

impl Isa {
    const ALL: [Isa; 4] = [Isa::Avx512Bf16, Isa::Avx512, Isa::Avx2, Isa::Portable];

    /// The name [`VARIABLE`] takes.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512Bf16 => "avx512bf16",
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }

    pub fn parse(value: &str) -> Result<Self, UnknownIsa> {
        let wanted = value.trim().to_ascii_lowercase().replace(['-', '_'], "");
        Isa::ALL
            .into_iter()
            .find(|isa| isa.name() == wanted)
            .ok_or_else(|| UnknownIsa(value.to_string()))
    }

    /// The cap [`VARIABLE`] sets, if any. Binaries call this first, to stop on a bad value
    /// with its message before any kernel runs.
    pub fn from_env() -> Result<Option<Self>, UnknownIsa> {
        match std::env::var(VARIABLE) {
            Ok(value) if !value.trim().is_empty() => Isa::parse(&value).map(Some),
            _ => Ok(None),
        }
    }

    /// The cap in force for this process (read once).
    ///
    /// # Panics
    /// When [`VARIABLE`] holds an unknown name (binaries check [`Isa::from_env`] first).
    pub fn cap() -> Option<Self> {
        static CAP: OnceLock<Option<Isa>> = OnceLock::new();
        *CAP.get_or_init(|| Isa::from_env().unwrap_or_else(|error| panic!("{error}")))
    }

    /// Whether this CPU has the instruction set.
    pub fn on_cpu(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx512 =
                has!("avx512f") && has!("avx512dq") && has!("avx512vl") && has!("avx512bw");
            match self {
                Isa::Avx512Bf16 => avx512 && has!("avx512bf16"),
                Isa::Avx512 => avx512,
                Isa::Avx2 => has!("avx2") && has!("fma"),
                Isa::Portable => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Isa::Portable
        }
    }

    /// Whether kernels may use the instruction set: this CPU has it and the cap allows it.
    /// (Each set includes the narrower ones on every CPU that has it.)
    pub fn usable(self) -> bool {
        self <= Isa::widest_usable()
    }

    /// The widest usable instruction set: what the kernels run (found once per process).
    pub fn widest_usable() -> Self {
        static WIDEST: OnceLock<Isa> = OnceLock::new();
        *WIDEST.get_or_init(|| {
            Isa::ALL
                .into_iter()
                .find(|isa| isa.on_cpu() && Isa::cap().is_none_or(|cap| *isa <= cap))
                .unwrap_or(Isa::Portable)
        })
    }

    /// What a report says ran: `avx512`, or `avx2 (capped by DISTILL_CPU_ISA=avx2)`.
    pub fn describe() -> String {
        let widest = Isa::widest_usable();
        match Isa::cap() {
            Some(cap) => format!("{} (capped by {VARIABLE}={})", widest.name(), cap.name()),
            None => widest.name().to_string(),
        }
    }
}
