//! UniKD (Huang et al., ECCV 2024): adaptive feature fusion plus heads that predict distribution
//! parameters, distilled with a closed-form Gaussian KL.
//!
//! **Status: empty.** This crate exists so the workspace has its final shape; the method is not
//! implemented yet. Nothing here trains or is measured. See `../shared/methods/unified-distribution.md`.
