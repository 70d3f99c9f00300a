//! The fuzzing harness the `reader_fuzz` tests of several crates share (included with
//! `#[path]`): a runner with a fixed seed, panic capture, a watchdog against hangs, a heap cap
//! against lying length fields, and damage to valid files.

#![allow(dead_code)] // each test binary uses part of it

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

/// Named files: `(name, bytes)`.
pub type Named = Vec<(String, Vec<u8>)>;
/// Valid files to damage, shared between cases.
pub type Files = Arc<Named>;

/// How long one property may run before it counts as a hang.
pub const WATCHDOG: Duration = Duration::from_secs(120);

/// Caps this process's heap (`RLIMIT_DATA`) at 3 GiB where `prlimit` exists, so an allocation
/// sized by a lying length field aborts the test binary instead of passing unnoticed (or
/// swapping the machine). The readers under test never need more than a few MB.
pub fn limit_memory() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let limit = (3u64 << 30).to_string();
        let _ = std::process::Command::new("prlimit")
            .args([
                "--pid",
                &std::process::id().to_string(),
                &format!("--data={limit}:{limit}"),
            ])
            .status();
    });
}

fn scale() -> u32 {
    std::env::var("READER_FUZZ_SCALE")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1)
}

/// A runner with a fixed seed: the same inputs on every run and every machine.
/// `READER_FUZZ_SCALE=k` runs `k` times the cases (the same first ones, then more), for a
/// longer search by hand.
pub fn runner(cases: u32, seed: u8) -> TestRunner {
    let config = Config {
        cases: cases.saturating_mul(scale()),
        failure_persistence: None,
        max_shrink_iters: 256,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32]))
}

pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic".into())
}

/// Runs `cases` inputs from `strategy` through `check` on a watchdog thread. `check` returns
/// `Err(message)` for a wrong answer (e.g. an error that does not name the file); a panic
/// inside it is caught and reported with the input.
pub fn property<S>(
    name: &'static str,
    cases: u32,
    seed: u8,
    strategy: S,
    check: fn(&S::Value) -> Result<(), String>,
) where
    S: Strategy + Send + 'static,
    S::Value: std::fmt::Debug,
{
    limit_memory();
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let mut r = runner(cases, seed);
            let outcome = r.run(&strategy, |input| {
                match catch_unwind(AssertUnwindSafe(|| check(&input))) {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(m)) => Err(TestCaseError::fail(m)),
                    Err(p) => Err(TestCaseError::fail(format!("panicked: {}", panic_message(&*p)))),
                }
            });
            let _ = tx.send(outcome.map_err(|e| match e {
                proptest::test_runner::TestError::Fail(why, input) => {
                    let shown: String = format!("{input:?}").chars().take(4000).collect();
                    format!("{why}\n  minimal input: {shown}")
                }
                other => other.to_string(),
            }));
        })
        .expect("spawn");
    let limit = WATCHDOG * scale();
    match rx.recv_timeout(limit) {
        Ok(Ok(())) => worker.join().expect("worker"),
        Ok(Err(m)) => panic!("{name}: {m}"),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{name}: still running after {limit:?}; a reader loops on some input")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            panic!(
                "{name}: the worker died: {:?}",
                worker.join().err().map(|p| panic_message(&*p))
            )
        }
    }
}

/// How a spliced length field is encoded.
#[derive(Clone, Copy, Debug)]
pub enum Enc {
    U8,
    U16Le,
    U32Le,
    U32Be,
    U64Le,
    U64Be,
}

/// One edit of a valid file.
#[derive(Clone, Debug)]
pub enum Edit {
    Truncate(Index),
    Xor(Index, u8),
    Overwrite(Index, Vec<u8>),
    Insert(Index, Vec<u8>),
    Remove(Index, u8),
    /// Overwrites the bytes at the position with a (usually absurd) length or count.
    Length(Index, u64, Enc),
}

pub fn lying_length() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => select(vec![
            0u64,
            1,
            2,
            7,
            8,
            0x7f,
            0x80,
            0xff,
            0x100,
            0xffff,
            0x1_0000,
            0x7fff_ffff,
            0x8000_0000,
            0xffff_ffff,
            1 << 32,
            1 << 40,
            1 << 62,
            i64::MAX as u64,
            u64::MAX,
        ]),
        1 => any::<u64>(),
        1 => 0..4096u64,
    ]
}

pub fn edit() -> impl Strategy<Value = Edit> {
    let enc = select(vec![
        Enc::U8,
        Enc::U16Le,
        Enc::U32Le,
        Enc::U32Be,
        Enc::U64Le,
        Enc::U64Be,
    ]);
    prop_oneof![
        1 => any::<Index>().prop_map(Edit::Truncate),
        3 => (any::<Index>(), 1..=255u8).prop_map(|(i, m)| Edit::Xor(i, m)),
        1 => (any::<Index>(), vec(any::<u8>(), 1..8)).prop_map(|(i, b)| Edit::Overwrite(i, b)),
        1 => (any::<Index>(), vec(any::<u8>(), 1..16)).prop_map(|(i, b)| Edit::Insert(i, b)),
        1 => (any::<Index>(), 1..64u8).prop_map(|(i, n)| Edit::Remove(i, n)),
        3 => (any::<Index>(), lying_length(), enc).prop_map(|(i, v, e)| Edit::Length(i, v, e)),
    ]
}

pub fn apply(base: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut b = base.to_vec();
    for e in edits {
        if b.is_empty() {
            if let Edit::Insert(_, x) = e {
                b.extend_from_slice(x);
            }
            continue;
        }
        match e {
            Edit::Truncate(i) => b.truncate(i.index(b.len())),
            Edit::Xor(i, m) => {
                let at = i.index(b.len());
                b[at] ^= m;
            }
            Edit::Overwrite(i, x) => {
                let at = i.index(b.len());
                for (k, v) in x.iter().enumerate() {
                    if let Some(slot) = b.get_mut(at + k) {
                        *slot = *v;
                    }
                }
            }
            Edit::Insert(i, x) => {
                let at = i.index(b.len() + 1);
                b.splice(at..at, x.iter().copied());
            }
            Edit::Remove(i, n) => {
                let at = i.index(b.len());
                let end = (at + usize::from(*n)).min(b.len());
                b.drain(at..end);
            }
            Edit::Length(i, v, enc) => {
                let bytes: Vec<u8> = match enc {
                    Enc::U8 => vec![*v as u8],
                    Enc::U16Le => (*v as u16).to_le_bytes().to_vec(),
                    Enc::U32Le => (*v as u32).to_le_bytes().to_vec(),
                    Enc::U32Be => (*v as u32).to_be_bytes().to_vec(),
                    Enc::U64Le => v.to_le_bytes().to_vec(),
                    Enc::U64Be => v.to_be_bytes().to_vec(),
                };
                let at = i.index(b.len());
                for (k, x) in bytes.into_iter().enumerate() {
                    if let Some(slot) = b.get_mut(at + k) {
                        *slot = x;
                    }
                }
            }
        }
    }
    b
}

/// A valid file (by name) and the edits to make to it.
pub fn mutated(bases: Files, max_edits: usize) -> impl Strategy<Value = (String, Vec<Edit>)> {
    let names: Vec<String> = bases.iter().map(|(n, _)| n.clone()).collect();
    (select(names), vec(edit(), 1..=max_edits))
}

pub fn base<'a>(bases: &'a [(String, Vec<u8>)], name: &str) -> &'a [u8] {
    &bases.iter().find(|(n, _)| n == name).expect("base").1
}

/// `Ok` for an `Ok`, or for an error whose message names `path`'s file.
pub fn names_file<T, E: std::fmt::Display>(path: &Path, r: Result<T, E>) -> Result<(), String> {
    match r {
        Ok(_) => Ok(()),
        Err(e) => {
            let msg = e.to_string();
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            if msg.contains(&file) {
                Ok(())
            } else {
                Err(format!("the error does not name the file {file}: {msg}"))
            }
        }
    }
}

/// A scratch file private to the calling thread (one per property).
pub fn scratch(name: &str) -> PathBuf {
    thread_local! {
        static DIR: tempfile::TempDir = tempfile::tempdir().expect("tempdir");
    }
    DIR.with(|d| d.path().join(name))
}
