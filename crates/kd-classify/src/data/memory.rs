//! A dataset held entirely in memory as `u8` pixels.
//!
//! Every loader (IDX, CIFAR, image folders, the embedded subset) ends here: the small
//! classification sets used for distillation fit in memory many times over, and keeping the
//! pixels as bytes (four times smaller than `f32`) makes `get` a cheap copy-and-scale, so batch
//! building never waits on disk or a decoder.

use crate::data::{Dataset, Image, Sample};
use kd_core::{KdError, Result};

/// Images stored as `u8` in `N×C×H×W` order, with one label per image.
#[derive(Clone, Debug, PartialEq)]
pub struct InMemoryDataset {
    pixels: Vec<u8>,
    labels: Vec<i64>,
    shape: [usize; 3],
    num_classes: usize,
    name: String,
    class_names: Vec<String>,
}

impl InMemoryDataset {
    /// Builds a dataset from raw parts, checking that they agree.
    ///
    /// `pixels` holds `labels.len()` images of `shape = [C, H, W]` in CHW order; a label is
    /// either `-1` (unlabelled) or in `0..num_classes`.
    pub fn from_parts(
        name: impl Into<String>,
        shape: [usize; 3],
        pixels: Vec<u8>,
        labels: Vec<i64>,
        num_classes: usize,
    ) -> Result<Self> {
        let name = name.into();
        let [c, h, w] = shape;
        if c == 0 || h == 0 || w == 0 {
            return Err(KdError::invalid(format!(
                "dataset {name}: image shape {shape:?} has a zero dimension"
            )));
        }
        let per_image = c * h * w;
        let expected = labels.len() * per_image;
        if pixels.len() != expected {
            return Err(KdError::invalid(format!(
                "dataset {name}: {} labels of {c}×{h}×{w} images need {expected} pixel bytes, got {}",
                labels.len(),
                pixels.len()
            )));
        }
        if let Some((i, &y)) = labels
            .iter()
            .enumerate()
            .find(|(_, &y)| y < -1 || y >= num_classes as i64)
        {
            return Err(KdError::invalid(format!(
                "dataset {name}: label {y} of sample {i} is outside 0..{num_classes} (or -1 for unlabelled)"
            )));
        }
        Ok(Self {
            pixels,
            labels,
            shape,
            num_classes,
            name,
            class_names: Vec::new(),
        })
    }

    /// Attaches human-readable class names (index = label). Fails unless there is one name per
    /// class.
    pub fn with_class_names(mut self, names: Vec<String>) -> Result<Self> {
        if names.len() != self.num_classes {
            return Err(KdError::invalid(format!(
                "dataset {}: {} class names given for {} classes",
                self.name,
                names.len(),
                self.num_classes
            )));
        }
        self.class_names = names;
        Ok(self)
    }

    /// Renames the dataset (the name shows in logs and result rows).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The class names, empty when unknown.
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// All pixels, `N×C×H×W` bytes.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// All labels, one per image.
    pub fn labels(&self) -> &[i64] {
        &self.labels
    }

    /// The raw bytes of image `index` (CHW). Panics when `index >= len()`.
    pub fn image_bytes(&self, index: usize) -> &[u8] {
        let n = self.shape.iter().product::<usize>();
        &self.pixels[index * n..(index + 1) * n]
    }

    /// Number of samples per class (`num_classes` entries; unlabelled samples are not counted).
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes];
        for &y in &self.labels {
            if y >= 0 {
                counts[y as usize] += 1;
            }
        }
        counts
    }

    /// A new dataset holding the samples at `indices`, in that order.
    ///
    /// The samples are **re-numbered** `0..indices.len()`: sample `i` of the result is sample
    /// `indices[i]` of `self`, and that is the index its [`Sample`] and batches carry. Keep
    /// `indices` to map back. Repeated indices are allowed and give repeated samples. Name,
    /// class count and class names are kept.
    ///
    /// # Panics
    /// When an index is `>= len()`.
    pub fn subset(&self, indices: &[usize]) -> InMemoryDataset {
        let n = self.labels.len();
        let mut pixels = Vec::with_capacity(indices.len() * self.shape.iter().product::<usize>());
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            assert!(
                i < n,
                "subset of {}: index {i} out of range for {n} samples",
                self.name
            );
            pixels.extend_from_slice(self.image_bytes(i));
            labels.push(self.labels[i]);
        }
        InMemoryDataset {
            pixels,
            labels,
            shape: self.shape,
            num_classes: self.num_classes,
            name: self.name.clone(),
            class_names: self.class_names.clone(),
        }
    }
}

impl Dataset for InMemoryDataset {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        if index >= self.labels.len() {
            return Err(KdError::invalid(format!(
                "dataset {}: index {index} out of range for {} samples",
                self.name,
                self.labels.len()
            )));
        }
        let [c, h, w] = self.shape;
        let data = self
            .image_bytes(index)
            .iter()
            .map(|&p| f32::from(p) / 255.0)
            .collect();
        Ok(Sample {
            image: Image { c, h, w, data },
            label: self.labels[index],
            index,
        })
    }

    fn num_classes(&self) -> usize {
        self.num_classes
    }

    fn shape(&self) -> [usize; 3] {
        self.shape
    }

    fn name(&self) -> String {
        self.name.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> InMemoryDataset {
        // 3 images of 1×1×2.
        InMemoryDataset::from_parts("tiny", [1, 1, 2], vec![0, 255, 10, 20, 30, 40], vec![0, 1, 1], 2)
            .unwrap()
    }

    #[test]
    fn get_scales_to_unit_range() {
        let s = tiny().get(0).unwrap();
        assert_eq!(s.image.data, vec![0.0, 1.0]);
        assert_eq!((s.label, s.index), (0, 0));
        assert!(tiny().get(3).is_err());
    }

    #[test]
    fn from_parts_validates() {
        let e = InMemoryDataset::from_parts("d", [1, 2, 2], vec![0; 7], vec![0, 0], 1).unwrap_err();
        assert!(e.to_string().contains("need 8 pixel bytes, got 7"), "{e}");
        let e = InMemoryDataset::from_parts("d", [1, 1, 1], vec![0; 2], vec![0, 3], 3).unwrap_err();
        assert!(e.to_string().contains("label 3 of sample 1"), "{e}");
        assert!(InMemoryDataset::from_parts("d", [1, 1, 1], vec![0; 2], vec![-1, -1], 0).is_ok());
    }

    #[test]
    fn subset_renumbers() {
        let s = tiny().subset(&[2, 0, 2]);
        assert_eq!(s.len(), 3);
        assert_eq!(s.labels(), &[1, 0, 1]);
        let last = s.get(2).unwrap();
        assert_eq!(last.index, 2);
        assert_eq!(s.image_bytes(0), &[30, 40]);
        assert_eq!(s.class_counts(), vec![1, 2]);
    }
}
