//! Checkpoints: one safetensors file with the tensors and a JSON metadata string.
//!
//! Nothing may be lost: a checkpoint is serialised in memory, written to a temporary file in the
//! destination folder, flushed, and renamed over the old one. A crash leaves either the old or
//! the new checkpoint, never a torn file. Corrupt or truncated files produce an error naming the
//! file instead of a libtorch exception.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use tch::{Kind, Tensor};

use super::write_atomic;
use crate::{KdError, Result};

/// Metadata key under which the JSON document is stored.
const META_KEY: &str = "kd_rs";

fn dtype_of(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        other => {
            return Err(KdError::invalid(format!(
                "cannot checkpoint tensors of kind {other:?}"
            )))
        }
    })
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        _ => return None,
    })
}

/// Writes `tensors` and the JSON `meta` to `path` atomically (temp file + rename).
pub fn save(path: &Path, tensors: &[(String, Tensor)], meta: &serde_json::Value) -> Result<()> {
    let mut raw: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.detach().to_device(tch::Device::Cpu).contiguous();
        let numel = t.numel();
        let mut bytes = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut bytes, numel)?;
        let shape = t.size().iter().map(|&d| d as usize).collect();
        raw.push((name.clone(), dtype_of(t.kind())?, shape, bytes));
    }
    let views: Vec<(String, TensorView<'_>)> = raw
        .iter()
        .map(|(n, d, s, b)| {
            TensorView::new(*d, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| KdError::invalid(format!("tensor {n}: {e}")))
        })
        .collect::<Result<_>>()?;
    let info: HashMap<String, String> = [(META_KEY.to_string(), meta.to_string())].into();
    let buf = safetensors::serialize(views, &Some(info)).map_err(|e| KdError::file(path, e))?;
    write_atomic(path, &buf)
}

/// A loaded checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    /// Named tensors, on the CPU.
    pub tensors: Vec<(String, Tensor)>,
    /// The JSON metadata written with them.
    pub meta: serde_json::Value,
}

impl Checkpoint {
    /// The tensor called `name`, or an error naming the file and the key.
    pub fn get(&self, path: &Path, name: &str) -> Result<&Tensor> {
        self.tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .ok_or_else(|| KdError::file(path, format!("checkpoint has no tensor {name:?}")))
    }
}

/// The JSON metadata of a safetensors file written by [`save`], read from its header alone
/// (the tensors are not read); `None` for a safetensors file without it. Errors name the file.
pub fn read_meta(path: &Path) -> Result<Option<serde_json::Value>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| KdError::file(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|e| KdError::file(path, format!("not a safetensors file (no header): {e}")))?;
    let len = u64::from_le_bytes(len);
    let size = f.metadata().map_err(|e| KdError::file(path, e))?.len();
    if len > size.saturating_sub(8) || len > 100 << 20 {
        return Err(KdError::file(
            path,
            format!("not a safetensors file (a {len}-byte header in a {size}-byte file)"),
        ));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).map_err(|e| KdError::file(path, e))?;
    let header: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| KdError::file(path, format!("not a safetensors file (header: {e})")))?;
    match header
        .get("__metadata__")
        .and_then(|m| m.get(META_KEY))
        .and_then(|v| v.as_str())
    {
        Some(s) => serde_json::from_str(s)
            .map(Some)
            .map_err(|e| KdError::file(path, format!("bad metadata: {e}"))),
        None => Ok(None),
    }
}

/// Reads a checkpoint written by [`save`] (or any safetensors file; `meta` is then `null`).
pub fn load(path: &Path) -> Result<Checkpoint> {
    let buf = std::fs::read(path).map_err(|e| KdError::file(path, format!("cannot read checkpoint: {e}")))?;
    from_bytes(path, &buf)
}

/// [`load`] from the file's bytes; `path` names it in errors.
pub fn from_bytes(path: &Path, buf: &[u8]) -> Result<Checkpoint> {
    let st = SafeTensors::deserialize(buf).map_err(|e| {
        KdError::file(
            path,
            format!("not a valid safetensors checkpoint (corrupt or truncated?): {e}"),
        )
    })?;
    let (_, header) = SafeTensors::read_metadata(buf).map_err(|e| KdError::file(path, e))?;
    let meta = match header.metadata().as_ref().and_then(|m| m.get(META_KEY)) {
        Some(s) => serde_json::from_str(s).map_err(|e| KdError::file(path, format!("bad metadata: {e}")))?,
        None => serde_json::Value::Null,
    };
    let mut tensors = Vec::new();
    for (name, view) in st.tensors() {
        let kind = kind_of(view.dtype()).ok_or_else(|| {
            KdError::file(
                path,
                format!("tensor {name}: unsupported dtype {:?}", view.dtype()),
            )
        })?;
        let shape: Vec<i64> = view
            .shape()
            .iter()
            .map(|&d| i64::try_from(d))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| {
                KdError::file(
                    path,
                    format!("tensor {name}: shape {:?} is too large", view.shape()),
                )
            })?;
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)
            .map_err(|e| KdError::file(path, format!("tensor {name}: {e}")))?;
        tensors.push((name, t));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Checkpoint { tensors, meta })
}

/// Copies checkpoint tensors into the variables of `vs` whose names start with `prefix`
/// (the prefix is stripped before lookup when `strip` is true). Every variable must be present
/// with the right shape; the error names the file, the key and both shapes.
pub fn copy_into(path: &Path, ckpt: &Checkpoint, vars: &[(String, Tensor)]) -> Result<()> {
    for (name, var) in vars {
        let src = ckpt.get(path, name)?;
        if src.size() != var.size() {
            return Err(KdError::file(
                path,
                format!(
                    "tensor {name:?} has shape {:?} but the model expects {:?}",
                    src.size(),
                    var.size()
                ),
            ));
        }
        let mut var = var.shallow_clone();
        tch::no_grad(|| var.copy_(src));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.safetensors");
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]);
        let b = Tensor::from_slice(&[7i64]);
        save(
            &path,
            &[("a".into(), a.shallow_clone()), ("b".into(), b)],
            &serde_json::json!({"epoch": 3}),
        )
        .unwrap();
        let c = load(&path).unwrap();
        assert_eq!(c.meta["epoch"], 3);
        assert_eq!(c.get(&path, "a").unwrap(), &a);
        assert_eq!(c.get(&path, "b").unwrap().int64_value(&[0]), 7);
        assert!(c.get(&path, "zzz").unwrap_err().to_string().contains("zzz"));
    }

    #[test]
    fn the_metadata_reads_from_the_header_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.safetensors");
        let t = Tensor::ones([1000], (Kind::Float, tch::Device::Cpu));
        save(&path, &[("a".into(), t)], &serde_json::json!({"task": "x"})).unwrap();
        // The tensor bytes may be cut: only the header is read.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 2000]).unwrap();
        assert_eq!(read_meta(&path).unwrap().unwrap()["task"], "x");
        let plain = dir.path().join("plain.safetensors");
        let view = TensorView::new(Dtype::F32, vec![1], &[0u8; 4]).unwrap();
        std::fs::write(&plain, safetensors::serialize([("a", view)], &None).unwrap()).unwrap();
        assert!(read_meta(&plain).unwrap().is_none());
        std::fs::write(&path, b"\xff\xff\xff\xff\xff\xff\xff\x7f{}").unwrap();
        let err = read_meta(&path).unwrap_err().to_string();
        assert!(
            err.contains("c.safetensors") && err.contains("not a safetensors file"),
            "{err}"
        );
    }

    #[test]
    fn truncated_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.safetensors");
        save(
            &path,
            &[("a".into(), Tensor::ones([64], (Kind::Float, tch::Device::Cpu)))],
            &serde_json::json!({}),
        )
        .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("c.safetensors") && err.contains("corrupt"), "{err}");
    }

    #[test]
    fn atomic_write_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bin");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
