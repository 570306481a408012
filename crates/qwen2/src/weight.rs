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
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::Autodiff;
use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{bf16, Tensor, TensorData, TensorPrimitive};
use matmul::{Bf16Matrix, Orientation};
use rayon::prelude::*;

use crate::backend::{
    contiguous_f32, f32_operand, from_flex, from_flex_values, record, same_type, usize_values,
    FlexAutodiff, FlexCpu,
};

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
    /// PyTorch's bf16 does (crates/matmul: `vdpbf16ps` on AVX512-BF16 where it is the faster,
    /// otherwise widened while packing; on burn-flex, more than decoding's rows go to gemm with
    /// the matrix widened block by block, as in f32 products, which is faster at these shapes).
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
        let many = match many.widens() {
            true => format!("flex: gemm on widened blocks, else {}", many.name()),
            false => many.name().to_string(),
        };
        match self {
            FrozenProducts::Float32 => "float32".into(),
            FrozenProducts::Bfloat16 => format!("bfloat16 ({many}; up to 8 rows: {})", few.name()),
        }
    }
}

/// Widest column block a product widens at once (see [`FrozenMatrix::right_product`]).
pub const BLOCK_COLUMNS: usize = 16384;

thread_local! {
    /// The f32 block products on burn-flex widen a frozen matrix into, kept from product to
    /// product on the thread that multiplies (at most one block: the memory plan's "f32
    /// widening of a bf16 matrix block"). A fresh zeroed block per product, up to 100 MB, was
    /// memset each time: the heap hands freed blocks back (`memory::reuse_freed_memory`), so
    /// calloc cannot skip the zeroing.
    static WIDENED_BLOCK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

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
        let mut out = vec![0f32; self.dims[0] * (end - start)];
        self.widen_columns(start, end, &mut out);
        Tensor::from_data(TensorData::new(out, [self.dims[0], end - start]), device)
    }

    /// Columns `start..end` widened into `out`, row-major `[in, end - start]`, on every thread.
    fn widen_columns(&self, start: usize, end: usize, out: &mut [f32]) {
        let cols = self.dims[1];
        out.par_chunks_mut(end - start)
            .enumerate()
            .for_each(|(r, row)| {
                let source = &self.values[r * cols + start..r * cols + end];
                for (o, v) in row.iter_mut().zip(source) {
                    *o = v.to_f32();
                }
            });
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

    /// The left operand of a product by widened blocks: `x` itself in f32 products; in bf16
    /// products, `x` rounded to bf16 where [`bf16_by_gemm`] chooses gemm, else `Err` with the
    /// product made by this crate's bf16 kernels.
    fn widened_operand<B: Backend>(
        &self,
        x: Tensor<B, 2>,
        orientation: Orientation,
    ) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
        match FrozenProducts::current() {
            FrozenProducts::Float32 => Ok(x),
            FrozenProducts::Bfloat16 if bf16_by_gemm::<B>(x.dims()[0]) => Ok(rounded_to_bf16(x)),
            FrozenProducts::Bfloat16 => Err(self.bf16_product(x, orientation)),
        }
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
        match self.widened_operand(x, Orientation::AsStored) {
            Ok(x) => self.widened_product(x, Orientation::AsStored),
            Err(product) => product,
        }
    }

    /// `g [N, out] · Wᵀ`, widening one column block at a time: the gradient of `x` in
    /// `x · W`.
    pub fn transposed_product<B: Backend>(&self, g: Tensor<B, 2>) -> Tensor<B, 2> {
        match self.widened_operand(g, Orientation::Transposed) {
            Ok(g) => self.widened_product(g, Orientation::Transposed),
            Err(product) => product,
        }
    }

    /// `x [N, in] · W` or `g [N, out] · Wᵀ` in f32, one widened column block of `W` at a time:
    /// `x · W`'s blocks are its output's column blocks, `g · Wᵀ` sums one product per block.
    fn widened_product<B: Backend>(
        &self,
        x: Tensor<B, 2>,
        orientation: Orientation,
    ) -> Tensor<B, 2> {
        if TypeId::of::<B>() == TypeId::of::<FlexCpu>() {
            let flex = flex_primitive(&x);
            if let Some(a) = f32_operand(&flex) {
                let (_, columns) = self.product_shape(orientation);
                let product = self.gemm_on_widened_blocks(a, orientation);
                return from_flex_values(product, [a.rows, columns]);
            }
        }
        let device = x.device();
        let blocks = self.column_blocks().into_iter();
        let mut products = blocks.map(|(start, end)| {
            let block = self.column_block::<B>(start, end, &device);
            match orientation {
                Orientation::AsStored => x.clone().matmul(block),
                Orientation::Transposed => x
                    .clone()
                    .narrow(1, start, end - start)
                    .matmul(block.transpose()),
            }
        });
        match orientation {
            Orientation::AsStored => {
                let mut blocks: Vec<_> = products.collect();
                match blocks.len() {
                    1 => blocks.pop().expect("one block"),
                    _ => Tensor::cat(blocks, 1),
                }
            }
            Orientation::Transposed => {
                let first = products.next().expect("a matrix has columns");
                products.fold(first, |sum, part| sum + part)
            }
        }
    }

    /// `(k, n)` of `x · W` or `g · Wᵀ`.
    fn product_shape(&self, orientation: Orientation) -> (usize, usize) {
        let [inputs, outputs] = self.dims;
        match orientation {
            Orientation::AsStored => (inputs, outputs),
            Orientation::Transposed => (outputs, inputs),
        }
    }

    /// [`FrozenMatrix::widened_product`] on burn-flex: gemm's products (burn-flex's call, see
    /// `matmul::f32_product`) written into one output, `x · W`'s blocks in place and
    /// `g · Wᵀ`'s summed in place, each block widened into [`WIDENED_BLOCK`].
    fn gemm_on_widened_blocks(&self, a: matmul::F32Operand, orientation: Orientation) -> Vec<f32> {
        let (inner, columns) = self.product_shape(orientation);
        assert_eq!(a.cols, inner, "the product's inner sizes");
        let inputs = self.dims[0];
        let mut out = vec![0f32; a.rows * columns];
        WIDENED_BLOCK.with_borrow_mut(|buffer| {
            for (index, (start, end)) in self.column_blocks().into_iter().enumerate() {
                let width = end - start;
                if buffer.len() < inputs * width {
                    buffer.resize(inputs * width, 0.0);
                }
                let block = &mut buffer[..inputs * width];
                self.widen_columns(start, end, block);
                let block = matmul::F32Operand::row_major(block, inputs, width);
                match orientation {
                    Orientation::AsStored => {
                        matmul::f32_product_into(a, block, &mut out, start, columns, false)
                    }
                    Orientation::Transposed => {
                        let g = matmul::F32Operand {
                            offset: a.offset + start * a.col_stride,
                            cols: width,
                            ..a
                        };
                        let accumulate = index > 0;
                        matmul::f32_product_into(
                            g,
                            block.transposed(),
                            &mut out,
                            0,
                            columns,
                            accumulate,
                        )
                    }
                }
            }
        });
        out
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
                match flex_product(&rows, &weight) {
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
            None => {
                let table = self.val();
                match crate::flex_kernels::embedding_columns(&table, || usize_values(&ids)) {
                    Some(rows) => rows,
                    None => table.select(1, ids).transpose(),
                }
            }
            Some(frozen) => frozen.columns(&usize_values(&ids), &ids.device()),
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

/// Whether bf16 products of `rows` rows on `B` run as gemm's f32 product of the activations
/// rounded to bf16 with the matrix widened block by block: on burn-flex, for more rows than
/// decoding's, where this crate's kernel would widen too (no `vdpbf16ps`). The products and
/// their f32 sums are the same up to order, and gemm is as fast or faster at every model shape
/// (`cargo xtask bench matmul --bf16 --shape deepseek-r1-distill-qwen-1.5b`, 512 rows, 2026-12-08:
/// 201 against 114 GFLOP/s at 1536 x 256, 282 against 188 at 8960 x 1536).
fn bf16_by_gemm<B: Backend>(rows: usize) -> bool {
    let kernel = matmul::Kernel::for_rows(rows);
    TypeId::of::<B>() == TypeId::of::<FlexCpu>()
        && rows > matmul::Kernel::FEW_ROWS
        && kernel.widens()
}

/// `x` with every value rounded to bf16 (to nearest, ties to even), kept in f32.
fn rounded_to_bf16<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let (device, dims) = (x.device(), x.dims());
    let mut values = x
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("float activations");
    values
        .par_iter_mut()
        .for_each(|v| *v = bf16::from_f32(*v).to_f32());
    Tensor::from_data(TensorData::new(values, dims), &device)
}

/// `a · b` by `matmul::f32_product`, as a burn-flex tensor.
fn gemm_product(a: matmul::F32Operand, b: matmul::F32Operand) -> FlexTensor {
    let dims = [a.rows, b.cols];
    FlexTensor::from_data(TensorData::new(matmul::f32_product(a, b), dims))
}

/// The burn-flex tensor behind `t`, for a `B` checked to be [`FlexCpu`].
fn flex_primitive<B: Backend>(t: &Tensor<B, 2>) -> FlexTensor {
    same_type::<_, Tensor<FlexCpu, 2>>(t.clone())
        .into_primitive()
        .tensor()
}

/// `x [N, in] · w [in, out]` on burn-flex by this crate's route: decoding's few rows stream the
/// matrix (`matmul::rows_f32`); more rows go to gemm exactly as burn-flex's matmul calls it (the
/// same operand strides, so the same bits) without the zeroed and then copied output buffer
/// burn-flex makes first (`matmul::f32_product`); under autodiff the product is recorded with
/// its own backward step ([`ProductBackward`]). `None` on other backends.
fn flex_product<B: Backend>(x: &Tensor<B, 2>, w: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    if TypeId::of::<B>() == TypeId::of::<FlexAutodiff>() {
        return recorded_product(same_type(x.clone()), same_type(w.clone())).map(same_type);
    }
    if TypeId::of::<B>() != TypeId::of::<FlexCpu>() {
        return None;
    }
    let (x, w) = (flex_primitive(x), flex_primitive(w));
    let (a, b) = (f32_operand(&x)?, f32_operand(&w)?);
    let (rows, inputs, outputs) = (a.rows, a.cols, b.cols);
    if rows == 0 {
        return None;
    }
    if rows > matmul::rows_f32::MAX_ROWS || !a.is_row_major() || !b.is_row_major() {
        return Some(from_flex(gemm_product(a, b)));
    }
    let product = matmul::rows_f32::row_products(
        &a.values[a.offset..a.offset + rows * inputs],
        rows,
        &b.values[b.offset..b.offset + inputs * outputs],
        inputs,
        outputs,
    );
    Some(from_flex_values(product, [rows, outputs]))
}

/// [`flex_product`] under burn-flex's autodiff: the product, entered in the graph with
/// [`ProductBackward`]. Like Burn's matmul it keeps `x` only when `w` needs a gradient and `w`
/// only when `x` does.
fn recorded_product(
    x: Tensor<FlexAutodiff, 2>,
    w: Tensor<FlexAutodiff, 2>,
) -> Option<Tensor<FlexAutodiff, 2>> {
    let (x, w) = (x.into_primitive().tensor(), w.into_primitive().tensor());
    let output = gemm_product(f32_operand(&x.primitive)?, f32_operand(&w.primitive)?);
    let state = (
        w.is_tracked().then(|| x.primitive.clone()),
        x.is_tracked().then(|| w.primitive.clone()),
    );
    let output = record(ProductBackward, [&x, &w], state, output);
    Some(Tensor::from_primitive(TensorPrimitive::Float(output)))
}

/// The backward step of `y = x · w`: `dx = g · wᵀ` and `dw = xᵀ · g`, the products Burn's
/// matmul backward makes (transposed views, the same strides), by `matmul::f32_product`.
#[derive(Debug)]
struct ProductBackward;

impl Backward<FlexCpu, 2> for ProductBackward {
    /// `x` (kept when `w` needs a gradient) and `w` (kept when `x` does).
    type State = (Option<FlexTensor>, Option<FlexTensor>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, w) = ops.state;
        let mut grad = grads.consume::<FlexCpu>(&ops.node);
        if f32_operand(&grad).is_none() {
            grad = contiguous_f32(grad).expect("an f32 gradient");
        }
        let g = f32_operand(&grad).expect("a 2-D f32 gradient");
        let [x_node, w_node] = ops.parents;
        if let (Some(node), Some(w)) = (x_node, &w) {
            let w = f32_operand(w).expect("an f32 weight").transposed();
            grads.register::<FlexCpu>(node.id, gemm_product(g, w));
        }
        if let (Some(node), Some(x)) = (w_node, &x) {
            let x = f32_operand(x).expect("f32 inputs").transposed();
            grads.register::<FlexCpu>(node.id, gemm_product(x, g));
        }
    }
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

    /// Pseudo-random values in [-1, 1], the same for the same seed.
    fn test_values(count: usize, seed: usize) -> Vec<f32> {
        (0..count)
            .map(|i| (((i + seed) * 7919 % 2003) as f32 - 1001.0) / 997.0)
            .collect()
    }

    /// A tensor's values as bits, for bit-for-bit comparisons.
    fn bits(data: TensorData) -> Vec<u32> {
        data.to_vec::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    }

    /// burn-flex's inference products skip its output buffer but keep its gemm call: the same
    /// bits as `Tensor::matmul`, on one thread (small) and on all (above 192³ multiply-adds),
    /// and decoding's few rows (`rows_f32`) within rounding of it.
    #[test]
    fn flex_products_are_burn_flex_matmul_bit_for_bit() {
        let device = Default::default();
        let tensor = |rows: usize, cols: usize, seed: usize| {
            let values = test_values(rows * cols, seed);
            Tensor::<FlexCpu, 2>::from_data(TensorData::new(values, [rows, cols]), &device)
        };
        for (rows, inputs, outputs) in [(5, 17, 33), (37, 96, 130), (130, 256, 300)] {
            let (x, w) = (tensor(rows, inputs, 1), tensor(inputs, outputs, 2));
            let ours = flex_product(&x, &w).expect("flex, contiguous").into_data();
            let burn = x.matmul(w).into_data();
            assert_eq!(ours.shape, burn.shape);
            assert!(
                bits(ours) == bits(burn),
                "{rows} x {inputs} x {outputs} differs from Tensor::matmul"
            );
        }
        let (x, w) = (tensor(3, 64, 3), tensor(64, 40, 4));
        let few = flex_product(&x, &w).expect("flex").into_data();
        few.assert_approx_eq::<f32>(&x.matmul(w).into_data(), Default::default());
        // A strided weight (a transposed view) is read where it lies, as burn-flex reads it.
        let (x, w) = (tensor(40, 160, 5), tensor(240, 160, 6).transpose());
        let ours = flex_product(&x, &w).expect("flex").into_data();
        assert!(bits(ours) == bits(x.matmul(w).into_data()));
    }

    /// Under autodiff the recorded product gives Burn's matmul values and gradients bit for bit
    /// (its backward step makes the same transposed-view products), and keeps what a frozen
    /// side does not need.
    #[test]
    fn recorded_products_give_burns_gradients_bit_for_bit() {
        let device = Default::default();
        let (rows, inputs, outputs) = (70, 200, 150);
        let leaf = |seed: usize, dims: [usize; 2], tracked: bool| {
            let values = TensorData::new(test_values(dims[0] * dims[1], seed), dims);
            let t = Tensor::<FlexAutodiff, 2>::from_data(values, &device);
            match tracked {
                true => t.require_grad(),
                false => t,
            }
        };
        for (x_tracked, w_tracked) in [(true, true), (true, false), (false, true)] {
            let x = leaf(1, [rows, inputs], x_tracked);
            let w = leaf(2, [inputs, outputs], w_tracked);
            let ours = flex_product(&x, &w).expect("flex autodiff");
            let burn = x.clone().matmul(w.clone());
            assert_eq!(
                bits(ours.clone().into_data()),
                bits(burn.clone().into_data()),
                "values"
            );
            let weights = leaf(3, [rows, outputs], false);
            let ours_grads = (ours * weights.clone()).sum().backward();
            let burn_grads = (burn * weights).sum().backward();
            for (tracked, t) in [(x_tracked, &x), (w_tracked, &w)] {
                let (a, b) = (t.grad(&ours_grads), t.grad(&burn_grads));
                assert_eq!(a.is_some(), tracked);
                if let (Some(a), Some(b)) = (a, b) {
                    assert_eq!(
                        bits(a.into_data()),
                        bits(b.into_data()),
                        "gradient ({x_tracked}, {w_tracked})"
                    );
                }
            }
        }
    }

    /// A matrix wider than one block: the blocked products equal the products of the widened
    /// matrix (same f32 values, same sums per column), on burn-flex (gemm into one output,
    /// the left operand a transposed view) and on burn-ndarray (Burn's products per block).
    fn blocked_products_equal_the_whole_product<B: Backend>() {
        let device = Default::default();
        let (rows, cols) = (8, 2 * BLOCK_COLUMNS + 123);
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0)
            .collect();
        let frozen = FrozenMatrix::from_f32(&values, [rows, cols]);
        assert_eq!(frozen.column_blocks().len(), 3);
        let whole = frozen.tensor::<B>(&device);
        let x = Tensor::<B, 2>::from_data(
            TensorData::new(
                (0..3 * rows).map(|i| i as f32 / 7.0).collect::<Vec<_>>(),
                [rows, 3],
            ),
            &device,
        )
        .transpose();
        let blocked = frozen.right_product(x.clone());
        let expected = x.matmul(whole.clone());
        blocked
            .into_data()
            .assert_approx_eq::<f32>(&expected.into_data(), Default::default());
        let g = Tensor::<B, 2>::from_data(
            TensorData::new(
                (0..cols * 3)
                    .map(|i| (i % 13) as f32 / 5.0 - 1.0)
                    .collect::<Vec<_>>(),
                [cols, 3],
            ),
            &device,
        )
        .transpose();
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

    #[test]
    fn blocked_products_equal_the_whole_product_on_every_cpu_backend() {
        blocked_products_equal_the_whole_product::<FlexCpu>();
        blocked_products_equal_the_whole_product::<crate::backend::NdArrayCpu>();
    }
}
