//! Parameter ids that survive a restart, so a checkpoint's optimizer state finds its
//! parameters again.

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// Gives every parameter an id from its position in the module, so the optimizer state saved
/// by one process finds its parameters again in the next (Burn draws ids at random otherwise).
pub struct PositionalIds {
    next: u64,
}

impl PositionalIds {
    pub fn assign<B: Backend, M: Module<B>>(module: M) -> M {
        module.map(&mut PositionalIds { next: 1 })
    }
}

impl<B: Backend> ModuleMapper<B> for PositionalIds {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (_, tensor, mapper) = param.consume();
        let id = ParamId::from(self.next);
        self.next += 1;
        Param::from_mapped_value(id, tensor, mapper)
    }
}
