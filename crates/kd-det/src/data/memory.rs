//! Decode once, keep in memory.
//!
//! [`CocoDataset`] decodes lazily because real COCO does not fit in memory. The synthetic set
//! (about 1400 images of ~150×120) takes a few tens of MB, and decoding its PNGs in every epoch
//! would sit on the training loop's critical path; [`InMemoryDet`] decodes every image once, in
//! parallel, and serves clones.

use image::RgbImage;
use rayon::prelude::*;

use super::{CocoDataset, DetSource};
use kd_core::{KdError, Result};

/// A [`CocoDataset`] with every image decoded once and held in memory.
#[derive(Clone, Debug)]
pub struct InMemoryDet {
    coco: CocoDataset,
    images: Vec<RgbImage>,
}

impl InMemoryDet {
    /// Decodes every image of `coco` in parallel; the first failing image's error is returned.
    pub fn load(coco: CocoDataset) -> Result<Self> {
        let images = (0..coco.len())
            .into_par_iter()
            .map(|i| coco.decode(i))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { coco, images })
    }

    /// Bytes held by the pixels.
    pub fn bytes(&self) -> usize {
        self.images.iter().map(|i| i.as_raw().len()).sum()
    }
}

impl DetSource for InMemoryDet {
    fn coco(&self) -> &CocoDataset {
        &self.coco
    }

    fn image(&self, index: usize) -> Result<RgbImage> {
        self.images.get(index).cloned().ok_or_else(|| {
            KdError::invalid(format!(
                "image {index} out of range for {} ({} images)",
                self.coco.name(),
                self.images.len()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{generate_synthetic_coco, open_coco_root, DetSynthConfig};

    #[test]
    fn holds_exactly_what_the_files_decode() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("s");
        generate_synthetic_coco(&root, &DetSynthConfig::tiny()).unwrap();
        let lazy = open_coco_root(&root, "val2017").unwrap();
        let mem = InMemoryDet::load(lazy.clone()).unwrap();
        assert_eq!(mem.len(), lazy.len());
        let mut bytes = 0;
        for i in 0..lazy.len() {
            let img = lazy.image(i).unwrap();
            bytes += img.as_raw().len();
            assert_eq!(mem.image(i).unwrap(), img);
        }
        assert_eq!(mem.bytes(), bytes);
        assert!(mem
            .image(lazy.len())
            .unwrap_err()
            .to_string()
            .contains("out of range"));
        // A missing file surfaces when loading, naming it.
        std::fs::remove_file(lazy.image_path(1).unwrap()).unwrap();
        let e = InMemoryDet::load(lazy.clone()).unwrap_err().to_string();
        assert!(e.contains(&lazy.images()[1].file_name), "{e}");
    }
}
