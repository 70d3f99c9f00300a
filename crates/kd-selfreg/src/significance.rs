//! Significance: how often each sample took part while the teacher learned, and the subset
//! `D_sig` of samples that ever did.
//!
//! The significance vector is the hand-off between the two stages, so it is a file: written
//! next to the teacher's weights when the teacher finishes, and read by any later distillation
//! run, which therefore never retrains the teacher. The file is safetensors (`counts` as i64,
//! `significance` as f32) with the normalisation and the number of counting epochs in its
//! metadata, so it can be checked against the data it is used with.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use kd_core::io::checkpoint;
use kd_core::{KdError, Result};

/// File name of the significance vector, next to the teacher weights.
pub const SIGNIFICANCE_FILE: &str = "significance.safetensors";

/// How participation counts `n_i` become significance `s_i`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignificanceNorm {
    /// `s_i = n_i / E_counted`, in `[0, 1]` (the default reconstruction).
    #[default]
    CountingEpochs,
    /// `s_i = n_i / max_j n_j`, in `[0, 1]`.
    Max,
    /// `s_i = n_i`, the raw count.
    Raw,
}

/// Per-sample significance of a training set of `N` samples.
#[derive(Clone, Debug, PartialEq)]
pub struct Significance {
    counts: Vec<i64>,
    values: Vec<f32>,
    counting_epochs: usize,
    norm: SignificanceNorm,
    source: Option<PathBuf>,
}

impl Significance {
    /// Significance from participation counts gathered over `counting_epochs` epochs. Fails
    /// on a negative count, on a count above `counting_epochs`, or on zero counting epochs with
    /// [`SignificanceNorm::CountingEpochs`].
    pub fn from_counts(counts: Vec<i64>, counting_epochs: usize, norm: SignificanceNorm) -> Result<Self> {
        if let Some((i, &c)) = counts
            .iter()
            .enumerate()
            .find(|(_, &c)| c < 0 || c > counting_epochs as i64)
        {
            return Err(KdError::invalid(format!(
                "significance: sample {i} has {c} participations, outside [0, {counting_epochs}] \
                 (one per counting epoch at most)"
            )));
        }
        let values: Vec<f32> = match norm {
            SignificanceNorm::CountingEpochs => {
                if counting_epochs == 0 {
                    return Err(KdError::invalid(
                        "significance: no counting epoch (counting_start must be below the number \
                         of teacher epochs)",
                    ));
                }
                let e = counting_epochs as f64;
                counts.iter().map(|&c| (c as f64 / e) as f32).collect()
            }
            SignificanceNorm::Max => {
                let max = counts.iter().copied().max().unwrap_or(0).max(1) as f64;
                counts.iter().map(|&c| (c as f64 / max) as f32).collect()
            }
            SignificanceNorm::Raw => counts.iter().map(|&c| c as f32).collect(),
        };
        Ok(Self {
            counts,
            values,
            counting_epochs,
            norm,
            source: None,
        })
    }

    /// Number of samples N.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True for an empty training set.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// `s_i` for every sample, indexed by dataset index.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// The participation counts `n_i`.
    pub fn counts(&self) -> &[i64] {
        &self.counts
    }

    /// Epochs the counts were gathered over.
    pub fn counting_epochs(&self) -> usize {
        self.counting_epochs
    }

    /// The normalisation.
    pub fn norm(&self) -> SignificanceNorm {
        self.norm
    }

    /// The file this was loaded from, if any (for error messages).
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// `D_sig = {i : s_i > s_min}`, in increasing index order: the samples distillation keeps.
    pub fn subset(&self, s_min: f64) -> Vec<usize> {
        self.values
            .iter()
            .enumerate()
            .filter(|(_, &s)| f64::from(s) > s_min)
            .map(|(i, _)| i)
            .collect()
    }

    /// The significance of a batch: `s[index]` as `[B]` f32 on `index`'s device. `index`:
    /// `[B]` Int64 dataset indices in `[0, N)`.
    pub fn gather(&self, index: &Tensor) -> Result<Tensor> {
        if index.dim() != 1 {
            return Err(KdError::BadShape {
                op: "Significance::gather".into(),
                name: "index".into(),
                shape: index.size(),
                expected: "[B]".into(),
            });
        }
        let cpu = index.to_device(tch::Device::Cpu).to_kind(Kind::Int64);
        if index.size()[0] > 0 {
            let (lo, hi) = (cpu.min().int64_value(&[]), cpu.max().int64_value(&[]));
            if lo < 0 || hi >= self.len() as i64 {
                return Err(KdError::invalid(format!(
                    "significance{}: sample index {} out of range for {} samples; was it computed \
                     on another training set?",
                    self.source
                        .as_ref()
                        .map_or(String::new(), |p| format!(" from {}", p.display())),
                    if lo < 0 { lo } else { hi },
                    self.len()
                )));
            }
        }
        let s = Tensor::from_slice(&self.values);
        Ok(s.index_select(0, &cpu).to_device(index.device()))
    }

    /// Fails unless this vector covers exactly `n` samples; the message names the file.
    pub fn check_len(&self, n: usize) -> Result<()> {
        if self.len() == n {
            return Ok(());
        }
        let msg = format!(
            "the significance vector covers {} samples but the training set has {n}; it belongs \
             to another training set",
            self.len()
        );
        Err(match &self.source {
            Some(p) => KdError::file(p, msg),
            None => KdError::invalid(msg),
        })
    }

    /// Writes the vector to `path` (safetensors, atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        let meta = serde_json::json!({
            "kind": "significance",
            "counting_epochs": self.counting_epochs,
            "norm": self.norm,
            "samples": self.len(),
        });
        let tensors = vec![
            ("counts".to_string(), Tensor::from_slice(&self.counts)),
            ("significance".to_string(), Tensor::from_slice(&self.values)),
        ];
        checkpoint::save(path, &tensors, &meta)
    }

    /// Reads a vector written by [`Significance::save`]; errors name the file. In a
    /// data-parallel group every rank calls it and gets rank 0's file
    /// ([`kd_core::dist::read_shared`]), so the ranks need not share a disk.
    pub fn load(path: &Path) -> Result<Self> {
        let ckpt = checkpoint::from_bytes(path, &kd_core::dist::read_shared(path)?)?;
        if ckpt.meta["kind"] != "significance" {
            return Err(KdError::file(
                path,
                "not a significance file (metadata kind is not \"significance\")",
            ));
        }
        let epochs = ckpt.meta["counting_epochs"]
            .as_u64()
            .ok_or_else(|| KdError::file(path, "metadata lacks counting_epochs"))?;
        let norm: SignificanceNorm = serde_json::from_value(ckpt.meta["norm"].clone())
            .map_err(|e| KdError::file(path, format!("metadata norm: {e}")))?;
        let counts = ckpt.get(path, "counts")?;
        if counts.dim() != 1 || counts.kind() != Kind::Int64 {
            return Err(KdError::file(
                path,
                format!(
                    "counts must be a [N] i64 tensor, got {:?} {:?}",
                    counts.size(),
                    counts.kind()
                ),
            ));
        }
        let counts = Vec::<i64>::try_from(counts).map_err(|e| KdError::file(path, e))?;
        let mut s = Self::from_counts(counts, epochs as usize, norm).map_err(|e| KdError::file(path, e))?;
        s.source = Some(path.to_path_buf());
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_zero_iff_never_participated_and_subset() {
        let s = Significance::from_counts(vec![0, 1, 4, 2, 0], 4, SignificanceNorm::CountingEpochs).unwrap();
        assert!(s.values().iter().all(|&v| (0.0..=1.0).contains(&v)));
        for (c, v) in s.counts().iter().zip(s.values()) {
            assert_eq!(*c == 0, *v == 0.0);
        }
        assert_eq!(s.values(), [0.0, 0.25, 1.0, 0.5, 0.0]);
        assert_eq!(s.subset(0.0), [1, 2, 3]);
        assert_eq!(s.subset(0.25), [2, 3]);
        let m = Significance::from_counts(vec![0, 1, 2], 4, SignificanceNorm::Max).unwrap();
        assert_eq!(m.values(), [0.0, 0.5, 1.0]);
        let r = Significance::from_counts(vec![0, 3], 4, SignificanceNorm::Raw).unwrap();
        assert_eq!(r.values(), [0.0, 3.0]);
    }

    #[test]
    fn bad_counts_are_errors() {
        assert!(Significance::from_counts(vec![5], 4, SignificanceNorm::CountingEpochs).is_err());
        assert!(Significance::from_counts(vec![-1], 4, SignificanceNorm::Raw).is_err());
        assert!(Significance::from_counts(vec![0], 0, SignificanceNorm::CountingEpochs).is_err());
    }

    #[test]
    fn file_round_trip_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SIGNIFICANCE_FILE);
        let s = Significance::from_counts(vec![0, 2, 1], 2, SignificanceNorm::CountingEpochs).unwrap();
        s.save(&path).unwrap();
        let back = Significance::load(&path).unwrap();
        assert_eq!(back.values(), s.values());
        assert_eq!(back.counts(), s.counts());
        assert_eq!(back.source(), Some(path.as_path()));
        let msg = back.check_len(4).unwrap_err().to_string();
        assert!(
            msg.contains(SIGNIFICANCE_FILE) && msg.contains("3 samples"),
            "{msg}"
        );
        let g = back.gather(&Tensor::from_slice(&[2i64, 1, 1])).unwrap();
        assert_eq!(Vec::<f32>::try_from(g).unwrap(), [0.5, 1.0, 1.0]);
        assert!(back.gather(&Tensor::from_slice(&[3i64])).is_err());

        let other = dir.path().join("weights.safetensors");
        checkpoint::save(
            &other,
            &[("w".into(), Tensor::zeros([2], (Kind::Float, tch::Device::Cpu)))],
            &serde_json::json!({"kind": "student"}),
        )
        .unwrap();
        let msg = Significance::load(&other).unwrap_err().to_string();
        assert!(
            msg.contains("weights.safetensors") && msg.contains("not a significance file"),
            "{msg}"
        );
    }
}
