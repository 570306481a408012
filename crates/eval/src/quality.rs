//! How well a model predicts held-out tokens, and how close it is to a teacher.
//!
//! Every figure is kept as a sum with its count ([`QualitySums`]) so that batches and chunks add
//! up exactly and the means are token-weighted over the whole split:
//! - cross-entropy: qwen2's [`next_token_cross_entropy`] (transformers' `labels=` loss): logits
//!   at t predict token t+1, labels on padding are skipped; mean = sum / valid labels, and
//!   perplexity = exp(mean), exactly as `exp(model(..., labels=...).loss)` over one big batch;
//! - KL(teacher || student) per position, sum_v p_t (log p_t - log p_s) with p = softmax(logits /
//!   T), over the full (shared) vocabulary, averaged over real positions (the attention mask,
//!   each row's last real position included), as the distillation soft loss counts them (the
//!   formula of distill's forward KL, kept here so evaluation does not build the trainer);
//! - top-1 agreement: share of the same real positions where both models' argmax agree.
//!
//! Memory: the body runs once per batch (`[B, T, hidden]`), then the lm_head is applied to
//! `chunk` positions at a time, so at most `[B, chunk + 1, V]` logits per model exist at once.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use qwen2::loss::next_token_cross_entropy;
use qwen2::{AttentionMask, Model};

/// Sums over the positions scored so far; add batches with [`QualitySums::add`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QualitySums {
    /// Sum of next-token cross-entropy over valid labels (nats).
    pub cross_entropy_sum: f64,
    /// Valid labels: positions t whose next token t+1 is real.
    pub labels: u64,
    /// Sum of KL(teacher || student) over compared positions (nats); 0 without a teacher.
    pub kl_sum: f64,
    /// Compared positions where teacher and student pick the same top-1 token.
    pub top1_agreements: u64,
    /// Real positions compared with the teacher; 0 without a teacher.
    pub compared_positions: u64,
}

impl QualitySums {
    pub fn add(&mut self, other: &QualitySums) {
        self.cross_entropy_sum += other.cross_entropy_sum;
        self.labels += other.labels;
        self.kl_sum += other.kl_sum;
        self.top1_agreements += other.top1_agreements;
        self.compared_positions += other.compared_positions;
    }

    /// Mean cross-entropy over valid labels (transformers' loss); NaN when nothing was scored.
    pub fn mean_cross_entropy(&self) -> f64 {
        if self.labels == 0 {
            f64::NAN
        } else {
            self.cross_entropy_sum / self.labels as f64
        }
    }

    /// exp(mean cross-entropy).
    pub fn perplexity(&self) -> f64 {
        self.mean_cross_entropy().exp()
    }

    /// Token-mean KL(teacher || student); None when no teacher was compared.
    pub fn mean_kl(&self) -> Option<f64> {
        (self.compared_positions > 0).then(|| self.kl_sum / self.compared_positions as f64)
    }

    /// Share of compared positions with the same argmax; None without a teacher.
    pub fn top1_agreement(&self) -> Option<f64> {
        (self.compared_positions > 0)
            .then(|| self.top1_agreements as f64 / self.compared_positions as f64)
    }
}

/// Scores one batch `input_ids [B][T]` under `mask` (no gradients are kept: pass models of a
/// non-autodiff backend). With a `teacher`, also compares the two distributions at
/// `temperature` (1 for evaluation; the distillation fixtures use 2). `chunk` is the number of
/// positions whose vocabulary-sized logits are materialised at once.
pub fn score_batch<B: Backend>(
    student: &Model<B>,
    teacher: Option<&Model<B>>,
    input_ids: &[Vec<u32>],
    mask: &AttentionMask,
    chunk: usize,
    temperature: f64,
) -> QualitySums {
    let batch = input_ids.len();
    let seq = input_ids.first().map_or(0, Vec::len);
    let mut sums = QualitySums::default();
    if batch == 0 || seq == 0 {
        return sums;
    }
    let device = student.device();
    let ids = ids_tensor::<B>(input_ids, &device);
    let (student_hidden, _) = student.forward_hidden(ids.clone(), mask, false);
    let teacher_hidden = teacher.map(|model| (model, model.forward_hidden(ids, mask, false).0));

    let chunk = chunk.max(1);
    let mut start = 0;
    while start < seq {
        // Positions [start, end) are compared with the teacher; the cross-entropy window reaches
        // one position further so that the label of position end-1 (token end) is scored here.
        // Consecutive windows overlap by that one position, so every label is scored once.
        let end = (start + chunk).min(seq);
        let window_end = (end + 1).min(seq);
        let student_logits =
            student.lm_head(student_hidden.clone().narrow(1, start, window_end - start));
        if window_end - start >= 2 {
            let window_ids: Vec<Vec<u32>> = input_ids
                .iter()
                .map(|row| row[start..window_end].to_vec())
                .collect();
            let window_mask = AttentionMask {
                rows: mask
                    .rows
                    .iter()
                    .map(|row| row[start..window_end].to_vec())
                    .collect(),
            };
            let ce = next_token_cross_entropy(student_logits.clone(), &window_ids, &window_mask);
            sums.cross_entropy_sum += scalar(ce.sum());
            sums.labels += ce.count as u64;
        }
        if let Some((teacher, hidden)) = &teacher_hidden {
            let teacher_logits = teacher.lm_head(hidden.clone().narrow(1, start, end - start));
            let real: Vec<bool> = mask
                .rows
                .iter()
                .flat_map(|row| row[start..end].iter().copied())
                .collect();
            let compared = compare_with_teacher(
                student_logits.narrow(1, 0, end - start),
                teacher_logits,
                &real,
                temperature,
            );
            sums.add(&compared);
        }
        start = end;
    }
    sums
}

/// KL and top-1 agreement of `[B, n, V]` logits at the positions where `real` (`B * n`, row
/// major) is true. When the vocabularies differ, only the shared leading rows are compared (the
/// same rule as the distillation objective: ids past the smaller vocabulary mean nothing to the
/// other model).
pub fn compare_with_teacher<B: Backend>(
    student_logits: Tensor<B, 3>,
    teacher_logits: Tensor<B, 3>,
    real: &[bool],
    temperature: f64,
) -> QualitySums {
    let [batch, positions, student_vocab] = student_logits.dims();
    let teacher_vocab = teacher_logits.dims()[2];
    let shared = student_vocab.min(teacher_vocab);
    let rows = batch * positions;
    assert_eq!(real.len(), rows, "one mask entry per compared position");
    let student_logits = student_logits.narrow(2, 0, shared).reshape([rows, shared]);
    let teacher_logits = teacher_logits.narrow(2, 0, shared).reshape([rows, shared]);
    let device = student_logits.device();

    let student_top = host_ints(student_logits.clone().argmax(1));
    let teacher_top = host_ints(teacher_logits.clone().argmax(1));
    let weights: Vec<f32> = real.iter().map(|&r| f32::from(u8::from(r))).collect();
    let weights = Tensor::<B, 1>::from_data(TensorData::new(weights, [rows]), &device);
    let kl = kl_per_position(student_logits, teacher_logits, temperature);
    let kl_sum = scalar((kl * weights).sum());

    let mut sums = QualitySums {
        kl_sum,
        ..QualitySums::default()
    };
    for ((&counted, student), teacher) in real.iter().zip(&student_top).zip(&teacher_top) {
        if counted {
            sums.compared_positions += 1;
            sums.top1_agreements += u64::from(student == teacher);
        }
    }
    sums
}

/// `[N, V]` logits -> `[N]` KL(teacher || student) at `temperature`.
pub fn kl_per_position<B: Backend>(
    student_logits: Tensor<B, 2>,
    teacher_logits: Tensor<B, 2>,
    temperature: f64,
) -> Tensor<B, 1> {
    let [n, _] = student_logits.dims();
    let log_p_student = log_softmax(student_logits / temperature, 1);
    let log_p_teacher = log_softmax(teacher_logits / temperature, 1);
    (log_p_teacher.clone().exp() * (log_p_teacher - log_p_student))
        .sum_dim(1)
        .reshape([n])
}

fn ids_tensor<B: Backend>(rows: &[Vec<u32>], device: &B::Device) -> Tensor<B, 2, Int> {
    let values: Vec<i64> = rows.iter().flatten().map(|&v| i64::from(v)).collect();
    Tensor::from_data(TensorData::new(values, [rows.len(), rows[0].len()]), device)
}

fn scalar<B: Backend>(value: Tensor<B, 1>) -> f64 {
    value
        .into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .expect("float data")[0]
}

fn host_ints<B: Backend>(values: Tensor<B, 2, Int>) -> Vec<i64> {
    values
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .expect("int data")
}
