//! The same input through the same model twice gives the same numbers.
mod common;
use burn::tensor::backend::Backend;
use common::*;

fn forward_is_deterministic_state_by_state<B: Backend>() {
    let (model, _) = qwen2::load_model::<B>(&model_dir("teacher"), &Default::default()).unwrap();
    let reference = Reference::open(model_dir("teacher").join("reference.safetensors"));
    let rows = reference.rows("input_ids");
    let mask = reference.mask();
    let run = || {
        let out = model.forward(ids_tensor(&rows), &mask, true);
        out.hidden_states
            .unwrap()
            .into_iter()
            .map(to_vec)
            .collect::<Vec<_>>()
    };
    let first = run();
    for _ in 0..5 {
        let again = run();
        for (index, (a, b)) in first.iter().zip(&again).enumerate() {
            let error = max_abs_diff(a, b);
            assert!(
                error == 0.0,
                "hidden state {index} differs by {error} between two runs"
            );
        }
    }
}

qwen2::on_every_cpu_backend!(forward_is_deterministic_state_by_state);
