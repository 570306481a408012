//! The instruction-set cap (`DISTILL_CPU_ISA`): its names, its error, and that the kernels of
//! this process stay under the cap it was started with (CI runs the kernel tests again under
//! `avx2` and `portable`, so every path is checked on every machine).

use matmul::{Isa, Kernel, ISA_VARIABLE};

#[test]
fn names_parse_and_an_unknown_one_says_what_to_write() {
    for (name, isa) in [
        ("avx512bf16", Isa::Avx512Bf16),
        ("AVX512-BF16", Isa::Avx512Bf16),
        ("avx512", Isa::Avx512),
        ("avx2", Isa::Avx2),
        (" portable ", Isa::Portable),
    ] {
        assert_eq!(Isa::parse(name), Ok(isa), "{name}");
        assert_eq!(Isa::parse(isa.name()), Ok(isa));
    }
    let error = Isa::parse("sse4").unwrap_err().to_string();
    assert!(error.contains(ISA_VARIABLE), "{error}");
    assert!(error.contains("\"sse4\""), "{error}");
    assert!(
        error.contains("avx512bf16, avx512, avx2, portable"),
        "{error}"
    );
}

#[test]
fn the_kernels_stay_under_the_cap_this_process_started_with() {
    let widest = Isa::widest_usable();
    assert!(widest.on_cpu(), "{widest:?} is not on this CPU");
    if let Some(cap) = Isa::from_env().expect("CI sets only known names") {
        assert_eq!(Isa::cap(), Some(cap));
        assert!(widest <= cap, "{widest:?} runs above the cap {cap:?}");
        println!("capped at {}: kernels run {}", cap.name(), Isa::describe());
    }
    let isa_of = |kernel: Kernel| match kernel {
        Kernel::Avx512Bf16 => Isa::Avx512Bf16,
        Kernel::Avx512Widened => Isa::Avx512,
        Kernel::Avx2 => Isa::Avx2,
        Kernel::Portable => Isa::Portable,
    };
    let kernels = Kernel::all_available();
    assert!(kernels.contains(&Kernel::Portable));
    for kernel in &kernels {
        assert!(
            isa_of(*kernel) <= widest,
            "{} above {widest:?}",
            kernel.name()
        );
    }
    assert!(isa_of(Kernel::detect()) <= widest);
    // Every narrower instruction set the CPU has stays usable under the cap.
    for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16] {
        assert_eq!(isa.usable(), isa <= widest, "{isa:?}");
    }
}
