//! KD³ (Tang et al., ICCV 2023): distillation from webly collected images under distribution
//! shift — instance selection, knowledge memorisation and the MixDistribution contrastive block.
//!
//! **Status: empty.** This crate exists so the workspace has its final shape; the method is not
//! implemented yet. Nothing here trains or is measured. See `../shared/methods/kd3-webdata.md`.
