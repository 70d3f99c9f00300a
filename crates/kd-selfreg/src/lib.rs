//! Self-regulated knowledge distillation (Mishra & Sundaram, 2021) with per-sample significance.
//!
//! **Status: empty.** This crate exists so the workspace has its final shape; the method is not
//! implemented yet. Nothing here trains or is measured. See `../shared/methods/selfreg.md`.
