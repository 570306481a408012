//! Choosing the compute backend at run time: flex or ndarray (CPU, always built) or CUDA (built
//! with the `cuda` feature). Model code is generic over Burn's `Backend`; a command hands its work
//! to `with_backend` as a `BackendTask`, whose generic `run` is instantiated per backend.

use std::any::TypeId;
use std::fmt;
use std::str::FromStr;

use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::ops::{Backward, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData, TensorPrimitive};

use crate::error::{ModelError, Result};

/// burn-ndarray: the `ndarray` crate with matrixmultiply's packed matmul.
pub type NdArrayCpu = burn::backend::NdArray<f32>;
/// burn-flex: the `gemm` crate's matmul (with an unpacked matrix-vector path for batch-1
/// decoding), zero-copy views and SIMD element-wise kernels. About twice ndarray's speed on a
/// training step here (docs/performance.md), with the same parity to transformers.
pub type FlexCpu = burn::backend::Flex;
/// burn-flex recording a graph (training): the backend the fused kernels' backward steps
/// serve. Burn adds an operation with its own backward step only to a concrete `Autodiff<_>`.
pub type FlexAutodiff = burn::backend::Autodiff<FlexCpu>;
/// The primitive of a float tensor of [`FlexAutodiff`]: burn-flex's tensor and its graph node.
pub type RecordedTensor =
    <FlexAutodiff as burn::tensor::backend::BackendTypes>::FloatTensorPrimitive;

/// `output`, computed by the caller from `parents` on burn-flex, entered in the graph as the
/// result of an operation whose backward pass is `step` (given `state` when any parent is
/// tracked): how the fused kernels join a training graph.
pub fn record<S: Backward<FlexCpu, N>, const N: usize>(
    step: S,
    parents: [&RecordedTensor; N],
    state: S::State,
    output: FlexTensor,
) -> RecordedTensor {
    match step
        .prepare::<NoCheckpointing>(parents.map(|parent| parent.node.clone()))
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state, output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    }
}

/// The default CPU backend.
pub type Cpu = FlexCpu;
/// The CUDA backend.
#[cfg(feature = "cuda")]
pub type Gpu = burn::backend::Cuda<f32, i32>;

/// Moves a value between two names of one type, checked by `TypeId` before the call: how code
/// generic over `Backend` reaches a concrete backend's tensors (the fused CPU kernels).
///
/// # Panics
/// When the two types differ.
pub fn same_type<From: 'static, To: 'static>(value: From) -> To {
    *(Box::new(value) as Box<dyn std::any::Any>)
        .downcast::<To>()
        .expect("types checked equal")
}

/// The burn-flex tensor behind `t`, as one contiguous f32 run from offset 0 (copied when `t`
/// is a strided view): how the fused CPU kernels read a tensor. `None` when `B` is not
/// burn-flex (autodiff included) or `t` is not f32.
pub fn flex_f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Option<FlexTensor> {
    flex_f32_with(t, true)
}

/// [`flex_f32`] without the copy: `None` for a strided view as well (a weight matrix, which a
/// product should read where it lies).
pub fn flex_f32_whole<B: Backend, const D: usize>(t: Tensor<B, D>) -> Option<FlexTensor> {
    flex_f32_with(t, false)
}

fn flex_f32_with<B: Backend, const D: usize>(
    t: Tensor<B, D>,
    copy_views: bool,
) -> Option<FlexTensor> {
    if TypeId::of::<B>() != TypeId::of::<FlexCpu>() {
        return None;
    }
    let t: Tensor<FlexCpu, D> = same_type(t);
    let t = t.into_primitive().tensor();
    match t.is_contiguous() && t.layout().start_offset() == 0 {
        true => contiguous_f32(t),
        false if copy_views => contiguous_f32(t),
        false => None,
    }
}

/// `t` as one contiguous f32 run from offset 0, copied when it is a strided view: what the
/// fused kernels read. A view whose last axis is contiguous (permuted attention heads) is
/// copied run by run on every thread (`matmul::strided`); others by burn-flex. `None` for
/// another element type.
pub fn contiguous_f32(t: FlexTensor) -> Option<FlexTensor> {
    if t.dtype() != DType::F32 {
        return None;
    }
    if t.is_contiguous() && t.layout().start_offset() == 0 {
        return Some(t);
    }
    let layout = t.layout();
    let dims: Vec<usize> = layout.shape().iter().copied().collect();
    let copied = matmul::strided::contiguous_copy(
        t.storage::<f32>(),
        layout.start_offset(),
        &dims,
        layout.strides(),
    );
    let t = match copied {
        Some(values) => FlexTensor::from_data(TensorData::new(values, dims)),
        None => t.to_contiguous(),
    };
    (t.layout().start_offset() == 0).then_some(t)
}

/// The values of an integer tensor of token ids (or positions), read to the host as indices.
pub fn usize_values<B: Backend, const D: usize>(ids: &Tensor<B, D, Int>) -> Vec<usize> {
    ids.clone()
        .into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .expect("integer ids")
        .into_iter()
        .map(|id| id as usize)
        .collect()
}

/// A 2-D f32 burn-flex tensor as a product operand, read where it lies (a transposed or
/// sliced view included, as burn-flex's matmul reads it). `None` for another element type or
/// rank, or a negative stride.
pub fn f32_operand(t: &FlexTensor) -> Option<matmul::F32Operand<'_>> {
    let layout = t.layout();
    let (dims, strides) = (layout.shape(), layout.strides());
    if t.dtype() != DType::F32 || dims.num_dims() != 2 || strides.iter().any(|&s| s < 0) {
        return None;
    }
    Some(matmul::F32Operand {
        values: t.storage::<f32>(),
        offset: layout.start_offset(),
        rows: dims[0],
        cols: dims[1],
        row_stride: strides[0] as usize,
        col_stride: strides[1] as usize,
    })
}

/// The tensor of `values` for a `B` that is burn-flex (checked by the caller, as
/// [`flex_f32`]'s `Some` shows).
pub fn from_flex<B: Backend, const D: usize>(values: FlexTensor) -> Tensor<B, D> {
    same_type(Tensor::<FlexCpu, D>::from_primitive(
        TensorPrimitive::Float(values),
    ))
}

/// [`from_flex`] of a new f32 tensor.
pub fn from_flex_values<B: Backend, const D: usize>(
    values: Vec<f32>,
    dims: [usize; D],
) -> Tensor<B, D> {
    from_flex(FlexTensor::from_data(TensorData::new(values, dims)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendKind {
    #[default]
    Flex,
    Ndarray,
    Cuda,
}

impl BackendKind {
    /// Every backend name a command accepts, for help and error texts.
    pub const NAMES: &'static str = "flex (default CPU), ndarray (CPU) or cuda";
}

impl FromStr for BackendKind {
    type Err = String;
    fn from_str(value: &str) -> std::result::Result<Self, String> {
        match value {
            "flex" | "cpu" => Ok(Self::Flex),
            "ndarray" => Ok(Self::Ndarray),
            "cuda" | "gpu" => Ok(Self::Cuda),
            other => Err(format!("unknown backend `{other}`: use {}", Self::NAMES)),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Flex => "flex",
            Self::Ndarray => "ndarray",
            Self::Cuda => "cuda",
        })
    }
}

/// Runs each generic test `fn name<B: Backend>()` on every CPU backend, as `flex::name` and
/// `ndarray::name`: parity, fixture and determinism tests must hold on each backend shipped.
#[macro_export]
macro_rules! on_every_cpu_backend {
    ($($test:ident),* $(,)?) => {
        mod flex {
            $( #[test] fn $test() { super::$test::<$crate::backend::FlexCpu>() } )*
        }
        mod ndarray {
            $( #[test] fn $test() { super::$test::<$crate::backend::NdArrayCpu>() } )*
        }
    };
}

/// Work that runs on whichever backend is chosen.
pub trait BackendTask {
    type Output;
    fn run<B: Backend>(self, device: B::Device) -> Self::Output;
}

/// Runs `task` on the backend `kind`, or explains in one line why that backend is unavailable.
pub fn with_backend<T: BackendTask>(kind: BackendKind, task: T) -> Result<T::Output> {
    match kind {
        BackendKind::Flex => Ok(task.run::<FlexCpu>(Default::default())),
        BackendKind::Ndarray => Ok(task.run::<NdArrayCpu>(Default::default())),
        BackendKind::Cuda => run_cuda(task),
    }
}

#[cfg(not(feature = "cuda"))]
fn run_cuda<T: BackendTask>(_task: T) -> Result<T::Output> {
    Err(ModelError::Invalid(
        "this build has no CUDA backend: run `cargo xtask-cuda ...` (the xtask built with `--features cuda`), \
         or use `--backend flex`"
            .into(),
    ))
}

#[cfg(feature = "cuda")]
fn run_cuda<T: BackendTask>(task: T) -> Result<T::Output> {
    let device = probe_cuda()?;
    Ok(task.run::<Gpu>(device))
}

/// Checks that a CUDA driver and device answer before any model work starts. Burn's CUDA
/// runtime panics (on a device thread) when libcuda is missing; the user should get a sentence
/// instead, so the first touch happens here under `catch_unwind` with the panic message muted.
#[cfg(feature = "cuda")]
fn probe_cuda() -> Result<<Gpu as burn::tensor::backend::BackendTypes>::Device> {
    use burn::tensor::Tensor;
    let no_gpu = |why: &str| {
        ModelError::Invalid(format!(
            "the CUDA backend is unavailable: {why}; install the NVIDIA driver or use `--backend flex`"
        ))
    };
    // SAFETY: loading the driver library runs its initialisers, as CUDA itself would.
    if unsafe { libloading::Library::new("libcuda.so.1") }.is_err() {
        return Err(no_gpu("no CUDA driver (libcuda.so.1) on this machine"));
    }
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let probe = std::panic::catch_unwind(|| {
        let device = <Gpu as burn::tensor::backend::BackendTypes>::Device::default();
        let sum = Tensor::<Gpu, 1>::ones([4], &device).sum().into_scalar();
        (device, sum)
    });
    std::panic::set_hook(previous_hook);
    match probe {
        Ok((device, sum)) if (sum - 4.0).abs() < 1e-6 => Ok(device),
        Ok(_) => Err(no_gpu("a test computation on the GPU gave a wrong result")),
        Err(_) => Err(no_gpu("no usable GPU was found")),
    }
}
