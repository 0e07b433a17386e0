//! Calibration: token windows from text, and the statistics of every linear layer's input.

pub mod hessian;
pub mod windows;

pub use hessian::{Cross, CrossPart, Hessian, HessianPart};
pub use windows::{calibration_windows, CalibOptions, TokenWeighting};
