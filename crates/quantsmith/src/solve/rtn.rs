//! Round to nearest: each group's parameters from its own weights (importance-weighted when
//! an imatrix is given), every weight rounded independently.

use super::{Encoded, LayerProblem, Target};
use crate::Result;

/// Quantizes `p.w` into `target` by rounding to nearest.
pub fn solve(p: &LayerProblem, target: &Target) -> Result<Encoded> {
    super::target::rtn(target, p.name, p.w, p.rows, p.cols, p.importance)
}
