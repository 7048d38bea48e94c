//! C += α · A·B on f32 matrices with explicit strides, through `matrixmultiply` (a pure-Rust blocked sgemm that
//! picks AVX2/FMA or AVX-512 at run time, so the binary stays portable). Its entry point takes raw pointers; this
//! module checks every index the kernel will touch, so callers stay safe.
#![allow(unsafe_code)]

/// A matrix view: `rows × cols` elements of `data`, element (i, j) at `i * row_stride + j * col_stride`.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    /// The elements.
    pub data: &'a [f32],
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Distance between rows.
    pub row_stride: usize,
    /// Distance between columns.
    pub col_stride: usize,
}

impl<'a> View<'a> {
    /// A row-major matrix.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        View {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose of a row-major `cols × rows` matrix, without moving data.
    pub fn transposed(data: &'a [f32], rows: usize, cols: usize) -> Self {
        View {
            data,
            rows,
            cols,
            row_stride: 1,
            col_stride: rows,
        }
    }

    /// Whether every (i, j) with i < rows, j < cols is inside `data`.
    fn in_bounds(&self) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return true;
        }
        let last = (self.rows - 1)
            .checked_mul(self.row_stride)
            .and_then(|r| (self.cols - 1).checked_mul(self.col_stride)?.checked_add(r));
        last.is_some_and(|l| l < self.data.len())
            && isize::try_from(self.row_stride).is_ok()
            && isize::try_from(self.col_stride).is_ok()
    }
}

/// `c` (row-major `a.rows × b.cols`) += `alpha` · `a` · `b`. Returns false, touching nothing, when the shapes do not
/// agree or a view reaches outside its data.
#[must_use]
pub fn add_product(c: &mut [f32], alpha: f32, a: View<'_>, b: View<'_>) -> bool {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k || m.checked_mul(n) != Some(c.len()) || !a.in_bounds() || !b.in_bounds() {
        return false;
    }
    if m == 0 || n == 0 || k == 0 {
        return true;
    }
    let (Ok(n_stride), Ok(ars), Ok(acs), Ok(brs), Ok(bcs)) = (
        isize::try_from(n),
        isize::try_from(a.row_stride),
        isize::try_from(a.col_stride),
        isize::try_from(b.row_stride),
        isize::try_from(b.col_stride),
    ) else {
        return false;
    };
    // SAFETY: sgemm reads a(i, l) = a.data[i·ars + l·acs] for i < m, l < k and b(l, j) for l < k, j < n — all inside
    // their slices (`in_bounds`) — and reads and writes c(i, j) = c[i·n + j] for i < m, j < n, inside `c` (its
    // length is m·n). The three slices do not overlap: `c` is a unique borrow.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.data.as_ptr(),
            ars,
            acs,
            b.data.as_ptr(),
            brs,
            bcs,
            1.0,
            c.as_mut_ptr(),
            n_stride,
            1,
        );
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_naive_product_with_transposed_views() {
        let (m, k, n) = (5, 3, 7);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.5 - 3.0).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 - 2.0).collect(); // n × k
        let mut c = vec![1.0f32; m * n];
        assert!(add_product(
            &mut c,
            2.0,
            View::rows(&a, m, k),
            View::transposed(&bt, k, n)
        ));
        for i in 0..m {
            for j in 0..n {
                let dot: f32 = (0..k).map(|l| a[i * k + l] * bt[j * k + l]).sum();
                assert_eq!(c[i * n + j], 1.0 + 2.0 * dot, "({i}, {j})");
            }
        }
        assert!(!add_product(
            &mut c[1..],
            1.0,
            View::rows(&a, m, k),
            View::transposed(&bt, k, n)
        ));
        assert!(!add_product(
            &mut c,
            1.0,
            View::rows(&a[1..], m, k),
            View::transposed(&bt, k, n)
        ));
    }
}
