//! Model-family knowledge as data. (placeholder: filled by the arch tables work)
pub mod target;
pub use target::{Heads, Layout, QkvPart, RowTransform, Target};
