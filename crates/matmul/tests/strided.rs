//! `strided::contiguous_copy` against an index-by-index walk of the same view.

use matmul::strided::contiguous_copy;

fn walk(source: &[f32], offset: usize, shape: &[usize], strides: &[isize]) -> Vec<f32> {
    let count: usize = shape.iter().product();
    (0..count)
        .map(|mut flat| {
            let mut at = offset as isize;
            for (&n, &s) in shape.iter().zip(strides).rev() {
                at += (flat % n) as isize * s;
                flat /= n;
            }
            source[at as usize]
        })
        .collect()
}

#[test]
fn permuted_heads_copy_as_the_view_reads() {
    // [B, T, heads, d] = [2, 37, 3, 8] viewed as [B, heads, T, d] (swap of axes 1 and 2), from
    // an offset, and a 3-D slice with a gap between rows.
    let source: Vec<f32> = (0..2 * 37 * 3 * 8 + 5).map(|i| i as f32 * 0.5).collect();
    let (shape, strides) = ([2, 3, 37, 8], [37 * 3 * 8, 8, 3 * 8, 1]);
    let got = contiguous_copy(&source, 5, &shape, &strides).expect("last axis contiguous");
    assert_eq!(got, walk(&source, 5, &shape, &strides));
    let (shape, strides) = ([4, 6, 5], [40, 7, 1]);
    let got = contiguous_copy(&source, 3, &shape, &strides).expect("rows with gaps");
    assert_eq!(got, walk(&source, 3, &shape, &strides));
    // Large enough for several tasks.
    let big: Vec<f32> = (0..3000 * 64).map(|i| i as f32).collect();
    let (shape, strides) = ([1, 2, 1500, 64], [0, 64, 128, 1]);
    let got = contiguous_copy(&big, 0, &shape, &strides).expect("many runs");
    assert_eq!(got, walk(&big, 0, &shape, &strides));
}

#[test]
fn views_it_cannot_copy_run_by_run_are_left_to_the_caller() {
    let source = vec![0f32; 64];
    assert!(
        contiguous_copy(&source, 0, &[4, 4], &[1, 4]).is_none(),
        "transposed"
    );
    assert!(
        contiguous_copy(&source, 0, &[4, 4], &[-4, 1]).is_none(),
        "negative"
    );
    assert!(
        contiguous_copy(&source, 60, &[2, 4], &[4, 1]).is_none(),
        "past the end"
    );
    assert_eq!(
        contiguous_copy(&source, 0, &[0, 4], &[4, 1]),
        Some(Vec::new())
    );
}
