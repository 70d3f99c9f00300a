//! Decode once, keep in memory.
//!
//! [`super::SegDataset`] decodes lazily because real Cityscapes does not fit in memory at full
//! size. A small or down-scaled set does, and then decoding (and resizing) every image in every
//! epoch is wasted work that sits on the training loop's critical path. [`InMemorySeg`] decodes
//! every sample once, in parallel, and serves clones.

use rayon::prelude::*;

use super::{SegSample, SegSource};
use kd_core::Result;

/// Every sample of a [`SegSource`], decoded once and held in memory.
pub struct InMemorySeg {
    samples: Vec<SegSample>,
    names: Vec<String>,
    name: String,
    classes: usize,
}

impl InMemorySeg {
    /// Decodes all of `source` in parallel; the first failing sample's error is returned.
    pub fn load(source: &dyn SegSource) -> Result<Self> {
        let samples = (0..source.len())
            .into_par_iter()
            .map(|i| source.get(i))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            names: (0..source.len()).map(|i| source.sample_name(i)).collect(),
            samples,
            name: source.name(),
            classes: source.num_classes(),
        })
    }

    /// Bytes held by the pixels (images and label maps).
    pub fn bytes(&self) -> usize {
        self.samples
            .iter()
            .map(|s| s.image.as_raw().len() + s.label.as_raw().len())
            .sum()
    }
}

impl SegSource for InMemorySeg {
    fn len(&self) -> usize {
        self.samples.len()
    }

    fn get(&self, index: usize) -> Result<SegSample> {
        self.samples.get(index).cloned().ok_or_else(|| {
            kd_core::KdError::invalid(format!(
                "{}: sample {index} out of range for {} samples",
                self.name,
                self.samples.len()
            ))
        })
    }

    fn name(&self) -> String {
        self.name.clone()
    }

    fn sample_name(&self, index: usize) -> String {
        self.names
            .get(index)
            .cloned()
            .unwrap_or_else(|| format!("{index:06}"))
    }

    fn num_classes(&self) -> usize {
        self.classes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{GrayImage, RgbImage};

    struct Toy;
    impl SegSource for Toy {
        fn len(&self) -> usize {
            3
        }
        fn get(&self, index: usize) -> Result<SegSample> {
            Ok(SegSample {
                image: RgbImage::from_pixel(4, 2, image::Rgb([index as u8, 1, 2])),
                label: GrayImage::from_pixel(4, 2, image::Luma([index as u8])),
                index,
            })
        }
        fn name(&self) -> String {
            "toy".into()
        }
        fn sample_name(&self, index: usize) -> String {
            format!("s{index}")
        }
    }

    #[test]
    fn holds_exactly_what_the_source_decodes() {
        let m = InMemorySeg::load(&Toy).unwrap();
        assert_eq!(
            (m.len(), m.name(), m.bytes()),
            (3, "toy".to_string(), 3 * (24 + 8))
        );
        for i in 0..3 {
            assert_eq!(m.get(i).unwrap(), Toy.get(i).unwrap());
            assert_eq!(m.sample_name(i), format!("s{i}"));
        }
        assert!(m.get(3).unwrap_err().to_string().contains("out of range"));
    }
}
