//! Reading `torch.save` files without Python and without running anything from them.
//!
//! Two containers exist in the wild. Since torch 1.6 a checkpoint is a zip archive holding
//! `<name>/data.pkl` (the pickled object) and one uncompressed record per storage under
//! `<name>/data/<key>`. Before that (and with `_use_new_zipfile_serialization=False`, which
//! many CIFAR teachers were written with) it is a *legacy* stream: five pickles back to back —
//! a magic number, the protocol version, system info, the object, the list of storage keys —
//! followed by each storage as an 8-byte little-endian element count and its raw bytes.
//!
//! Both are decoded by [`pickle`], an allowlist-only pickle machine (see its docs for what is
//! refused), so reading a checkpoint can never execute code. No published crate fits this:
//! `serde-pickle` rejects the persistent ids that tensors are stored through, and the readers
//! in full tensor frameworks (candle's) would bring a second tensor library. Storage bytes are
//! copied straight into libtorch tensors; views into one storage share its bytes until they
//! are made contiguous.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

use tch::{Kind, Tensor};

use crate::{KdError, Result};

pub mod pickle;

use pickle::{StorageKind, StorageRef, TensorRef, Value};

/// The container a torch file came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Container {
    /// The zip archive of torch ≥ 1.6.
    Zip,
    /// The legacy stream of pickles.
    Legacy,
}

/// The largest tensor (bytes) a storage may be expanded to beyond 64 times its own size.
const MAX_EXPANDED_BYTES: usize = 1 << 30;

/// A decoded `torch.save` file: the pickled object and its storages, not yet turned into
/// tensors.
pub struct TorchFile {
    /// Which container it came in.
    pub container: Container,
    /// The top-level object.
    pub root: Value,
    storages: HashMap<String, (StorageKind, Vec<u8>)>,
}

impl std::fmt::Debug for TorchFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchFile")
            .field("container", &self.container)
            .field("storages", &self.storages.len())
            .finish()
    }
}

/// The legacy format's magic number, `0x1950a86a20f9469cfc6c`, as LONG1 bytes.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// `true` when `bytes` start like a torch file (zip archive or legacy pickle stream).
pub fn looks_like_torch(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"\x80\x02\x8a\x0a")
}

/// Reads the torch file at `path`.
pub fn read(path: &Path) -> Result<TorchFile> {
    let bytes = std::fs::read(path).map_err(|e| KdError::file(path, format!("cannot read: {e}")))?;
    decode(path, bytes)
}

/// Decodes the torch file `bytes`; `path` names it in errors.
pub fn decode(path: &Path, bytes: Vec<u8>) -> Result<TorchFile> {
    if bytes.starts_with(b"PK\x03\x04") {
        read_zip(path, bytes)
    } else if bytes.starts_with(b"\x80") {
        read_legacy(path, &bytes)
    } else if bytes.len() > 262 && &bytes[257..262] == b"ustar" {
        Err(KdError::file(
            path,
            "a tar-format torch file (torch < 0.4); load and re-save it with a newer torch",
        ))
    } else {
        Err(KdError::file(
            path,
            "not a torch.save file (neither a zip archive nor a pickle stream) nor a safetensors file",
        ))
    }
}

fn bad(path: &Path, msg: impl std::fmt::Display) -> KdError {
    KdError::file(path, msg)
}

/// A persistent id `('storage', StorageClass, key, location, numel[, view_metadata])`.
fn storage_of(pid: Value) -> std::result::Result<StorageRef, String> {
    let items = pid
        .items()
        .ok_or_else(|| format!("a persistent id that is {}, not a tuple", pid.describe()))?;
    if items.first().and_then(Value::as_str) != Some("storage") || items.len() < 5 {
        return Err(format!("an unknown persistent id ({})", pid.describe()));
    }
    let kind = match &items[1] {
        Value::Global(pickle::Known::StorageClass(k)) | Value::Global(pickle::Known::Dtype(k)) => *k,
        Value::Refused(name) => return Err(format!("a storage of the unknown type {name}")),
        other => return Err(format!("a storage whose type is {}", other.describe())),
    };
    let key = items[2]
        .as_str()
        .map(str::to_string)
        .or_else(|| items[2].as_int().map(|i| i.to_string()))
        .ok_or_else(|| format!("a storage key that is {}", items[2].describe()))?;
    let numel = items[4].as_int().unwrap_or(0).max(0) as u64;
    let view_offset = match items.get(5) {
        Some(Value::Tuple(v)) if v.len() >= 2 => v[1].as_int().unwrap_or(0).max(0) as u64,
        _ => 0,
    };
    Ok(StorageRef {
        key,
        kind,
        numel,
        view_offset,
    })
}

fn read_zip(path: &Path, bytes: Vec<u8>) -> Result<TorchFile> {
    let archive_len = bytes.len();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| bad(path, format!("not a readable zip archive (truncated?): {e}")))?;
    let pkl = (0..zip.len())
        .filter_map(|i| zip.by_index_raw(i).ok().map(|f| f.name().to_string()))
        .find(|n| n.ends_with("data.pkl") && n.matches('/').count() <= 1)
        .ok_or_else(|| bad(path, "a zip archive without data.pkl: not a torch.save file"))?;
    let prefix = pkl.strip_suffix("data.pkl").unwrap_or_default().to_string();
    let read_entry = |zip: &mut zip::ZipArchive<std::io::Cursor<Vec<u8>>>, name: &str| -> Result<Vec<u8>> {
        let mut f = zip
            .by_name(name)
            .map_err(|e| bad(path, format!("archive entry {name}: {e}")))?;
        // The declared size is only a hint: an entry cannot hold more than the archive.
        let mut out = Vec::with_capacity((f.size() as usize).min(archive_len));
        f.read_to_end(&mut out).map_err(|e| {
            bad(
                path,
                format!("archive entry {name} cannot be read (truncated?): {e}"),
            )
        })?;
        Ok(out)
    };
    if let Ok(order) = read_entry(&mut zip, &format!("{prefix}byteorder")) {
        if order.trim_ascii() != b"little" {
            return Err(bad(
                path,
                format!(
                    "written on a {} machine; only little-endian files are supported",
                    String::from_utf8_lossy(&order)
                ),
            ));
        }
    }
    let data = read_entry(&mut zip, &pkl)?;
    let mut refs: Vec<StorageRef> = Vec::new();
    let mut pos = 0;
    let root = pickle::unpickle(&data, &mut pos, &mut |pid| {
        let s = storage_of(pid)?;
        refs.push(s.clone());
        Ok(Value::Storage(s))
    })
    .map_err(|e| bad(path, format!("{pkl}: {e}")))?;
    let mut storages = HashMap::new();
    for s in refs {
        if storages.contains_key(&s.key) {
            continue;
        }
        let bytes = read_entry(&mut zip, &format!("{prefix}data/{}", s.key))?;
        storages.insert(s.key.clone(), (s.kind, bytes));
    }
    Ok(TorchFile {
        container: Container::Zip,
        root,
        storages,
    })
}

fn read_legacy(path: &Path, bytes: &[u8]) -> Result<TorchFile> {
    let mut pos = 0;
    let mut no_pid = |_: Value| Err("a persistent id outside the object pickle".to_string());
    let magic = pickle::unpickle(bytes, &mut pos, &mut no_pid)
        .map_err(|e| bad(path, format!("not a torch.save file: {e}")))?;
    if !matches!(&magic, Value::BigInt(b) if b[..] == LEGACY_MAGIC) {
        return Err(bad(
            path,
            format!(
                "a pickle, but not a torch.save file (it starts with {} instead of torch's magic number)",
                magic.describe()
            ),
        ));
    }
    let header = |pos: &mut usize, what: &str| {
        pickle::unpickle(bytes, pos, &mut |_| {
            Err("a persistent id in the header".to_string())
        })
        .map_err(|e| bad(path, format!("legacy {what}: {e}")))
    };
    let protocol = header(&mut pos, "protocol version")?;
    if protocol.as_int() != Some(1001) {
        return Err(bad(
            path,
            format!("legacy protocol version {} (expected 1001)", protocol.describe()),
        ));
    }
    let sys_info = header(&mut pos, "system info")?;
    if let Value::Dict(d) = &sys_info {
        let little = d
            .borrow()
            .iter()
            .find(|(k, _)| k.as_str() == Some("little_endian"))
            .map(|(_, v)| matches!(v, Value::Bool(true)));
        if little == Some(false) {
            return Err(bad(
                path,
                "written on a big-endian machine; only little-endian files are supported",
            ));
        }
    }
    let mut refs: HashMap<String, StorageRef> = HashMap::new();
    let root = pickle::unpickle(bytes, &mut pos, &mut |pid| {
        let s = storage_of(pid)?;
        refs.entry(s.key.clone()).or_insert_with(|| s.clone());
        Ok(Value::Storage(s))
    })
    .map_err(|e| bad(path, format!("the pickled object: {e}")))?;
    let keys = header(&mut pos, "storage key list")?;
    let keys: Vec<String> = keys
        .items()
        .ok_or_else(|| bad(path, "the legacy storage key list is not a list"))?
        .iter()
        .map(|k| {
            k.as_str()
                .map(str::to_string)
                .or_else(|| k.as_int().map(|i| i.to_string()))
        })
        .collect::<Option<_>>()
        .ok_or_else(|| bad(path, "the legacy storage key list holds a non-string key"))?;
    let mut storages = HashMap::new();
    for key in keys {
        let kind = refs
            .get(&key)
            .map(|s| s.kind)
            .ok_or_else(|| bad(path, format!("storage {key} is listed but never used")))?;
        let head = pos
            .checked_add(8)
            .and_then(|end| bytes.get(pos..end))
            .ok_or_else(|| bad(path, format!("the file ends before storage {key} (truncated?)")))?;
        let numel = u64::from_le_bytes(head.try_into().expect("8 bytes"));
        let n = usize::try_from(numel)
            .ok()
            .and_then(|n| n.checked_mul(kind.size()))
            .ok_or_else(|| bad(path, format!("storage {key} claims {numel} elements")))?;
        let start = pos + 8;
        let data = start.checked_add(n).and_then(|end| bytes.get(start..end)).ok_or_else(|| {
            bad(
                path,
                format!("the file ends inside storage {key} ({n} bytes from offset {start}, file has {}): truncated?", bytes.len()),
            )
        })?;
        storages.insert(key, (kind, data.to_vec()));
        pos = start + n;
    }
    Ok(TorchFile {
        container: Container::Legacy,
        root,
        storages,
    })
}

fn tch_kind(k: StorageKind) -> Kind {
    match k {
        StorageKind::F64 => Kind::Double,
        StorageKind::F32 => Kind::Float,
        StorageKind::F16 => Kind::Half,
        StorageKind::BF16 => Kind::BFloat16,
        StorageKind::I64 => Kind::Int64,
        StorageKind::I32 => Kind::Int,
        StorageKind::I16 => Kind::Int16,
        StorageKind::I8 => Kind::Int8,
        StorageKind::U8 => Kind::Uint8,
        StorageKind::Bool => Kind::Bool,
    }
}

impl TorchFile {
    /// Materialises the tensor `t` (contiguous, on the CPU); `name` and `path` label errors.
    pub fn tensor(
        &self,
        path: &Path,
        name: &str,
        t: &TensorRef,
        cache: &mut HashMap<String, Tensor>,
    ) -> Result<Tensor> {
        let (kind, bytes) = self.storages.get(&t.storage.key).ok_or_else(|| {
            bad(
                path,
                format!(
                    "tensor {name:?}: its storage {} is missing from the file",
                    t.storage.key
                ),
            )
        })?;
        let numel = (bytes.len() / kind.size()) as i64;
        if t.size.len() != t.stride.len()
            || t.size.iter().any(|&s| s < 0)
            || t.stride.iter().any(|&s| s < 0)
            || t.offset < 0
        {
            return Err(bad(
                path,
                format!(
                    "tensor {name:?}: malformed size {:?} / stride {:?} / offset {}",
                    t.size, t.stride, t.offset
                ),
            ));
        }
        let geometry = || format!("size {:?}, stride {:?} and offset {}", t.size, t.stride, t.offset);
        // Element count and last element reached, both checked: a lying size or stride must
        // not wrap around, nor make a small storage expand into a huge tensor.
        let elements = t.size.iter().try_fold(1i64, |acc, &s| acc.checked_mul(s));
        let last = t.size.iter().zip(&t.stride).try_fold(t.offset, |acc, (&s, &st)| {
            (s - 1).max(0).checked_mul(st).and_then(|x| acc.checked_add(x))
        });
        let (Some(elements), Some(last)) = (elements, last) else {
            return Err(bad(
                path,
                format!("tensor {name:?}: {} overflow 64-bit element counts", geometry()),
            ));
        };
        let empty = elements == 0;
        if !empty && last >= numel {
            return Err(bad(
                path,
                format!(
                    "tensor {name:?}: {} reach element {last}, but storage {} has {numel} (truncated or corrupt?)",
                    geometry(),
                    t.storage.key
                ),
            ));
        }
        // A tensor saved after `.expand()` has zero strides and more elements than its
        // storage; that is legitimate, but a few bytes of size and stride must not make a
        // terabyte tensor, so the materialised copy is bounded.
        let limit = (MAX_EXPANDED_BYTES as u64).max(bytes.len() as u64 * 64);
        if (elements as u64).saturating_mul(kind.size() as u64) > limit {
            return Err(bad(
                path,
                format!(
                    "tensor {name:?}: {} give {elements} elements from the {numel} of storage {}, \
                     more than {} MiB once materialised (corrupt or hostile file?)",
                    geometry(),
                    t.storage.key,
                    limit >> 20
                ),
            ));
        }
        let torch_err = |e: tch::TchError| bad(path, format!("tensor {name:?}: {e}"));
        if empty {
            return Tensor::f_zeros(&t.size[..], (tch_kind(*kind), tch::Device::Cpu)).map_err(torch_err);
        }
        let flat = match cache.get(&t.storage.key) {
            Some(f) => f.shallow_clone(),
            None => {
                let f = Tensor::f_from_data_size(bytes, &[numel], tch_kind(*kind)).map_err(torch_err)?;
                cache.insert(t.storage.key.clone(), f.shallow_clone());
                f
            }
        };
        flat.f_as_strided(&t.size[..], &t.stride[..], Some(t.offset))
            .and_then(|v| v.f_contiguous())
            .map_err(torch_err)
    }
}

/// Where the state dict sits in a checkpoint, tried in this order when no key is given.
pub const STATE_DICT_KEYS: &[&str] = &[
    "state_dict",
    "model",
    "model_state_dict",
    "net",
    "network",
    "module",
    "weights",
    "params",
];

/// A state dict's entries: `(name as stored, tensor description)` in file order.
pub type Entries = Vec<(String, Rc<TensorRef>)>;

/// A state dict found in a file: its location and entries (names as stored).
#[derive(Debug)]
pub struct FoundStateDict {
    /// The dotted key it was found under (`None` for the top level).
    pub key: Option<String>,
    /// `(name, tensor description)` in file order.
    pub entries: Entries,
}

fn dict_get(v: &Value, key: &str) -> Option<Value> {
    match v {
        Value::Dict(d) => d
            .borrow()
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v.clone()),
        _ => None,
    }
}

/// `Some(entries)` when `v` is a dict of string keys whose values are all tensors (a refused
/// value among them is an error naming it).
fn as_state_dict(path: &Path, v: &Value) -> Result<Option<Entries>> {
    let Value::Dict(d) = v else { return Ok(None) };
    let d = d.borrow();
    if d.is_empty()
        || !d
            .iter()
            .any(|(_, v)| matches!(v, Value::Tensor(_) | Value::Refused(_)))
    {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(d.len());
    for (k, v) in d.iter() {
        let Some(name) = k.as_str() else { return Ok(None) };
        match v {
            Value::Tensor(t) => out.push((name.to_string(), t.clone())),
            Value::Refused(g) => {
                return Err(bad(
                    path,
                    format!(
                        "entry {name:?} is built by the global {g}, which a state dict never needs; it was refused and nothing from the file was run"
                    ),
                ))
            }
            _ => return Ok(None),
        }
    }
    Ok(Some(out))
}

fn summary(v: &Value) -> String {
    match v {
        Value::Dict(d) => d
            .borrow()
            .iter()
            .take(12)
            .map(|(k, v)| {
                format!(
                    "{} ({})",
                    k.as_str().map_or_else(|| k.describe(), str::to_string),
                    v.describe()
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
        other => other.describe(),
    }
}

/// Finds the state dict in `root`: at the top level, under the dotted `key` when given, else
/// under the first of [`STATE_DICT_KEYS`] that holds one, else the only nested dict of tensors.
pub fn find_state_dict(path: &Path, root: &Value, key: Option<&str>) -> Result<FoundStateDict> {
    if let Value::Refused(g) = root {
        return Err(bad(
            path,
            format!("the file's object is built by the global {g}, which is not allowed in a weights file; it was refused and nothing from the file was run"),
        ));
    }
    if let Some(key) = key {
        let mut v = root.clone();
        for part in key.split('.') {
            v = dict_get(&v, part).ok_or_else(|| {
                bad(
                    path,
                    format!(
                        "no key {part:?} (of --weights-key {key:?}); the object has: {}",
                        summary(&v)
                    ),
                )
            })?;
        }
        return as_state_dict(path, &v)?
            .map(|entries| FoundStateDict {
                key: Some(key.to_string()),
                entries,
            })
            .ok_or_else(|| {
                bad(
                    path,
                    format!("{key:?} holds {}, not a dict of tensors", v.describe()),
                )
            });
    }
    if let Some(entries) = as_state_dict(path, root)? {
        return Ok(FoundStateDict { key: None, entries });
    }
    for k in STATE_DICT_KEYS {
        if let Some(v) = dict_get(root, k) {
            if let Some(entries) = as_state_dict(path, &v)? {
                return Ok(FoundStateDict {
                    key: Some(k.to_string()),
                    entries,
                });
            }
        }
    }
    let mut found = Vec::new();
    if let Value::Dict(d) = root {
        for (k, v) in d.borrow().iter() {
            if let (Some(k), Some(entries)) = (k.as_str(), as_state_dict(path, v)?) {
                found.push((k.to_string(), entries));
            }
        }
    }
    match found.len() {
        1 => {
            let (k, entries) = found.pop().expect("one");
            Ok(FoundStateDict {
                key: Some(k),
                entries,
            })
        }
        0 => Err(bad(
            path,
            format!(
                "no state dict (a dict of tensors) at the top level or under a key; the object has: {}",
                summary(root)
            ),
        )),
        _ => Err(bad(
            path,
            format!(
                "several state dicts ({}); choose one with --weights-key",
                found
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

#[cfg(test)]
mod tests;
