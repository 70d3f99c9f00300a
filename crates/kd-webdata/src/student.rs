//! The exported KD³ student for inference.
//!
//! A KD³ student is its backbone, the projector and a copy of the teacher's classifier; its own
//! classifier is never trained. The trainer exports only the backbone, so the other two parts
//! travel in [`HEAD_FILE`](crate::HEAD_FILE), and [`Kd3Student`] puts the three back together
//! as one [`Model`] whose logits are exactly those the student was evaluated with.

use std::path::Path;

use tch::nn::VarStore;
use tch::{Device, Tensor};

use kd_core::distill::Teacher;
use kd_core::io::checkpoint;
use kd_core::models::{Model, ModelOutput, Tap};
use kd_core::{KdError, Result};

use crate::distiller::{shared_logits, Geometry};
use crate::memorise::{Projector, SharedHead};

/// Backbone + projector + copied teacher head, frozen, as a [`Model`].
pub struct Kd3Student {
    name: String,
    backbone: Teacher,
    _vs: VarStore,
    projector: Projector,
    head: SharedHead,
    geometry: Geometry,
}

impl std::fmt::Debug for Kd3Student {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kd3Student").field("name", &self.name).finish()
    }
}

fn meta_i64(path: &Path, meta: &serde_json::Value, key: &str) -> Result<i64> {
    meta[key]
        .as_i64()
        .ok_or_else(|| KdError::file(path, format!("metadata has no integer {key:?}")))
}

impl Kd3Student {
    /// The exported student: its frozen backbone (the trainer's `student.safetensors`, loaded
    /// as a [`Teacher`], e.g. with `kd_classify::models::load_teacher`) and the projector and
    /// head from `head_file` ([`crate::HEAD_FILE`]). Everything is frozen. Errors name the file
    /// and the missing or mis-shaped tensor.
    pub fn load(backbone: Teacher, head_file: &Path, device: Device) -> Result<Self> {
        let arch = backbone.model().name().to_string();
        let num_classes = backbone.model().num_classes();
        let ckpt = checkpoint::load(head_file)?;
        let meta = &ckpt.meta;
        if meta["kind"] != "kd3_head" {
            return Err(KdError::file(head_file, "not a KD³ head file (metadata kind)"));
        }
        let c_s = meta_i64(head_file, meta, "student_channels")?;
        let c_t = meta_i64(head_file, meta, "teacher_channels")?;
        let factor = meta_i64(head_file, meta, "projector_factor")?;
        let geometry = Geometry {
            student_stride: meta_i64(head_file, meta, "student_stride")?,
            teacher_stride: meta_i64(head_file, meta, "teacher_stride")?,
        };
        let (last_c, _) = backbone
            .model()
            .taps()
            .last()
            .map(|t| (t.channels, t.stride))
            .ok_or_else(|| KdError::invalid(format!("{arch} has no feature taps")))?;
        if last_c != c_s {
            return Err(KdError::file(
                head_file,
                format!("the projector reads {c_s} channels but {arch}'s last map has {last_c}"),
            ));
        }
        let mut vs = VarStore::new(device);
        let projector = Projector::new(&(vs.root() / "projector"), c_s, c_t, factor)?;
        let vars: Vec<(String, Tensor)> = projector
            .named_tensors()
            .into_iter()
            .map(|(n, t)| (format!("projector.{n}"), t))
            .collect();
        checkpoint::copy_into(head_file, &ckpt, &vars)?;
        vs.freeze();
        let w = ckpt.get(head_file, "head.weight")?.to_device(device);
        let b = match meta["has_bias"].as_bool() {
            Some(false) => None,
            _ => Some(ckpt.get(head_file, "head.bias")?.to_device(device)),
        };
        if w.size() != [num_classes, c_t] {
            return Err(KdError::file(
                head_file,
                format!(
                    "head.weight has shape {:?}, expected [{}, {c_t}]",
                    w.size(),
                    num_classes
                ),
            ));
        }
        Ok(Self {
            name: format!("kd3_{arch}"),
            backbone,
            _vs: vs,
            projector,
            head: SharedHead::copy_of(&w, b.as_ref()),
            geometry,
        })
    }

    fn finish(&self, mut out: ModelOutput, last: &Tensor, train: bool) -> Result<ModelOutput> {
        let (p, logits) = shared_logits(self.geometry, &self.projector, &self.head, last, train)?;
        out.logits = logits;
        out.pooled = Some(crate::memorise::gap(&p));
        Ok(out)
    }
}

impl Model for Kd3Student {
    fn name(&self) -> &str {
        &self.name
    }

    /// `x [B, C_in, H, W]` → logits `[B, K]` through the projector and the copied head; the
    /// taps are the backbone's, `pooled` is the pooled projected map `[B, C_t]`.
    fn forward_t(&self, x: &Tensor, train: bool) -> ModelOutput {
        let out = self.backbone.model().forward_t(x, train);
        let last = out
            .last_feature()
            .map(Tensor::shallow_clone)
            .expect("zoo models always have taps");
        self.finish(out, &last, train)
            .expect("the projector was built for this backbone's last map")
    }

    fn forward_from(&self, tap: usize, h: &Tensor, train: bool) -> Result<ModelOutput> {
        let out = self.backbone.model().forward_from(tap, h, train)?;
        let last = match out.last_feature() {
            Ok(t) => t.shallow_clone(),
            Err(_) => h.shallow_clone(), // re-entered after the last tap
        };
        self.finish(out, &last, train)
    }

    fn taps(&self) -> &[Tap] {
        self.backbone.model().taps()
    }

    fn num_classes(&self) -> i64 {
        self.head.weight().size()[0]
    }

    fn in_channels(&self) -> i64 {
        self.backbone.model().in_channels()
    }

    /// The backbone's last map `[B, C_s, H, W]` → logits `[B, K]` (projector in eval mode).
    fn classify(&self, last_map: &Tensor) -> Result<Tensor> {
        Ok(shared_logits(self.geometry, &self.projector, &self.head, last_map, false)?.1)
    }

    fn linear_head(&self) -> Option<(Tensor, Option<Tensor>)> {
        None
    }
}
