//! Weights, checkpoints and configs come from disk, downloads and other people's tools, so any
//! byte string can reach these readers. Whatever the bytes, a reader must answer with an error
//! that names the file — never a panic, a libtorch abort, an endless loop or an allocation far
//! larger than the file. These properties feed the readers random bytes and, more usefully,
//! damaged copies of valid files (truncated, bit-flipped, with lying length fields), with fixed
//! seeds so every run sees the same inputs.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kd_core::io::torch::pickle::{self, Value};
use kd_core::io::{checkpoint, torch, weights};
use kd_core::tch::{Kind, Tensor};
use kd_core::train::TrainConfig;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};

#[path = "common/fuzz.rs"]
mod fuzz;
use fuzz::{
    apply, base, edit, limit_memory, lying_length, mutated, names_file, panic_message, property, scratch,
    Files, Named,
};

// ---------------------------------------------------------------------------------------------
// Valid files to damage.

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch")
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn safetensors_bytes() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.safetensors");
    let tensors = vec![
        (
            "a.weight".to_string(),
            Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).view([2, 3]),
        ),
        ("b.bias".to_string(), Tensor::from_slice(&[1i64, -2])),
        (
            "c.half".to_string(),
            Tensor::ones([3], (Kind::Half, kd_core::tch::Device::Cpu)),
        ),
        ("d.flag".to_string(), Tensor::from_slice(&[true, false])),
    ];
    checkpoint::save(&p, &tensors, &serde_json::json!({"epoch": 2, "lr": 0.1})).unwrap();
    std::fs::read(&p).unwrap()
}

/// Every torch fixture (zip, legacy, plain pickle, code-running ones), a safetensors file, and
/// gzip copies of one of each container.
fn weight_files() -> Files {
    static FILES: std::sync::OnceLock<Files> = std::sync::OnceLock::new();
    FILES
        .get_or_init(|| {
            let mut out = Vec::new();
            let mut names: Vec<PathBuf> = std::fs::read_dir(fixture_dir())
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "pt" || e == "pkl"))
                .collect();
            names.sort();
            for p in names {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                out.push((name, std::fs::read(&p).unwrap()));
            }
            let st = safetensors_bytes();
            out.push(("c.safetensors".into(), st.clone()));
            out.push(("c.safetensors.gz".into(), gzip(&st)));
            for n in ["dtypes_zip.pt", "nested_legacy.pt"] {
                let b = std::fs::read(fixture_dir().join(n)).unwrap();
                out.push((format!("{n}.gz"), gzip(&b)));
            }
            Arc::new(out)
        })
        .clone()
}

/// `data.pkl` of a zip fixture and the archive's other entries.
fn zip_parts(name: &str) -> (String, Vec<u8>, Named) {
    use std::io::Read;
    let bytes = std::fs::read(fixture_dir().join(name)).unwrap();
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut pkl = None;
    let mut rest = Vec::new();
    for i in 0..z.len() {
        let mut f = z.by_index(i).unwrap();
        let mut data = Vec::new();
        f.read_to_end(&mut data).unwrap();
        let n = f.name().to_string();
        if n.ends_with("data.pkl") {
            pkl = Some((n, data));
        } else {
            rest.push((n, data));
        }
    }
    let (n, d) = pkl.unwrap();
    (n, d, rest)
}

fn zip_of(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (n, d) in entries {
        w.start_file(n.as_str(), opts).unwrap();
        w.write_all(d).unwrap();
    }
    w.finish().unwrap().into_inner()
}

// ---------------------------------------------------------------------------------------------
// The readers, as a user reaches them.

/// `weights::read`: dispatch on content (gzip, safetensors, torch zip, torch legacy), the
/// pickle machine, the state-dict search and the tensors' materialisation.
fn read_weights(bytes: &[u8]) -> Result<(), String> {
    let p = scratch("weights.pt");
    std::fs::write(&p, bytes).unwrap();
    names_file(&p, weights::read(&p, &weights::ReadOptions::default()))?;
    for key in ["model", "state_dict.x"] {
        let opts = weights::ReadOptions {
            weights_key: Some(key.into()),
        };
        names_file(&p, weights::read(&p, &opts))?;
    }
    Ok(())
}

/// `torch::decode` plus every tensor of every dict of tensors found anywhere at the top two
/// levels (what `weights::read` materialises, and more).
fn decode_torch(bytes: &[u8]) -> Result<(), String> {
    let p = Path::new("fuzz/model.pth");
    let file = match torch::decode(p, bytes.to_vec()) {
        Ok(f) => f,
        Err(e) => return names_file(p, Err::<(), _>(e)),
    };
    let mut cache = std::collections::HashMap::new();
    if let Ok(found) = torch::find_state_dict(p, &file.root, None) {
        for (name, t) in &found.entries {
            names_file(p, file.tensor(p, name, t, &mut cache))?;
        }
    }
    Ok(())
}

fn unpickle(bytes: &[u8]) -> Result<(), String> {
    let mut pos = 0;
    let mut storages = 0u32;
    let out = pickle::unpickle(bytes, &mut pos, &mut |pid| {
        storages += 1;
        // Storage ids go through the same checks as in a real file.
        Ok(match pid {
            Value::Tuple(_) => Value::Storage(pickle::StorageRef {
                key: storages.to_string(),
                kind: pickle::StorageKind::F32,
                numel: 4,
                view_offset: 0,
            }),
            other => other,
        })
    });
    if pos > bytes.len() {
        return Err(format!(
            "the machine stopped at offset {pos}, past the end ({})",
            bytes.len()
        ));
    }
    if let Ok(v) = out {
        let _ = torch::find_state_dict(Path::new("x.pkl"), &v, None);
        let _ = v.describe();
    }
    Ok(())
}

fn read_checkpoint(bytes: &[u8]) -> Result<(), String> {
    let p = Path::new("fuzz/checkpoint.safetensors");
    names_file(p, checkpoint::from_bytes(p, bytes))
}

fn parse_config(text: &str) -> Result<(), String> {
    let p = Path::new("configs/fuzz.toml");
    let doc = kd_core::config::parse::<toml::Value>(p, text);
    names_file(p, kd_core::config::parse::<TrainConfig>(p, text))?;
    if let Ok(doc) = &doc {
        // Every nested table, as a training config: the values that a typo or a bad edit
        // leaves behind reach the typed deserialisers too.
        let mut stack = vec![doc.clone()];
        while let Some(v) = stack.pop() {
            if let toml::Value::Table(t) = &v {
                if let Ok(s) = toml::to_string(&v) {
                    names_file(p, kd_core::config::parse::<TrainConfig>(p, &s))?;
                }
                stack.extend(t.values().cloned());
            }
        }
    }
    names_file(p, doc)
}

// ---------------------------------------------------------------------------------------------
// Properties.

/// Prefixes that send random bytes down each branch of the format dispatch.
fn dispatch_prefixes() -> impl Strategy<Value = Vec<u8>> {
    select(vec![
        Vec::new(),
        b"PK\x03\x04".to_vec(),
        b"\x80\x02".to_vec(),
        b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.".to_vec(),
        vec![0x1f, 0x8b],
        vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff],
        b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":".to_vec(),
    ])
}

#[test]
fn weights_read_arbitrary_bytes() {
    let s = (dispatch_prefixes(), vec(any::<u8>(), 0..300)).prop_map(|(mut p, b)| {
        p.extend(b);
        p
    });
    property("weights_read_arbitrary_bytes", 500, 1, s, |b| read_weights(b));
}

#[test]
fn weights_read_damaged_files() {
    let bases = weight_files();
    property(
        "weights_read_damaged_files",
        3000,
        2,
        mutated(bases, 4),
        |(name, edits)| read_weights(&apply(base(&weight_files(), name), edits)),
    );
}

/// Pickle opcodes and their usual operands, so random programs get past the first byte.
fn pickle_program() -> impl Strategy<Value = Vec<u8>> {
    let op = prop_oneof![
        4 => select(
            b"(.0128NJKMILGFXVSTUBC}])dlt\x85\x86\x87aesupqrgjhcRbQP\x88\x89\x8a\x8b\x8c\x8d\x8e\x8f\x90\x91\x92\x93\x94\x95\x96\x81"
                .to_vec()
        )
        .prop_map(|c| vec![c]),
        1 => vec(any::<u8>(), 1..6),
        1 => select(vec![
            b"ctorch._utils\n_rebuild_tensor_v2\n".to_vec(),
            b"ccollections\nOrderedDict\n".to_vec(),
            b"ctorch\nFloatStorage\n".to_vec(),
            b"X\x07\x00\x00\x00storage".to_vec(),
            b"X\x01\x00\x00\x000".to_vec(),
            b"X\x03\x00\x00\x00cpu".to_vec(),
            b"\x8c\x05model".to_vec(),
            b"K\x04".to_vec(),
            b"J\xff\xff\xff\x7f".to_vec(),
            b"\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7f".to_vec(),
            b"I99999999999999999999\n".to_vec(),
            b"\x8d\xff\xff\xff\xff\xff\xff\xff\xff".to_vec(),
        ]),
    ];
    vec(op, 0..60).prop_map(|ops| {
        let mut b = b"\x80\x02".to_vec();
        b.extend(ops.concat());
        b
    })
}

#[test]
fn pickle_machine_random_programs() {
    property("pickle_machine_random_programs", 3000, 3, pickle_program(), |b| {
        unpickle(b)?;
        // The same program as the object of a zip checkpoint.
        let (pkl, _, rest) = zip_parts("dtypes_zip.pt");
        let mut entries = vec![(pkl, b.clone())];
        entries.extend(rest);
        decode_torch(&zip_of(&entries))
    });
}

#[test]
fn torch_zip_with_damaged_pickle_or_records() {
    // The zip container checks CRCs, so damage inside an entry is caught there; re-packing the
    // damaged entry into a sound archive reaches the pickle machine and the tensor checks.
    let names = vec!["dtypes_zip.pt", "nested_zip.pt", "two_dicts.pt", "odd_key.pt"];
    let s = (select(names), any::<Index>(), vec(edit(), 1..=3));
    property(
        "torch_zip_with_damaged_pickle_or_records",
        1500,
        4,
        s,
        |(name, which, edits)| {
            let (pkl, data, rest) = zip_parts(name);
            let mut entries = vec![(pkl, data)];
            entries.extend(rest);
            let k = which.index(entries.len());
            entries[k].1 = apply(&entries[k].1, edits);
            decode_torch(&zip_of(&entries))
        },
    );
}

#[test]
fn checkpoint_arbitrary_and_damaged() {
    let st = Arc::new(vec![("c.safetensors".to_string(), safetensors_bytes())]);
    let arbitrary = (
        prop_oneof![
            Just(Vec::new()),
            lying_length().prop_map(|v| v.to_le_bytes().to_vec())
        ],
        vec(any::<u8>(), 0..200),
    )
        .prop_map(|(mut p, b)| {
            p.extend(b);
            p
        });
    property("checkpoint_arbitrary_bytes", 300, 5, arbitrary, |b| {
        read_checkpoint(b)
    });
    property("checkpoint_damaged", 1500, 6, mutated(st, 4), |(_, edits)| {
        read_checkpoint(&apply(&safetensors_bytes_cached(), edits))
    });
}

fn safetensors_bytes_cached() -> Vec<u8> {
    static B: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    B.get_or_init(safetensors_bytes).clone()
}

fn experiment_configs() -> Files {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no configs in {}", dir.display());
    Arc::new(
        files
            .into_iter()
            .map(|p| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect(),
    )
}

#[test]
fn config_parse_arbitrary_text() {
    let token = select(vec![
        "[",
        "]",
        "[[",
        "]]",
        "=",
        "\"",
        "'",
        "\"\"\"",
        "'''",
        "{",
        "}",
        ",",
        ".",
        "\n",
        " ",
        "#",
        "a",
        "epochs",
        "batch_size",
        "optimizer",
        "lr",
        "kind",
        "sgd",
        "cosine",
        "1",
        "-1",
        "1e400",
        "nan",
        "inf",
        "0x7fffffffffffffff",
        "99999999999999999999",
        "true",
        "1979-05-27T07:32:00Z",
        "\\u0000",
        "\\",
        "\u{feff}",
        "é",
    ]);
    let s = prop_oneof![
        vec(token, 0..80).prop_map(|t| t.concat()),
        any::<String>(),
        vec(any::<u8>(), 0..200).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ];
    property("config_parse_arbitrary_text", 800, 7, s, |t| parse_config(t));
}

#[test]
fn config_parse_damaged_experiment_files() {
    let bases = experiment_configs();
    property(
        "config_parse_damaged_experiment_files",
        600,
        8,
        mutated(bases, 3),
        |(name, edits)| {
            let text = apply(base(&experiment_configs(), name), edits);
            parse_config(&String::from_utf8_lossy(&text))
        },
    );
}

/// Interesting values for a tensor's size, stride or offset.
fn geometry_value() -> impl Strategy<Value = i64> {
    prop_oneof![
        2 => 0..8i64,
        1 => select(vec![
            -1i64,
            -2,
            1 << 31,
            (1 << 32) + 1,
            1 << 40,
            1 << 62,
            i64::MAX / 2 + 1,
            i64::MAX,
            i64::MIN,
        ]),
    ]
}

fn int_op(v: i64) -> Vec<u8> {
    format!("I{v}\n").into_bytes()
}

fn int_tuple(vals: &[i64]) -> Vec<u8> {
    [
        b"(".to_vec(),
        vals.iter().flat_map(|&v| int_op(v)).collect(),
        b"t".to_vec(),
    ]
    .concat()
}

/// A zip checkpoint `{'t': tensor}` whose tensor has the given geometry over a float storage
/// of `floats` elements that claims `numel`.
fn one_tensor_zip(floats: usize, numel: i64, offset: i64, size: &[i64], stride: &[i64]) -> Vec<u8> {
    let mut p =
        b"\x80\x02ccollections\nOrderedDict\n)R(X\x01\x00\x00\x00tctorch._utils\n_rebuild_tensor_v2\n("
            .to_vec();
    p.extend(b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpu");
    p.extend(int_op(numel));
    p.extend(b"tQ");
    p.extend(int_op(offset));
    p.extend(int_tuple(size));
    p.extend(int_tuple(stride));
    p.extend(b"\x89ccollections\nOrderedDict\n)RtRu.");
    let storage: Vec<u8> = (0..floats).flat_map(|i| (i as f32).to_le_bytes()).collect();
    zip_of(&[
        ("archive/data.pkl".into(), p),
        ("archive/byteorder".into(), b"little".to_vec()),
        ("archive/data/0".into(), storage),
    ])
}

#[test]
fn tensor_geometry_from_the_pickle() {
    // Sanity: the template itself is a valid checkpoint.
    let good = one_tensor_zip(6, 6, 0, &[2, 3], &[3, 1]);
    let p = Path::new("fuzz/model.pth");
    let f = torch::decode(p, good).unwrap();
    let found = torch::find_state_dict(p, &f.root, None).unwrap();
    let t = f
        .tensor(p, "t", &found.entries[0].1, &mut Default::default())
        .unwrap();
    assert_eq!(t.size(), [2, 3]);
    // A tensor saved after `.expand()` (stride 0) is read as PyTorch reads it.
    let expanded = one_tensor_zip(6, 6, 0, &[4, 3], &[0, 1]);
    let f = torch::decode(p, expanded).unwrap();
    let found = torch::find_state_dict(p, &f.root, None).unwrap();
    let t = f
        .tensor(p, "t", &found.entries[0].1, &mut Default::default())
        .unwrap();
    assert_eq!(t.size(), [4, 3]);
    assert_eq!(t.get(0), t.get(3));
    // Geometries a damaged file may declare: each is a clear error naming the file.
    for (size, stride, why) in [
        (vec![1i64 << 40], vec![0i64], "once materialised"),
        (vec![3, 1 << 62], vec![1 << 62, 1], "overflow"),
        (vec![0, i64::MAX, i64::MAX], vec![1, 1, 1], ""),
        (vec![7], vec![1], "reach element 6"),
    ] {
        let f = torch::decode(p, one_tensor_zip(6, 6, 0, &size, &stride)).unwrap();
        let found = torch::find_state_dict(p, &f.root, None).unwrap();
        match f.tensor(p, "t", &found.entries[0].1, &mut Default::default()) {
            Ok(t) => assert!(why.is_empty() && t.numel() == 0, "{size:?}: {t:?}"),
            Err(e) => {
                let e = e.to_string();
                assert!(e.contains("model.pth") && e.contains(why), "{size:?}: {e}");
            }
        }
    }

    let s = (
        0..24usize,
        geometry_value(),
        geometry_value(),
        vec((geometry_value(), geometry_value()), 0..4),
        0..8u8,
    );
    property(
        "tensor_geometry_from_the_pickle",
        2500,
        9,
        s,
        |(floats, numel, offset, dims, drop_stride)| {
            let size: Vec<i64> = dims.iter().map(|d| d.0).collect();
            let mut stride: Vec<i64> = dims.iter().map(|d| d.1).collect();
            if *drop_stride == 0 {
                stride.pop();
            }
            let bytes = one_tensor_zip(*floats, *numel, *offset, &size, &stride);
            let p = Path::new("fuzz/model.pth");
            let file = torch::decode(p, bytes).map_err(|e| e.to_string())?;
            let found = torch::find_state_dict(p, &file.root, None).map_err(|e| e.to_string())?;
            let r = file.tensor(p, "t", &found.entries[0].1, &mut Default::default());
            // Expanded tensors (stride 0) are legitimate, but bounded once materialised.
            if let Ok(t) = &r {
                let bound = (1u64 << 30).max(*floats as u64 * 4 * 64);
                if t.numel() as u64 * 4 > bound {
                    return Err(format!(
                        "{} elements materialised from a storage of {floats}",
                        t.numel()
                    ));
                }
            }
            names_file(p, r)
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Inputs too large for the random strategies to stumble on.

#[test]
fn lying_zip_entry_sizes_are_errors() {
    limit_memory();
    let good = std::fs::read(fixture_dir().join("dtypes_zip.pt")).unwrap();
    // Size fields of local headers (compressed at +18, uncompressed at +22) and of central
    // directory records (+20, +24).
    let mut fields = Vec::new();
    for at in 0..good.len().saturating_sub(4) {
        match &good[at..at + 4] {
            b"PK\x03\x04" => fields.extend([at + 18, at + 22]),
            b"PK\x01\x02" => fields.extend([at + 20, at + 24]),
            _ => {}
        }
    }
    assert!(fields.len() >= 8, "{fields:?}");
    for at in fields {
        for v in [0u32, 1, 0x7fff_ffff, 0xffff_fffe, 0xffff_ffff] {
            let mut b = good.clone();
            b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            match catch_unwind(AssertUnwindSafe(|| read_weights(&b))) {
                Ok(r) => r.unwrap_or_else(|m| panic!("size {v:#x} at {at}: {m}")),
                Err(p) => panic!("size {v:#x} at {at}: panicked: {}", panic_message(&*p)),
            }
        }
    }
}

fn on_small_stack(f: impl FnOnce() -> Result<(), String> + Send + 'static) {
    let h = std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(f)
        .expect("spawn");
    h.join().expect("no panic").unwrap();
}

#[test]
fn deeply_nested_pickle_is_an_error() {
    on_small_stack(|| {
        const N: usize = 200_000;
        // TUPLE1 wraps the top in a tuple; N marks closed by N LISTs nest lists; EMPTY_LIST
        // then TUPLE2 pairs the previous top with a new list.
        let programs: [Vec<u8>; 3] = [
            [b")".to_vec(), vec![0x85; N]].concat(),
            [vec![b'('; N], vec![b'l'; N]].concat(),
            [b")".to_vec(), b"]\x86".repeat(N)].concat(),
        ];
        for body in programs {
            let mut b = b"\x80\x02".to_vec();
            b.extend(body);
            b.push(b'.');
            let mut pos = 0;
            let r = pickle::unpickle(&b, &mut pos, &mut |_| Err("none".into()));
            let e = r.err().ok_or("a 200 000-deep nesting was accepted")?;
            if !e.contains("nest") {
                return Err(format!("unclear error: {e}"));
            }
        }
        Ok(())
    });
}

#[test]
fn copying_a_dict_over_and_over_is_an_error() {
    // A 2000-entry dict, then `OrderedDict(d)` kept on the stack 5000 times: 20 kB of pickle
    // asking for ten million copied values.
    let mut b = b"\x80\x02}q\x00(".to_vec();
    for i in 0..2000i32 {
        b.push(b'J');
        b.extend(i.to_le_bytes());
        b.extend(b"K\x01");
    }
    b.extend(b"uccollections\nOrderedDict\nq\x01");
    for _ in 0..5000 {
        b.extend(b"h\x01h\x00\x85R");
    }
    b.push(b'.');
    let mut pos = 0;
    let e = pickle::unpickle(&b, &mut pos, &mut |_| Err("none".into())).unwrap_err();
    assert!(e.contains("copies more values"), "{e}");
}

#[test]
fn lying_legacy_storage_counts_are_errors() {
    limit_memory();
    let good = std::fs::read(fixture_dir().join("dtypes_legacy.pt")).unwrap();
    let p = Path::new("fuzz/legacy.pt");
    let file = torch::decode(p, good.clone()).unwrap();
    assert_eq!(file.container, torch::Container::Legacy);
    // Every 8-byte window overwritten with a huge count: the errors name the file.
    for at in (0..good.len().saturating_sub(8)).step_by(3) {
        for v in [u64::MAX, u64::MAX / 2, 1 << 61] {
            let mut b = good.clone();
            b[at..at + 8].copy_from_slice(&v.to_le_bytes());
            let r = catch_unwind(AssertUnwindSafe(|| decode_torch(&b)));
            match r {
                Ok(r) => r.unwrap_or_else(|m| panic!("count {v:#x} at {at}: {m}")),
                Err(p) => panic!("count {v:#x} at {at}: panicked: {}", panic_message(&*p)),
            }
        }
    }
}
