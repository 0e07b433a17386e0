//! Round to nearest: each group's parameters from its own weights (importance-weighted when
//! an imatrix is given), every weight rounded independently.

use super::{Encoded, LayerProblem, Solver, Target};
use crate::Result;

/// Round-to-nearest.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rtn;

impl Solver for Rtn {
    fn name(&self) -> &'static str {
        "rtn"
    }
    fn solve(&self, p: &LayerProblem, target: &Target) -> Result<Encoded> {
        super::target::rtn(target, p.name, p.w, p.rows, p.cols, p.importance)
    }
}
