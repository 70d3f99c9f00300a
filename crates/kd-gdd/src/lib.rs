//! GDD (Liu et al., 2024): generative denoise distillation for dense prediction.
//!
//! **Status: empty.** This crate exists so the workspace has its final shape; the method is not
//! implemented yet. Nothing here trains or is measured. See `../shared/methods/gdd.md`.
