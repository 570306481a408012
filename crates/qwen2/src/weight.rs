//! A weight matrix of the model, kept either as a trainable f32 parameter or frozen in bf16.
//!
//! Frozen weights (the teacher, the base under a LoRA student) dominate memory: 1.5B
//! parameters are 5.7 GiB in f32 and half of that in bf16, which is also the dtype the Hugging
//! Face checkpoints ship in, so nothing is rounded. A frozen matrix lives on the host as bf16 and
//! is widened to f32 for one product at a time, so every matmul still runs in f32 (the result
//! equals transformers running the bf16 checkpoint in float32). The widening is done here, not
//! by Burn's `cast`, for two reasons that hold on every CPU backend alike:
//! - it works on burn-ndarray, which has no bf16 tensors, and burn-flex's cast goes through an
//!   f64 copy (four times the bf16 bytes) that would be the peak for the 233M-row embeddings;
//! - under autodiff, `x.matmul(w)` keeps `w` until the backward pass: a widened copy per layer
//!   would bring back the whole f32 model. [`frozen_matmul`] instead records a backward step
//!   that widens the bf16 matrix again when the gradient of `x` is needed.

use std::any::TypeId;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{bf16, Tensor, TensorData, TensorPrimitive};
use matmul::{Bf16Matrix, Orientation};
use rayon::prelude::*;

use crate::backend::{flex_f32, flex_f32_whole, from_flex_values, same_type};

/// How a frozen model (teacher, LoRA base) stores its weight matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FrozenDtype {
    /// bf16 when the checkpoint is stored in bf16 (nothing is rounded) or is a quantized GGUF,
    /// f32 otherwise.
    #[default]
    Auto,
    /// bf16 always: an f32 or f16 checkpoint is rounded to bf16 as it loads.
    Bfloat16,
    Float32,
}

impl FrozenDtype {
    /// Whether matrices are stored in bf16, for a checkpoint where `auto` would choose bf16
    /// when `auto_bf16` (see `load::frozen_in_bf16`).
    pub fn stores_bf16(self, auto_bf16: bool) -> bool {
        match self {
            FrozenDtype::Auto => auto_bf16,
            FrozenDtype::Bfloat16 => true,
            FrozenDtype::Float32 => false,
        }
    }
}

/// How products with frozen bf16 matrices are computed. A process-wide setting, as PyTorch's
/// `torch.set_float32_matmul_precision` is: the recipe (`memory.frozen_products`) or a bench flag
/// sets it once, before any product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FrozenProducts {
    /// Widen the bf16 matrix to f32 block by block and multiply in f32: exact, the default.
    #[default]
    Float32,
    /// Round the activations to bf16 and multiply by the bf16 matrix with f32 sums, as
    /// PyTorch's bf16 does (crates/matmul: `vdpbf16ps` on AVX512-BF16, otherwise widened while
    /// packing); no f32 copy of the matrix is made.
    Bfloat16,
}

static FROZEN_PRODUCTS_BF16: AtomicBool = AtomicBool::new(false);

impl FrozenProducts {
    /// Makes every later product with a frozen bf16 matrix, in this process, use `self`.
    pub fn set(self) {
        FROZEN_PRODUCTS_BF16.store(self == FrozenProducts::Bfloat16, Ordering::Relaxed);
    }

    /// The setting now.
    pub fn current() -> Self {
        match FROZEN_PRODUCTS_BF16.load(Ordering::Relaxed) {
            true => FrozenProducts::Bfloat16,
            false => FrozenProducts::Float32,
        }
    }

    /// What a report says ran: "float32", or "bfloat16 (<kernel>, ...)".
    pub fn describe(self) -> String {
        let (many, few) = (matmul::Kernel::detect(), matmul::Kernel::for_rows(1));
        match self {
            FrozenProducts::Float32 => "float32".into(),
            FrozenProducts::Bfloat16 if many == few => format!("bfloat16 ({})", many.name()),
            FrozenProducts::Bfloat16 => {
                format!("bfloat16 ({}; up to 8 rows: {})", many.name(), few.name())
            }
        }
    }
}

/// Widest column block a product widens at once (see [`FrozenMatrix::right_product`]).
pub const BLOCK_COLUMNS: usize = 16384;

/// A frozen matrix in bf16 on the host, in Burn's `[in, out]` layout.
#[derive(Clone)]
pub struct FrozenMatrix {
    values: Arc<Vec<bf16>>,
    dims: [usize; 2],
}

impl std::fmt::Debug for FrozenMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FrozenMatrix(bf16 {:?})", self.dims)
    }
}

impl FrozenMatrix {
    /// Rounds `values` (row-major `dims`) to bf16, as torch's `.to(torch.bfloat16)` does.
    pub fn from_f32(values: &[f32], dims: [usize; 2]) -> Self {
        assert_eq!(values.len(), dims[0] * dims[1], "frozen matrix size");
        let values = values.par_iter().map(|&v| bf16::from_f32(v)).collect();
        Self {
            values: Arc::new(values),
            dims,
        }
    }

    pub fn dims(&self) -> [usize; 2] {
        self.dims
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.values.len() * 2
    }

    /// The f32 tensor of these values on `device`: a fresh copy, alive as long as the caller
    /// keeps it.
    pub fn tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2> {
        self.column_block(0, self.dims[1], device)
    }

    /// Columns `start..end` widened to an f32 `[in, end - start]` tensor.
    fn column_block<B: Backend>(
        &self,
        start: usize,
        end: usize,
        device: &B::Device,
    ) -> Tensor<B, 2> {
        let [rows, cols] = self.dims;
        let width = end - start;
        let mut out = vec![0f32; rows * width];
        out.par_chunks_mut(width).enumerate().for_each(|(r, row)| {
            let source = &self.values[r * cols + start..r * cols + end];
            for (o, v) in row.iter_mut().zip(source) {
                *o = v.to_f32();
            }
        });
        Tensor::from_data(TensorData::new(out, [rows, width]), device)
    }

    /// The column blocks products widen one at a time: the whole matrix when it is narrow, else
    /// blocks of [`BLOCK_COLUMNS`], so that the lm_head over 151,936 tokens widens about 100 MB
    /// at a time instead of 0.9 GB.
    fn column_blocks(&self) -> Vec<(usize, usize)> {
        let cols = self.dims[1];
        if cols <= BLOCK_COLUMNS {
            return vec![(0, cols)];
        }
        (0..cols)
            .step_by(BLOCK_COLUMNS)
            .map(|start| (start, (start + BLOCK_COLUMNS).min(cols)))
            .collect()
    }

    /// `x [N, in] · W` or `g [N, out] · Wᵀ` in bf16 (see [`FrozenProducts::Bfloat16`]).
    fn bf16_product<B: Backend>(&self, x: Tensor<B, 2>, orientation: Orientation) -> Tensor<B, 2> {
        let device = x.device();
        let [rows, _] = x.dims();
        let values = x
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("float activations");
        let matrix = Bf16Matrix {
            values: &self.values[..],
            dims: self.dims,
            orientation,
        };
        let (_, columns) = matrix.shape();
        let product = matmul::matmul(matmul::Kernel::for_rows(rows), &values, rows, &matrix);
        Tensor::from_data(TensorData::new(product, [rows, columns]), &device)
    }

    /// `x [N, in] · W`, widening one column block at a time (or in bf16, when
    /// [`FrozenProducts::current`] says so).
    pub fn right_product<B: Backend>(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        if FrozenProducts::current() == FrozenProducts::Bfloat16 {
            return self.bf16_product(x, Orientation::AsStored);
        }
        let device = x.device();
        let products: Vec<Tensor<B, 2>> = self
            .column_blocks()
            .into_iter()
            .map(|(start, end)| {
                x.clone()
                    .matmul(self.column_block::<B>(start, end, &device))
            })
            .collect();
        match products.len() {
            1 => products.into_iter().next().expect("one block"),
            _ => Tensor::cat(products, 1),
        }
    }

    /// `g [N, out] · Wᵀ`, widening one column block at a time: the gradient of `x` in
    /// `x · W`.
    pub fn transposed_product<B: Backend>(&self, g: Tensor<B, 2>) -> Tensor<B, 2> {
        if FrozenProducts::current() == FrozenProducts::Bfloat16 {
            return self.bf16_product(g, Orientation::Transposed);
        }
        let device = g.device();
        let mut sum: Option<Tensor<B, 2>> = None;
        for (start, end) in self.column_blocks() {
            let block = self.column_block::<B>(start, end, &device);
            let part = g
                .clone()
                .narrow(1, start, end - start)
                .matmul(block.transpose());
            sum = Some(match sum {
                Some(sum) => sum + part,
                None => part,
            });
        }
        sum.expect("a matrix has columns")
    }

    /// Columns `ids` as an f32 `[ids.len(), in]` tensor (the rows of the transposed matrix):
    /// an embedding lookup that widens only the rows it reads.
    pub fn columns<B: Backend>(&self, ids: &[usize], device: &B::Device) -> Tensor<B, 2> {
        let [rows, cols] = self.dims;
        let mut out = Vec::with_capacity(ids.len() * rows);
        for &id in ids {
            out.extend((0..rows).map(|r| self.values[r * cols + id].to_f32()));
        }
        Tensor::from_data(TensorData::new(out, [ids.len(), rows]), device)
    }
}

/// A weight matrix `[in, out]`: a parameter (trainable, or frozen in f32 with
/// `require_grad = false`), or a [`FrozenMatrix`].
#[derive(Module, Debug)]
pub struct Weight<B: Backend> {
    pub param: Option<Param<Tensor<B, 2>>>,
    #[module(skip)]
    pub frozen: Option<FrozenMatrix>,
}

impl<B: Backend> Weight<B> {
    pub fn from_param(param: Param<Tensor<B, 2>>) -> Self {
        Self {
            param: Some(param),
            frozen: None,
        }
    }

    pub fn frozen(matrix: FrozenMatrix) -> Self {
        Self {
            param: None,
            frozen: Some(matrix),
        }
    }

    pub fn dims(&self) -> [usize; 2] {
        match (&self.param, &self.frozen) {
            (Some(param), _) => param.dims(),
            (None, Some(frozen)) => frozen.dims(),
            (None, None) => unreachable!("a weight holds a parameter or a frozen matrix"),
        }
    }

    /// The parameter of an f32 weight.
    ///
    /// # Panics
    /// On a weight frozen in bf16, which has none.
    pub fn as_param(&self) -> &Param<Tensor<B, 2>> {
        self.param
            .as_ref()
            .expect("a weight frozen in bf16 has no parameter")
    }

    /// Whether the optimizer updates this weight.
    pub fn is_trainable(&self) -> bool {
        self.param.as_ref().is_some_and(|p| p.is_require_grad())
    }

    /// Stops gradients to this weight; with `bf16`, moves it to a [`FrozenMatrix`].
    pub fn freeze(self, bf16: bool) -> Self {
        match self.param {
            Some(param) if bf16 => {
                let dims = param.dims();
                let values = param
                    .into_value()
                    .into_data()
                    .convert::<f32>()
                    .into_vec::<f32>()
                    .expect("float weight");
                Self::frozen(FrozenMatrix::from_f32(&values, dims))
            }
            Some(param) => Self::from_param(param.set_require_grad(false)),
            None => self,
        }
    }

    /// The f32 values (a widened copy when frozen in bf16, made on the default device: bf16
    /// storage is for CPU runs, whose one device that is).
    pub fn val(&self) -> Tensor<B, 2> {
        match (&self.param, &self.frozen) {
            (Some(param), _) => param.val(),
            (None, Some(frozen)) => frozen.tensor(&B::Device::default()),
            (None, None) => unreachable!("a weight holds a parameter or a frozen matrix"),
        }
    }

    /// `x · W`: `[B, T, in] -> [B, T, out]`, as one `[B * T, in]` product (one threaded gemm
    /// rather than one per sequence).
    pub fn right_matmul(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, seq, inputs] = x.dims();
        let rows = x.reshape([batch * seq, inputs]);
        let product = match &self.frozen {
            None => {
                let weight = self.val();
                match few_rows_product(&rows, &weight) {
                    Some(product) => product,
                    None => rows.matmul(weight),
                }
            }
            Some(frozen) => frozen_matmul(rows, frozen),
        };
        let outputs = product.dims()[1];
        product.reshape([batch, seq, outputs])
    }

    /// Columns `ids` of the matrix as rows, `[ids.len(), in]`: the embedding lookup of a
    /// `[hidden, vocab]` table.
    pub fn select_columns(&self, ids: Tensor<B, 1, burn::tensor::Int>) -> Tensor<B, 2> {
        match &self.frozen {
            None => self.val().select(1, ids).transpose(),
            Some(frozen) => {
                let device = ids.device();
                let ids: Vec<usize> = ids
                    .into_data()
                    .convert::<i64>()
                    .into_vec::<i64>()
                    .expect("int ids")
                    .into_iter()
                    .map(|id| id as usize)
                    .collect();
                frozen.columns(&ids, &device)
            }
        }
    }
}

/// `x [N, in] · W [in, out]` for a frozen `W`, in f32. Under autodiff the product records its
/// own backward step (`dx = dy · Wᵀ`, with `W` widened again), so no f32 copy of `W` outlives
/// the product; on inference backends the widened copy is dropped on return.
///
/// Burn has no hook to add an operation to any `AutodiffBackend`, only to the concrete
/// `Autodiff<I, C>`, so the autodiff backends this crate ships are matched by type here. Any
/// other backend takes the plain product: the same values, with the widened blocks kept by its
/// graph.
pub fn frozen_matmul<B: Backend>(x: Tensor<B, 2>, weight: &FrozenMatrix) -> Tensor<B, 2> {
    macro_rules! recorded_on {
        ($($inner:ty),*) => {$(
            if TypeId::of::<B>() == TypeId::of::<Autodiff<$inner>>() {
                let x: Tensor<Autodiff<$inner>, 2> = same_type(x);
                return same_type(recorded_frozen_matmul(x, weight));
            }
        )*};
    }
    recorded_on!(crate::backend::FlexCpu, crate::backend::NdArrayCpu);
    #[cfg(feature = "cuda")]
    recorded_on!(crate::backend::Gpu);
    weight.right_product(x)
}

/// `x [N, in] · w` for at most [`matmul::rows_f32::MAX_ROWS`] rows on burn-flex without autodiff
/// (decoding): every thread streams its own columns of `w` (`matmul::rows_f32`), where
/// burn-flex's gemm runs such a product on one thread below 7M multiply-adds and reads the
/// lm_head at about half the machine's bandwidth. `None` for other backends, more rows, or a
/// `w` that is a strided view.
fn few_rows_product<B: Backend>(x: &Tensor<B, 2>, w: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    let [rows, inputs] = x.dims();
    let [_, outputs] = w.dims();
    if !(1..=matmul::rows_f32::MAX_ROWS).contains(&rows) {
        return None;
    }
    let (Some(x), Some(w)) = (flex_f32(x.clone()), flex_f32_whole(w.clone())) else {
        return None;
    };
    let x_values = &x.storage::<f32>()[..rows * inputs];
    let w_values = &w.storage::<f32>()[..inputs * outputs];
    let product = matmul::rows_f32::row_products(x_values, rows, w_values, inputs, outputs);
    Some(from_flex_values(product, [rows, outputs]))
}

#[derive(Debug)]
struct FrozenMatmulBackward;

impl<I: Backend> Backward<I, 1> for FrozenMatmulBackward {
    type State = FrozenMatrix;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let weight = ops.state;
        unary::<I, _>(ops.parents, ops.node, grads, |grad| {
            let grad = Tensor::<I, 2>::from_primitive(TensorPrimitive::Float(grad));
            weight.transposed_product(grad).into_primitive().tensor()
        });
    }
}

fn recorded_frozen_matmul<I: Backend, C: CheckpointStrategy>(
    x: Tensor<Autodiff<I, C>, 2>,
    weight: &FrozenMatrix,
) -> Tensor<Autodiff<I, C>, 2> {
    let x = x.into_primitive().tensor();
    let inner = Tensor::<I, 2>::from_primitive(TensorPrimitive::Float(x.primitive.clone()));
    let product = weight.right_product(inner).into_primitive().tensor();
    let output = match FrozenMatmulBackward
        .prepare::<C>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(weight.clone(), product),
        OpsKind::UnTracked(prep) => prep.finish(product),
    };
    Tensor::from_primitive(TensorPrimitive::Float(output))
}

/// `[rows, cols]` row-major to `[cols, rows]`, blocked so both sides stay in cache.
pub fn transpose_matrix(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    const BLOCK: usize = 64;
    for row_block in (0..rows).step_by(BLOCK) {
        for col_block in (0..cols).step_by(BLOCK) {
            for row in row_block..(row_block + BLOCK).min(rows) {
                for col in col_block..(col_block + BLOCK).min(cols) {
                    out[col * rows + row] = values[row * cols + col];
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::FlexCpu;

    /// A matrix wider than one block: the blocked products equal the products of the widened
    /// matrix (same f32 values, same sums per column).
    #[test]
    fn blocked_products_equal_the_whole_product() {
        let device = Default::default();
        let (rows, cols) = (8, 2 * BLOCK_COLUMNS + 123);
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0)
            .collect();
        let frozen = FrozenMatrix::from_f32(&values, [rows, cols]);
        assert_eq!(frozen.column_blocks().len(), 3);
        let whole = frozen.tensor::<FlexCpu>(&device);
        let x = Tensor::<FlexCpu, 2>::from_data(
            TensorData::new(
                (0..3 * rows).map(|i| i as f32 / 7.0).collect::<Vec<_>>(),
                [3, rows],
            ),
            &device,
        );
        let blocked = frozen.right_product(x.clone());
        let expected = x.matmul(whole.clone());
        blocked
            .into_data()
            .assert_approx_eq::<f32>(&expected.into_data(), Default::default());
        let g = Tensor::<FlexCpu, 2>::ones([3, cols], &device);
        let blocked = frozen.transposed_product(g.clone());
        let expected = g.matmul(whole.transpose());
        let (a, b) = (
            blocked.into_data().to_vec::<f32>().unwrap(),
            expected.into_data().to_vec::<f32>().unwrap(),
        );
        for (a, b) in a.iter().zip(&b) {
            assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{a} vs {b}");
        }
    }
}
