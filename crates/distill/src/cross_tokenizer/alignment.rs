//! Aligning two tokenizations of one text: the student's rows (from the shards) are spelled
//! out as bytes, the teacher's tokenizer encodes the same text, and the two token sequences
//! are cut into groups at the bytes where both tokenizations end a token (TRL GOLD's
//! `_align_by_byte_offsets`).
//!
//! The rules, stated once:
//! - a row's text is the concatenation of its student tokens' bytes; special tokens (a
//!   document's end-of-text) stand for no text: they split the row into segments, which the
//!   teacher reads one after the other with its own end-of-text between them;
//! - a segment's first and last bytes are trimmed to whole UTF-8 characters (a block of the
//!   shards may start or end inside a character): the teacher encodes what is left, and its
//!   tokens must spell exactly those bytes, or the run stops naming the row and the byte;
//! - a group is a run of student tokens and a run of teacher tokens spelling the same bytes,
//!   closed at the first byte where both end a token (partial overlaps extend the group until
//!   both sides end together);
//! - a segment's first group is not compared (the teacher has no position predicting it),
//!   nor a last group whose two sides do not end together;
//! - a group's distribution is read at the position predicting its last token, times the
//!   probabilities of its earlier tokens (crate::cross_tokenizer::losses).

use std::ops::Range;

use preprocess::TokenText;

use super::losses::GroupRows;

/// Why a batch cannot be aligned.
#[derive(Debug, thiserror::Error)]
pub enum AlignmentError {
    /// A tokenizer does not spell the text exactly.
    #[error("{0}")]
    Lossy(String),
    #[error(transparent)]
    Tokenizer(#[from] preprocess::PreprocessError),
}

/// The positions (flattened `row * seq_len + t` over the padded batch) that predict a group's
/// tokens on one side, in order, and the tokens predicted by all but the last.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictedSpan {
    pub positions: Range<usize>,
    pub earlier_tokens: Vec<u32>,
}

/// Student tokens and teacher tokens that spell the same bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct AlignedGroup {
    pub student: PredictedSpan,
    pub teacher: PredictedSpan,
}

/// A batch's groups, ordered by student position.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Alignment {
    pub groups: Vec<AlignedGroup>,
}

impl Alignment {
    /// Chunks of `positions` student positions of about `chunk` positions each, never cutting
    /// a group (its positions are evaluated together).
    pub fn chunk_ranges(&self, positions: usize, chunk: usize) -> Vec<Range<usize>> {
        let chunk = chunk.max(1);
        let mut ranges = Vec::new();
        let mut start = 0;
        let mut next_group = 0;
        while start < positions {
            let mut end = (start + chunk).min(positions);
            while next_group < self.groups.len() {
                let span = &self.groups[next_group].student.positions;
                if span.end <= end {
                    next_group += 1;
                } else {
                    if span.start < end {
                        end = span.end;
                        next_group += 1;
                        continue;
                    }
                    break;
                }
            }
            ranges.push(start..end);
            start = end;
        }
        ranges
    }
}

impl Alignment {
    /// The groups whose student positions lie in `positions`, as rows of the two sides'
    /// logits: the student's relative to `positions.start`, the teacher's relative to the
    /// returned teacher positions (flattened), which list every group's in order.
    pub fn rows_in(&self, positions: Range<usize>) -> (GroupRows, GroupRows, Vec<usize>) {
        let mut student = GroupRows::default();
        let mut teacher = GroupRows::default();
        let mut teacher_positions = Vec::new();
        let groups = self.groups.iter().filter(|g| {
            g.student.positions.start >= positions.start && g.student.positions.end <= positions.end
        });
        for (index, group) in groups.enumerate() {
            let s = &group.student;
            let rows: Vec<usize> = s.positions.clone().map(|p| p - positions.start).collect();
            push_group(&mut student, index, &rows, &s.earlier_tokens);
            let t = &group.teacher;
            let first = teacher_positions.len();
            teacher_positions.extend(t.positions.clone());
            let rows: Vec<usize> = (first..teacher_positions.len()).collect();
            push_group(&mut teacher, index, &rows, &t.earlier_tokens);
        }
        (student, teacher, teacher_positions)
    }
}

/// Adds group `index`, whose rows are `rows` (the last one's distribution, the earlier ones'
/// probability of `earlier_tokens`), to `group_rows`.
fn push_group(group_rows: &mut GroupRows, index: usize, rows: &[usize], earlier_tokens: &[u32]) {
    let (&last, earlier) = rows.split_last().expect("a group has a token");
    group_rows.last.push(last);
    group_rows.earlier_rows.extend_from_slice(earlier);
    group_rows.earlier_tokens.extend_from_slice(earlier_tokens);
    group_rows
        .earlier_group
        .extend(std::iter::repeat_n(index, earlier.len()));
}

/// The teacher's rows for a student batch, and how the two align.
#[derive(Debug, Clone, PartialEq)]
pub struct AlignedBatch {
    /// Right-padded teacher ids (pad: the teacher's end-of-text, or 0).
    pub teacher_ids: Vec<Vec<u32>>,
    pub teacher_mask: Vec<Vec<bool>>,
    pub alignment: Alignment,
}

/// The two tokenizers, ready to align batches.
pub struct Aligner {
    pub student: TokenText,
    pub teacher: TokenText,
    /// What the teacher reads between two documents.
    pub teacher_end_of_text: Option<u32>,
}

/// A row's group before flattening: student token indices `i..=j`, teacher `k..=l`.
struct RowGroup {
    student: Range<usize>,
    teacher: Range<usize>,
}

impl Aligner {
    /// The tokenizers of the teacher and the student at these paths (folders or GGUF files);
    /// the teacher's end-of-text is its config's first eos.
    pub fn load(
        teacher: &std::path::Path,
        student: &std::path::Path,
    ) -> Result<Self, AlignmentError> {
        let teacher_end_of_text = qwen2::ModelConfig::from_file(teacher)
            .ok()
            .and_then(|config| config.eos_token_ids.first().copied());
        Ok(Self {
            student: TokenText::load(student)?,
            teacher: TokenText::load(teacher)?,
            teacher_end_of_text,
        })
    }

    /// The teacher's tokens of the text of a student prompt and of its continuation, encoded
    /// apart (special tokens stand for no text; bytes that are not UTF-8, which a model's own
    /// samples can hold, become U+FFFD): what the teacher scores a student's own text on.
    pub fn teacher_tokens_of_continuation(
        &self,
        prompt: &[u32],
        continuation: &[u32],
    ) -> Result<(Vec<u32>, Vec<u32>), AlignmentError> {
        let text = |ids: &[u32]| {
            let bytes: Vec<u8> = ids
                .iter()
                .filter_map(|&id| self.student.bytes(id))
                .flatten()
                .copied()
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        };
        Ok((
            self.teacher.encode(&text(prompt))?,
            self.teacher.encode(&text(continuation))?,
        ))
    }

    /// Aligns the student rows `rows` (right-padded, `mask` true at real tokens).
    pub fn align(
        &self,
        rows: &[Vec<u32>],
        mask: &[Vec<bool>],
    ) -> Result<AlignedBatch, AlignmentError> {
        let mut teacher_rows = Vec::with_capacity(rows.len());
        let mut row_groups = Vec::with_capacity(rows.len());
        for (row, (ids, real)) in rows.iter().zip(mask).enumerate() {
            let len = real.iter().take_while(|&&r| r).count();
            let (teacher, groups) = self.align_row(row, &ids[..len])?;
            teacher_rows.push(teacher);
            row_groups.push(groups);
        }
        let student_seq = rows.first().map_or(0, Vec::len);
        let teacher_seq = teacher_rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let pad = self.teacher_end_of_text.unwrap_or(0);
        let mut groups = Vec::new();
        for (row, row_group) in row_groups.into_iter().enumerate() {
            let (student_ids, teacher_ids) = (&rows[row], &teacher_rows[row]);
            for group in row_group {
                let span = |tokens: &Range<usize>, ids: &[u32], seq: usize| PredictedSpan {
                    positions: row * seq + tokens.start - 1..row * seq + tokens.end - 1,
                    earlier_tokens: ids[tokens.start..tokens.end - 1].to_vec(),
                };
                groups.push(AlignedGroup {
                    student: span(&group.student, student_ids, student_seq),
                    teacher: span(&group.teacher, teacher_ids, teacher_seq),
                });
            }
        }
        let teacher_mask = teacher_rows
            .iter()
            .map(|r| (0..teacher_seq).map(|t| t < r.len()).collect())
            .collect();
        let teacher_ids = teacher_rows
            .into_iter()
            .map(|mut r| {
                r.resize(teacher_seq, pad);
                r
            })
            .collect();
        Ok(AlignedBatch {
            teacher_ids,
            teacher_mask,
            alignment: Alignment { groups },
        })
    }

    /// One row's teacher tokens and groups (token indices within the row).
    fn align_row(
        &self,
        row: usize,
        ids: &[u32],
    ) -> Result<(Vec<u32>, Vec<RowGroup>), AlignmentError> {
        let mut teacher_row = Vec::new();
        let mut groups = Vec::new();
        let mut segment_start = 0;
        for boundary in 0..=ids.len() {
            let at_end = boundary == ids.len();
            if !at_end && self.student.bytes(ids[boundary]).is_some() {
                if Some(ids[boundary]) == self.student.unknown() {
                    return Err(self.lossy("student", row, boundary, "the unknown token"));
                }
                continue;
            }
            if boundary > segment_start {
                self.align_segment(
                    row,
                    ids,
                    segment_start..boundary,
                    &mut teacher_row,
                    &mut groups,
                )?;
            }
            if !at_end {
                teacher_row.extend(self.teacher_end_of_text);
            }
            segment_start = boundary + 1;
        }
        Ok((teacher_row, groups))
    }

    fn align_segment(
        &self,
        row: usize,
        ids: &[u32],
        tokens: Range<usize>,
        teacher_row: &mut Vec<u32>,
        groups: &mut Vec<RowGroup>,
    ) -> Result<(), AlignmentError> {
        // Student token ends, in bytes of the segment.
        let mut text = Vec::new();
        let mut student_ends = Vec::with_capacity(tokens.len());
        for &id in &ids[tokens.clone()] {
            text.extend_from_slice(self.student.bytes(id).expect("segments hold text tokens"));
            student_ends.push(text.len());
        }
        let start = text
            .iter()
            .take(3)
            .take_while(|&&b| (0x80..0xC0).contains(&b))
            .count();
        let end = match std::str::from_utf8(&text[start..]) {
            Ok(_) => text.len(),
            Err(error) if error.error_len().is_none() => start + error.valid_up_to(),
            Err(error) => {
                let at = start + error.valid_up_to();
                let token = tokens.start + student_ends.iter().position(|&e| e > at).unwrap_or(0);
                return Err(self.lossy("student", row, token, "bytes that are not UTF-8 text"));
            }
        };
        let segment_text = std::str::from_utf8(&text[start..end]).expect("checked above");
        let teacher_ids = self.teacher.encode(segment_text)?;
        let mut teacher_ends = Vec::with_capacity(teacher_ids.len());
        let mut spelled = Vec::with_capacity(end - start);
        for &id in &teacher_ids {
            match self.teacher.bytes(id) {
                Some(bytes) => spelled.extend_from_slice(bytes),
                None => break,
            }
            teacher_ends.push(start + spelled.len());
        }
        if spelled != text[start..end] {
            let at = spelled
                .iter()
                .zip(&text[start..end])
                .position(|(a, b)| a != b)
                .unwrap_or(spelled.len().min(end - start));
            let token = tokens.start
                + student_ends
                    .iter()
                    .position(|&e| e > start + at)
                    .unwrap_or(0);
            return Err(self.lossy(
                "teacher",
                row,
                token,
                "text the teacher's tokenizer does not spell back",
            ));
        }

        // Walk both sides by token ends; a group closes where both end at the same byte.
        let offset = teacher_row.len();
        let (mut s, mut t) = (0, 0);
        let (mut group_s, mut group_t) = (0, 0);
        let mut first = true;
        // Student tokens that end inside the trimmed lead belong to no text the teacher saw.
        while s < student_ends.len() && student_ends[s] <= start {
            s += 1;
            group_s = s;
        }
        while s < student_ends.len() && t < teacher_ends.len() {
            let (s_end, t_end) = (student_ends[s], teacher_ends[t]);
            if s_end < t_end {
                s += 1;
            } else if s_end > t_end {
                t += 1;
            } else {
                s += 1;
                t += 1;
                if !first {
                    groups.push(RowGroup {
                        student: tokens.start + group_s..tokens.start + s,
                        teacher: offset + group_t..offset + t,
                    });
                }
                first = false;
                (group_s, group_t) = (s, t);
            }
        }
        teacher_row.extend_from_slice(&teacher_ids);
        Ok(())
    }

    fn lossy(&self, side: &str, row: usize, token: usize, what: &str) -> AlignmentError {
        AlignmentError::Lossy(format!(
            "row {row} of the batch, student token {token}: {what}. Distillation across \
             tokenizers compares the two models on the same text, so both tokenizers must \
             spell it exactly ({side} tokenizer: {}); check that the shards were made with the \
             student's tokenizer and that the {side}'s tokenizer covers every byte (byte-level \
             BPE or byte fallback)",
            if side == "student" {
                self.student.dir().display()
            } else {
                self.teacher.dir().display()
            }
        ))
    }
}
