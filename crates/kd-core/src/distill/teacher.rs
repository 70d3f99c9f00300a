//! The frozen teacher.
//!
//! A teacher's variables live in their own `VarStore`, frozen (`requires_grad = false`), and its
//! forward pass always runs in eval mode under `no_grad`. Keeping it out of the student's store
//! means no optimiser can ever touch it and no gradient can flow into it.

use std::path::Path;

use tch::{nn, Device, Tensor};

use crate::io::weights;
use crate::models::{Model, ModelOutput};
use crate::Result;

/// A frozen network and the store that owns its weights.
pub struct Teacher {
    vs: nn::VarStore,
    model: Box<dyn Model>,
}

impl Teacher {
    /// Builds a network with `build` (under the store's root) and loads its weights from
    /// `path`: weights exported by [`crate::train::export_student`], or any safetensors or
    /// `torch.save` state dict with the model's names. Errors name the file and list the
    /// missing, unexpected and mis-shaped tensors.
    pub fn load_built(
        build: impl FnOnce(&nn::Path<'_>) -> Result<Box<dyn Model>>,
        path: &Path,
        device: Device,
    ) -> Result<Self> {
        Self::load_with(build, path, device, &weights::Import::default()).map(|(t, _)| t)
    }

    /// [`Teacher::load_built`] from any weights file (safetensors or `torch.save`, see
    /// [`weights::read`]) with explicit import options; returns what was loaded.
    pub fn load_with(
        build: impl FnOnce(&nn::Path<'_>) -> Result<Box<dyn Model>>,
        path: &Path,
        device: Device,
        imp: &weights::Import,
    ) -> Result<(Self, weights::ImportSummary)> {
        Self::from_weights(build, &weights::read(path, &imp.read)?, device, imp)
    }

    /// [`Teacher::load_with`] from weights already read.
    pub fn from_weights(
        build: impl FnOnce(&nn::Path<'_>) -> Result<Box<dyn Model>>,
        w: &weights::Weights,
        device: Device,
        imp: &weights::Import,
    ) -> Result<(Self, weights::ImportSummary)> {
        let mut vs = nn::VarStore::new(device);
        let model = build(&vs.root())?;
        let vars = sorted_vars(&vs);
        let summary = weights::import_read(w, &vars, imp)?;
        vs.freeze();
        Ok((Self { vs, model }, summary))
    }

    /// Wraps an already-built model whose weights are in `vs`, freezing them.
    pub fn from_parts(mut vs: nn::VarStore, model: Box<dyn Model>) -> Self {
        vs.freeze();
        Self { vs, model }
    }

    /// Eval-mode forward pass under `no_grad`; outputs carry no autograd history.
    pub fn forward(&self, x: &Tensor) -> ModelOutput {
        tch::no_grad(|| self.model.forward_t(x, false))
    }

    /// The underlying model (for taps, `classify`, `forward_from`).
    pub fn model(&self) -> &dyn Model {
        self.model.as_ref()
    }

    /// The frozen variables.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }
}

/// All variables of `vs` (trainable and buffers such as BN running stats), sorted by name.
pub fn sorted_vars(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}
