//! Whole-image and sliding-window inference.
//!
//! Segmentation nets are trained on crops but evaluated on full images. When a full image fits,
//! one forward pass over it is exact (the paper's Cityscapes protocol: 2048×1024, single scale).
//! When it does not fit in memory, or a net should see inputs of its training size, MMSeg-style
//! sliding windows cover the image with overlapping crops, run each, and average the logits of
//! every pixel over the windows that saw it.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use kd_core::models::Model;
use kd_core::{KdError, Result};

/// How a segmentation net is run on a full image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum Inference {
    /// One forward pass over the whole image.
    #[default]
    Whole,
    /// Windows of `crop` `[h, w]` every `stride` `[h, w]` pixels; the last window of each row
    /// and column is aligned with the image border, so every pixel is covered.
    Slide {
        /// Window size `[h, w]` in pixels.
        crop: [i64; 2],
        /// Step between windows `[h, w]` in pixels.
        stride: [i64; 2],
    },
}

/// Window offsets along one axis of length `len`: `0, stride, 2·stride, …`, with the last
/// window ending exactly at `len` (one window at 0 when `crop ≥ len`).
fn offsets(len: i64, crop: i64, stride: i64) -> Vec<i64> {
    if crop >= len {
        return vec![0];
    }
    let n = (len - crop + stride - 1) / stride + 1;
    (0..n).map(|i| (i * stride).min(len - crop)).collect()
}

impl Inference {
    /// Fails on a non-positive window or stride, naming the key.
    pub fn validate(&self) -> Result<()> {
        if let Inference::Slide { crop, stride } = self {
            if crop.iter().chain(stride).any(|&v| v <= 0) {
                return Err(KdError::invalid(format!(
                    "inference: crop {crop:?} and stride {stride:?} must be positive"
                )));
            }
        }
        Ok(())
    }

    /// The logits `[B, K, H, W]` of `net` (eval mode, no gradients) on `x` `[B, C, H, W]`.
    pub fn logits(&self, net: &dyn Model, x: &Tensor) -> Result<Tensor> {
        self.validate()?;
        net.check_input(x)?;
        Ok(tch::no_grad(|| match *self {
            Inference::Whole => net.forward_t(x, false).logits,
            Inference::Slide { crop, stride } => {
                let s = x.size();
                let (h, w) = (s[2], s[3]);
                let sum = Tensor::zeros([s[0], net.num_classes(), h, w], (Kind::Float, x.device()));
                let count = Tensor::zeros([1, 1, h, w], (Kind::Float, x.device()));
                let (ch, cw) = (crop[0].min(h), crop[1].min(w));
                for y0 in offsets(h, ch, stride[0]) {
                    for x0 in offsets(w, cw, stride[1]) {
                        let win = x.narrow(2, y0, ch).narrow(3, x0, cw);
                        let out = net.forward_t(&win, false).logits.to_kind(Kind::Float);
                        let mut dst = sum.narrow(2, y0, ch).narrow(3, x0, cw);
                        dst += out;
                        let mut c = count.narrow(2, y0, ch).narrow(3, x0, cw);
                        c += 1.0;
                    }
                }
                sum / count
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{build, SegNetConfig};
    use tch::{nn, Device};

    #[test]
    fn windows_cover_every_pixel_and_end_at_the_border() {
        assert_eq!(offsets(10, 4, 3), vec![0, 3, 6]);
        assert_eq!(offsets(10, 4, 4), vec![0, 4, 6]);
        assert_eq!(offsets(4, 8, 2), vec![0]);
        for (len, crop, stride) in [(17, 5, 3), (64, 32, 21), (9, 9, 1)] {
            let mut seen = vec![false; len as usize];
            for o in offsets(len, crop, stride) {
                assert!(o + crop <= len);
                for i in o..o + crop {
                    seen[i as usize] = true;
                }
            }
            assert!(seen.iter().all(|&s| s), "{len} {crop} {stride}");
        }
    }

    #[test]
    fn one_window_over_the_whole_image_is_whole_image_inference_and_bad_windows_are_errors() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = SegNetConfig {
            aux_channels: 0,
            ..SegNetConfig::pspnet_r18(5).with_width(4)
        };
        let net = build(&vs.root(), &cfg).unwrap();
        let x = Tensor::randn([1, 3, 24, 32], (Kind::Float, Device::Cpu));
        let whole = Inference::Whole.logits(&net, &x).unwrap();
        let one = Inference::Slide {
            crop: [64, 64],
            stride: [32, 32],
        }
        .logits(&net, &x)
        .unwrap();
        assert!(whole.allclose(&one, 1e-5, 1e-6, false));
        let slid = Inference::Slide {
            crop: [16, 16],
            stride: [8, 8],
        }
        .logits(&net, &x)
        .unwrap();
        assert_eq!(slid.size(), [1, 5, 24, 32]);
        // Overlapping windows see less context than the whole image, so the logits differ.
        assert!(!whole.allclose(&slid, 1e-5, 1e-6, false));
        let bad = Inference::Slide {
            crop: [0, 16],
            stride: [8, 8],
        };
        assert!(bad.logits(&net, &x).unwrap_err().to_string().contains("crop"));
    }
}
