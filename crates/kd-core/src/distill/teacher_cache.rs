//! Teacher outputs computed once for the whole training set.
//!
//! A frozen teacher in eval mode maps each input to the same output every time. When the
//! training loader does not augment at random (no crop, no flip), every epoch, every row and
//! every student seed of a table feeds the teacher the very same inputs, so its forward pass,
//! often the larger network's, is pure repetition. The cache runs it once and serves each batch
//! by gathering rows. It refuses to serve a loader that augments, and it is not built when it
//! would exceed a memory budget, so it never changes what is computed, only how often.

use tch::{Device, Kind, Tensor};

use crate::data::BatchSource;
use crate::error::{KdError, Result};
use crate::models::{Model, ModelOutput};

/// Every training sample's teacher output: logits, auxiliary logits, taps, pooled embedding and
/// head outputs, each `[N, ...]`.
#[derive(Debug)]
pub struct TeacherCache {
    logits: Tensor,
    aux_logits: Option<Tensor>,
    features: Vec<(String, Tensor)>,
    pooled: Option<Tensor>,
    heads: Vec<(String, Tensor)>,
    n: usize,
    bytes: usize,
}

impl TeacherCache {
    /// Runs `teacher` (eval mode, no gradients) over every sample of `loader`'s dataset, in
    /// batches of `batch` on `device`. Returns `None` when the loader augments at random or the
    /// outputs would take more than `max_bytes`.
    pub fn build(
        teacher: &dyn Model,
        loader: &dyn BatchSource,
        device: Device,
        batch: usize,
        max_bytes: usize,
    ) -> Result<Option<Self>> {
        if loader.augments_at_random() || batch == 0 {
            return Ok(None);
        }
        let n = loader.len();
        if n == 0 {
            return Ok(None);
        }
        let first = loader.batch_of(&[0], 0, false)?.x.to(device);
        let probe = tch::no_grad(|| teacher.forward_t(&first, false));
        let per_sample: usize = output_tensors(&probe).iter().map(|t| t.numel() * 4).sum();
        let bytes = per_sample.saturating_mul(n);
        if bytes > max_bytes {
            return Ok(None);
        }
        let mut parts: Vec<ModelOutput> = Vec::new();
        let all: Vec<usize> = (0..n).collect();
        for chunk in all.chunks(batch) {
            let b = loader.batch_of(chunk, 0, false)?;
            let out = tch::no_grad(|| teacher.forward_t(&b.x.to(device), false));
            parts.push(ModelOutput {
                logits: out.logits.to_kind(Kind::Float),
                aux_logits: out.aux_logits.map(|a| a.to_kind(Kind::Float)),
                features: out
                    .features
                    .into_iter()
                    .map(|(k, v)| (k, v.to_kind(Kind::Float)))
                    .collect(),
                pooled: out.pooled.map(|p| p.to_kind(Kind::Float)),
                heads: out
                    .heads
                    .into_iter()
                    .map(|(k, v)| (k, v.to_kind(Kind::Float)))
                    .collect(),
            });
        }
        let cat = |f: &dyn Fn(&ModelOutput) -> Tensor| -> Tensor {
            let ts: Vec<Tensor> = parts.iter().map(f).collect();
            Tensor::cat(&ts, 0)
        };
        let logits = cat(&|o| o.logits.shallow_clone());
        let features = probe
            .features
            .iter()
            .enumerate()
            .map(|(i, (name, _))| (name.clone(), cat(&|o| o.features[i].1.shallow_clone())))
            .collect();
        let heads = probe
            .heads
            .iter()
            .enumerate()
            .map(|(i, (name, _))| (name.clone(), cat(&|o| o.heads[i].1.shallow_clone())))
            .collect();
        let pooled = probe
            .pooled
            .as_ref()
            .map(|_| cat(&|o| o.pooled.as_ref().expect("every batch has pooled").shallow_clone()));
        let aux_logits = probe.aux_logits.as_ref().map(|_| {
            cat(&|o| {
                o.aux_logits
                    .as_ref()
                    .expect("every batch has aux logits")
                    .shallow_clone()
            })
        });
        Ok(Some(TeacherCache {
            logits,
            aux_logits,
            features,
            pooled,
            heads,
            n,
            bytes,
        }))
    }

    /// Number of cached samples.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether the cache holds no sample.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Memory held, in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether the cache may stand in for the teacher on `loader`'s batches: same dataset size
    /// and no random augmentation.
    pub fn serves(&self, loader: &dyn BatchSource) -> bool {
        !loader.augments_at_random() && loader.len() == self.n
    }

    /// The teacher outputs of the samples `index` (`[B]`, int64 dataset indices), on the
    /// device of `index`.
    pub fn get(&self, index: &Tensor) -> Result<ModelOutput> {
        let idx = index.to(self.logits.device()).to_kind(Kind::Int64);
        if idx.dim() != 1 || idx.numel() == 0 {
            return Err(KdError::invalid(format!(
                "teacher cache lookup needs a non-empty [B] index, got {:?}",
                idx.size()
            )));
        }
        let (lo, hi) = (idx.min().int64_value(&[]), idx.max().int64_value(&[]));
        if lo < 0 || hi >= self.n as i64 {
            return Err(KdError::invalid(format!(
                "teacher cache holds samples 0..{}, asked for indices {lo}..={hi}",
                self.n
            )));
        }
        let dev = index.device();
        let pick = |t: &Tensor| t.index_select(0, &idx).to(dev);
        Ok(ModelOutput {
            logits: pick(&self.logits),
            aux_logits: self.aux_logits.as_ref().map(pick),
            features: self.features.iter().map(|(k, v)| (k.clone(), pick(v))).collect(),
            pooled: self.pooled.as_ref().map(pick),
            heads: self.heads.iter().map(|(k, v)| (k.clone(), pick(v))).collect(),
        })
    }
}

fn output_tensors(o: &ModelOutput) -> Vec<&Tensor> {
    let mut v = vec![&o.logits];
    v.extend(o.aux_logits.as_ref());
    v.extend(o.features.iter().map(|(_, t)| t));
    v.extend(o.pooled.as_ref());
    v.extend(o.heads.iter().map(|(_, t)| t));
    v
}
