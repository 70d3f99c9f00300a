//! A pickle virtual machine that builds values and never runs anything.
//!
//! `torch.save` writes a pickle whose only "code" is a handful of reconstructors
//! (`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`, storage classes). Python's
//! unpickler would import and call whatever global the file names, which is how a malicious
//! checkpoint runs code. This machine resolves globals against an allowlist only: an allowed
//! global becomes a known constructor evaluated here, in Rust; any other global becomes an inert
//! [`Value::Refused`] that remembers its name and is never imported or called. A refused value
//! that ends up inside the weights being loaded makes the load fail with that name (see
//! [`super::find_state_dict`]); one that sits elsewhere (an optimiser's or a logger's state) is
//! only reported.
//!
//! Every opcode of protocols 0–5 that a tensor checkpoint can contain is handled; the
//! object-building ones that exist only to call arbitrary classes (`INST`, `OBJ`, the extension
//! registry, out-of-band buffers) are refused outright.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

/// The deepest nesting of containers (tuples, lists, dicts) a pickle may build. Checkpoints
/// nest a handful of levels; without a bound, a few bytes per level (`TUPLE1` repeated) build a
/// value whose drop overflows the stack.
pub const MAX_NESTING: usize = 100;

/// A storage's element type, from the storage class named in the pickle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)] // the element types are their names
pub enum StorageKind {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StorageKind {
    /// The storage class name (`FloatStorage`, ...) → kind.
    pub fn from_class(name: &str) -> Option<Self> {
        Some(match name {
            "DoubleStorage" => Self::F64,
            "FloatStorage" => Self::F32,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "CharStorage" => Self::I8,
            "ByteStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    /// A dtype name (`float32`, `bfloat16`, ...) → kind.
    pub fn from_dtype(name: &str) -> Option<Self> {
        Some(match name {
            "float64" | "double" => Self::F64,
            "float32" | "float" => Self::F32,
            "float16" | "half" => Self::F16,
            "bfloat16" => Self::BF16,
            "int64" | "long" => Self::I64,
            "int32" | "int" => Self::I32,
            "int16" | "short" => Self::I16,
            "int8" => Self::I8,
            "uint8" => Self::U8,
            "bool" => Self::Bool,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }
}

/// A reference to (part of) a storage record, from a persistent id.
#[derive(Clone, Debug, PartialEq)]
pub struct StorageRef {
    /// The record key (`archive/data/<key>` in the zip format, the storage key in the legacy one).
    pub key: String,
    /// Element type.
    pub kind: StorageKind,
    /// Elements in the record (0 when the file does not say).
    pub numel: u64,
    /// Legacy views: the element offset of this view into the record.
    pub view_offset: u64,
}

/// A tensor as the pickle describes it: a strided window into a storage.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    /// The backing storage.
    pub storage: StorageRef,
    /// Element offset into the storage.
    pub offset: i64,
    /// Sizes.
    pub size: Vec<i64>,
    /// Strides, in elements.
    pub stride: Vec<i64>,
}

/// A shared, mutable container, as pickle's memo requires (objects are memoised before they
/// are filled).
pub type Shared<T> = Rc<RefCell<T>>;

/// A value built by the machine.
#[derive(Clone, Debug)]
pub enum Value {
    /// `None`.
    None,
    /// `True`/`False`.
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// An integer wider than 64 bits (kept as its little-endian two's-complement bytes).
    BigInt(Vec<u8>),
    /// A float.
    Float(f64),
    /// A text string.
    Str(String),
    /// A byte string.
    Bytes(Vec<u8>),
    /// A tuple.
    Tuple(Rc<Vec<Value>>),
    /// A list (also sets and frozensets).
    List(Shared<Vec<Value>>),
    /// A dict (also `OrderedDict`), in insertion order.
    Dict(Shared<Vec<(Value, Value)>>),
    /// A tensor.
    Tensor(Rc<TensorRef>),
    /// A storage, from a persistent id.
    Storage(StorageRef),
    /// An allowed global, not yet called.
    Global(Known),
    /// Something the allowlist does not cover: the global's `module.name`, never resolved.
    Refused(Rc<String>),
}

/// The globals the machine evaluates itself.
#[derive(Clone, Debug, PartialEq)]
pub enum Known {
    /// `collections.OrderedDict`, `builtins.dict`.
    Dict,
    /// `builtins.list`, `set`, `frozenset`.
    List,
    /// `torch.Size`, `builtins.tuple`.
    Tuple,
    /// `torch._utils._rebuild_tensor` / `_v2` / `_v3`.
    RebuildTensor,
    /// `torch._utils._rebuild_parameter` / `_with_state`.
    RebuildParameter,
    /// A storage class (`torch.FloatStorage`, ...).
    StorageClass(StorageKind),
    /// A dtype constant (`torch.float32`).
    Dtype(StorageKind),
    /// `torch.device`, `builtins.slice`, ... : called, it yields a plain string description.
    Describe(String),
}

/// Resolves `module.name` against the allowlist.
fn resolve(module: &str, name: &str) -> Value {
    let known = match (module, name) {
        ("collections", "OrderedDict") | ("builtins" | "__builtin__", "dict") => Some(Known::Dict),
        ("builtins" | "__builtin__", "list" | "set" | "frozenset") => Some(Known::List),
        ("builtins" | "__builtin__", "tuple") | ("torch", "Size") => Some(Known::Tuple),
        ("torch._utils", "_rebuild_tensor" | "_rebuild_tensor_v2" | "_rebuild_tensor_v3") => {
            Some(Known::RebuildTensor)
        }
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            Some(Known::RebuildParameter)
        }
        ("torch", "device") | ("builtins" | "__builtin__", "slice") => {
            Some(Known::Describe(format!("{module}.{name}")))
        }
        ("torch", n) => StorageKind::from_class(n)
            .map(Known::StorageClass)
            .or_else(|| StorageKind::from_dtype(n).map(Known::Dtype)),
        _ => None,
    };
    match known {
        Some(k) => Value::Global(k),
        None => Value::Refused(Rc::new(format!("{module}.{name}"))),
    }
}

impl Value {
    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            Value::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    /// The items of a tuple or list.
    pub fn items(&self) -> Option<Vec<Value>> {
        match self {
            Value::Tuple(t) => Some(t.as_ref().clone()),
            Value::List(l) => Some(l.borrow().clone()),
            _ => None,
        }
    }

    /// A short description for error messages.
    pub fn describe(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::BigInt(_) => "a big integer".into(),
            Value::Float(f) => f.to_string(),
            Value::Str(s) => format!("{s:?}"),
            Value::Bytes(b) => format!("{} bytes", b.len()),
            Value::Tuple(t) => format!("a tuple of {}", t.len()),
            Value::List(l) => format!("a list of {}", l.borrow().len()),
            Value::Dict(d) => format!("a dict of {}", d.borrow().len()),
            Value::Tensor(t) => format!("a tensor {:?}", t.size),
            Value::Storage(_) => "a storage".into(),
            Value::Global(g) => format!("the global {g:?}"),
            Value::Refused(g) => format!("an object of the refused global {g}"),
        }
    }
}

/// Turns a persistent id into a value (a storage); supplied by the container format.
pub type PersistentLoad<'a> = dyn FnMut(Value) -> std::result::Result<Value, String> + 'a;

/// Runs the pickle in `data` from `*pos` to its `STOP` and returns the result; `*pos` is left
/// just after the `STOP` (the legacy format is several pickles back to back).
pub fn unpickle(
    data: &[u8],
    pos: &mut usize,
    persistent: &mut PersistentLoad<'_>,
) -> std::result::Result<Value, String> {
    Machine {
        data,
        pos: *pos,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        depth: HashMap::new(),
        nested: HashSet::new(),
        // Values copied by calls (an `OrderedDict(d)` copies `d`): a file's own objects cost
        // about one per byte, so this only stops a few bytes from copying a big dict over
        // and over.
        copy_budget: data.len().saturating_mul(4).saturating_add(4096),
    }
    .run(persistent)
    .map(|(v, end)| {
        *pos = end;
        v
    })
}

struct Machine<'d> {
    data: &'d [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
    /// Nesting depth of each live container, by address (see [`MAX_NESTING`]).
    depth: HashMap<usize, usize>,
    /// Containers already placed inside another one. Python's pickler fills a container before
    /// nesting it, so changing one afterwards (which would leave its ancestors' recorded depth
    /// stale) is refused.
    nested: HashSet<usize>,
    copy_budget: usize,
}

/// The address of a container's shared allocation (its identity), `None` for other values.
fn address(v: &Value) -> Option<usize> {
    match v {
        Value::Tuple(t) => Some(Rc::as_ptr(t) as *const u8 as usize),
        Value::List(l) => Some(Rc::as_ptr(l) as *const u8 as usize),
        Value::Dict(d) => Some(Rc::as_ptr(d) as *const u8 as usize),
        _ => None,
    }
}

/// Number of items of a container (0 for other values).
fn len_of(v: &Value) -> usize {
    match v {
        Value::Tuple(t) => t.len(),
        Value::List(l) => l.borrow().len(),
        Value::Dict(d) => d.borrow().len(),
        _ => 0,
    }
}

fn too_deep() -> String {
    format!("the pickle nests containers more than {MAX_NESTING} deep: corrupt or hostile file")
}

type R<T> = std::result::Result<T, String>;

impl<'d> Machine<'d> {
    fn take(&mut self, n: usize) -> R<&'d [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                format!(
                    "the pickle ends early (wanted {n} bytes at offset {}, it has {}): truncated file?",
                    self.pos,
                    self.data.len()
                )
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> R<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> R<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> R<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    fn line(&mut self) -> R<&'d str> {
        let rest = &self.data[self.pos.min(self.data.len())..];
        let n = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or_else(|| "the pickle ends inside a text line: truncated file?".to_string())?;
        let s =
            std::str::from_utf8(&rest[..n]).map_err(|_| "a text opcode holds invalid UTF-8".to_string())?;
        self.pos += n + 1;
        Ok(s)
    }

    fn utf8(&mut self, n: usize) -> R<Value> {
        let b = self.take(n)?;
        String::from_utf8(b.to_vec())
            .map(Value::Str)
            .map_err(|_| "a string in the pickle is not valid UTF-8".to_string())
    }

    fn pop(&mut self) -> R<Value> {
        self.stack
            .pop()
            .ok_or_else(|| "the pickle pops an empty stack: corrupt file?".to_string())
    }

    fn top(&mut self) -> R<&mut Value> {
        self.stack
            .last_mut()
            .ok_or_else(|| "the pickle reads an empty stack: corrupt file?".to_string())
    }

    fn pop_mark(&mut self) -> R<Vec<Value>> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| "the pickle closes a mark it never opened: corrupt file?".to_string())?;
        if m > self.stack.len() {
            return Err("the pickle's mark lies above its stack: corrupt file?".into());
        }
        Ok(self.stack.split_off(m))
    }

    fn depth_of(&self, v: &Value) -> usize {
        address(v).map_or(0, |a| self.depth.get(&a).copied().unwrap_or(1))
    }

    /// Pushes `v`; a container just built from its items gets its depth recorded and its items
    /// marked as nested.
    fn push_built(&mut self, v: Value) -> R<()> {
        if let Some(a) = address(&v) {
            let mut deepest = 0;
            let mut kids = Vec::new();
            let mut visit = |c: &Value| {
                deepest = deepest.max(self.depth_of(c));
                kids.extend(address(c));
            };
            match &v {
                Value::Tuple(t) => t.iter().for_each(&mut visit),
                Value::List(l) => l.borrow().iter().for_each(&mut visit),
                Value::Dict(d) => d.borrow().iter().for_each(|(k, x)| {
                    visit(k);
                    visit(x);
                }),
                _ => {}
            }
            if deepest + 1 > MAX_NESTING {
                return Err(too_deep());
            }
            self.depth.insert(a, deepest + 1);
            self.nested.remove(&a);
            self.nested.extend(kids);
        }
        self.stack.push(v);
        Ok(())
    }

    /// Checks and records that `items` are about to be put into the container on top.
    fn adopt<'v>(&mut self, items: impl IntoIterator<Item = &'v Value>) -> R<()> {
        let Some(a) = self.stack.last().and_then(address) else {
            return Ok(());
        };
        let mut depth = self.depth.get(&a).copied().unwrap_or(1);
        let mut kids = Vec::new();
        for it in items {
            depth = depth.max(self.depth_of(it) + 1);
            kids.extend(address(it));
        }
        if self.nested.contains(&a) {
            return Err("the pickle changes a container after nesting it in another: corrupt file?".into());
        }
        if depth > MAX_NESTING {
            return Err(too_deep());
        }
        self.depth.insert(a, depth);
        self.nested.extend(kids);
        Ok(())
    }

    /// Charges the copies a call of `f` on `args` makes against the copy budget.
    fn charge_call(&mut self, args: &Value) -> R<()> {
        let first = match args {
            Value::Tuple(t) => t.first().map_or(0, len_of),
            Value::List(l) => l.borrow().first().map_or(0, len_of),
            _ => 0,
        };
        let cost = len_of(args) + first;
        self.copy_budget = self.copy_budget.checked_sub(cost).ok_or_else(|| {
            "the pickle copies more values than a file of its size can hold: corrupt or hostile file"
                .to_string()
        })?;
        Ok(())
    }

    fn memo_get(&self, k: u64) -> R<Value> {
        self.memo
            .get(&k)
            .cloned()
            .ok_or_else(|| format!("the pickle reads memo slot {k}, which was never written: corrupt file?"))
    }

    fn memo_put(&mut self, k: u64) -> R<()> {
        let v = self
            .stack
            .last()
            .cloned()
            .ok_or_else(|| "the pickle memoises an empty stack: corrupt file?".to_string())?;
        self.memo.insert(k, v);
        Ok(())
    }

    fn run(mut self, persistent: &mut PersistentLoad<'_>) -> R<(Value, usize)> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(format!("pickle protocol {proto} is newer than 5"));
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: a length hint only.
                }
                b'.' => {
                    let v = self.pop()?;
                    return Ok((v, self.pos));
                }
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(v as i64));
                }
                b'I' => {
                    let s = self.line()?;
                    let v = match s {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        s => Value::Int(s.parse().map_err(|_| format!("bad INT literal {s:?}"))?),
                    };
                    self.stack.push(v);
                }
                b'L' => {
                    let s = self.line()?.trim_end_matches('L');
                    let v = s
                        .parse::<i64>()
                        .map(Value::Int)
                        .unwrap_or(Value::BigInt(s.as_bytes().to_vec()));
                    self.stack.push(v);
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.u8()? as usize
                    } else {
                        self.u32()? as usize
                    };
                    let b = self.take(n)?;
                    let v = if n == 0 {
                        Value::Int(0)
                    } else if n <= 8 {
                        let neg = b[n - 1] & 0x80 != 0;
                        let mut buf = [if neg { 0xff } else { 0 }; 8];
                        buf[..n].copy_from_slice(b);
                        Value::Int(i64::from_le_bytes(buf))
                    } else {
                        Value::BigInt(b.to_vec())
                    };
                    self.stack.push(v);
                }
                b'G' => {
                    let b = self.take(8)?;
                    self.stack
                        .push(Value::Float(f64::from_be_bytes(b.try_into().expect("8 bytes"))));
                }
                b'F' => {
                    let s = self.line()?;
                    self.stack.push(Value::Float(
                        s.parse().map_err(|_| format!("bad FLOAT literal {s:?}"))?,
                    ));
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.utf8(n)?;
                    self.stack.push(v);
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.utf8(n)?;
                    self.stack.push(v);
                }
                0x8d => {
                    let n = self.u64()? as usize;
                    let v = self.utf8(n)?;
                    self.stack.push(v);
                }
                b'V' => {
                    let s = self.line()?.to_string();
                    self.stack.push(Value::Str(s));
                }
                b'S' => {
                    // Protocol 0 string: a quoted Python literal; keys are plain ASCII in practice.
                    let s = self.line()?;
                    let s = s.trim_matches(|c| c == '\'' || c == '"').to_string();
                    self.stack.push(Value::Str(s));
                }
                b'T' | b'U' => {
                    let n = if op == b'T' {
                        self.u32()? as usize
                    } else {
                        self.u8()? as usize
                    };
                    let b = self.take(n)?;
                    // Python 2 `str`: text when it decodes, bytes otherwise.
                    let v = match std::str::from_utf8(b) {
                        Ok(s) => Value::Str(s.to_string()),
                        Err(_) => Value::Bytes(b.to_vec()),
                    };
                    self.stack.push(v);
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => self.u32()? as usize,
                        b'C' => self.u8()? as usize,
                        _ => self.u64()? as usize,
                    };
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(b));
                }
                b'}' => self.push_built(Value::Dict(Rc::new(RefCell::new(Vec::new()))))?,
                b']' => self.push_built(Value::List(Rc::new(RefCell::new(Vec::new()))))?,
                b')' => self.push_built(Value::Tuple(Rc::new(Vec::new())))?,
                0x8f => self.push_built(Value::List(Rc::new(RefCell::new(Vec::new()))))?,
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = pairs(items)?;
                    self.push_built(Value::Dict(Rc::new(RefCell::new(pairs))))?;
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push_built(Value::List(Rc::new(RefCell::new(items))))?;
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_built(Value::Tuple(Rc::new(items)))?;
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push_built(Value::List(Rc::new(RefCell::new(items))))?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err("the pickle builds a tuple from an empty stack: corrupt file?".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push_built(Value::Tuple(Rc::new(items)))?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.adopt([&v])?;
                    append(self.top()?, vec![v])?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    self.adopt(&items)?;
                    append(self.top()?, items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.adopt([&k, &v])?;
                    set_items(self.top()?, vec![(k, v)])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.adopt(&items)?;
                    let p = pairs(items)?;
                    set_items(self.top()?, p)?;
                }
                b'p' => {
                    let k = self.line()?;
                    let k = k.parse().map_err(|_| format!("bad PUT index {k:?}"))?;
                    self.memo_put(k)?;
                }
                b'q' => {
                    let k = self.u8()? as u64;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.u32()? as u64;
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k)?;
                }
                b'g' => {
                    let k = self.line()?;
                    let k = k.parse().map_err(|_| format!("bad GET index {k:?}"))?;
                    let v = self.memo_get(k)?;
                    self.stack.push(v);
                }
                b'h' => {
                    let k = self.u8()? as u64;
                    let v = self.memo_get(k)?;
                    self.stack.push(v);
                }
                b'j' => {
                    let k = self.u32()? as u64;
                    let v = self.memo_get(k)?;
                    self.stack.push(v);
                }
                b'c' => {
                    let module = self.line()?.to_string();
                    let name = self.line()?.to_string();
                    self.stack.push(resolve(&module, &name));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module.as_str(), name.as_str()) {
                        (Some(m), Some(n)) => self.stack.push(resolve(m, n)),
                        _ => return Err("STACK_GLOBAL without two strings: corrupt file?".into()),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    self.charge_call(&args)?;
                    let v = call(f, args)?;
                    self.push_built(v)?;
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    self.charge_call(&args)?;
                    let v = call(cls, args)?;
                    self.push_built(v)?;
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    self.charge_call(&args)?;
                    let v = call(cls, args)?;
                    self.push_built(v)?;
                }
                b'b' => {
                    // BUILD: set an object's state. Containers and tensors keep no state we need
                    // (an OrderedDict's `_metadata`, a parameter's hooks); refused objects stay inert.
                    self.pop()?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = persistent(pid)?;
                    self.stack.push(v);
                }
                b'P' => {
                    let s = self.line()?.to_string();
                    let v = persistent(Value::Str(s))?;
                    self.stack.push(v);
                }
                b'i' | b'o' => {
                    return Err(format!(
                        "opcode {:?} at offset {at} instantiates an arbitrary class; refused",
                        op as char
                    ))
                }
                0x82..=0x84 => {
                    return Err(format!(
                        "opcode EXT{} at offset {at} uses the copyreg extension registry; refused",
                        [1, 2, 4][(op - 0x82) as usize]
                    ))
                }
                0x97 | 0x98 => return Err(format!("out-of-band buffers (offset {at}) are not supported")),
                other => {
                    return Err(format!(
                        "unknown pickle opcode 0x{other:02x} at offset {at}: not a pickle, or corrupt"
                    ))
                }
            }
        }
    }
}

fn pairs(items: Vec<Value>) -> R<Vec<(Value, Value)>> {
    if !items.len().is_multiple_of(2) {
        return Err("a dict is built from an odd number of items: corrupt file?".into());
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn append(target: &mut Value, items: Vec<Value>) -> R<()> {
    match target {
        Value::List(l) => {
            l.borrow_mut().extend(items);
            Ok(())
        }
        Value::Refused(_) => Ok(()),
        other => Err(format!(
            "the pickle appends to {}: corrupt file?",
            other.describe()
        )),
    }
}

fn set_items(target: &mut Value, items: Vec<(Value, Value)>) -> R<()> {
    match target {
        Value::Dict(d) => {
            let mut d = d.borrow_mut();
            for (k, v) in items {
                // Python dict semantics: a repeated key replaces the value in place.
                match d.iter_mut().find(|(dk, _)| same_key(dk, &k)) {
                    Some(slot) => slot.1 = v,
                    None => d.push((k, v)),
                }
            }
            Ok(())
        }
        Value::Refused(_) => Ok(()),
        other => Err(format!(
            "the pickle sets items on {}: corrupt file?",
            other.describe()
        )),
    }
}

fn same_key(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Str(x), Value::Str(y)) => x == y,
        (Value::Int(x), Value::Int(y)) => x == y,
        _ => false,
    }
}

fn ints(v: &Value, what: &str) -> R<Vec<i64>> {
    v.items()
        .and_then(|items| items.iter().map(Value::as_int).collect::<Option<Vec<_>>>())
        .ok_or_else(|| format!("tensor {what} is {}, not a tuple of integers", v.describe()))
}

/// Evaluates a call of an allowed global; a refused callee yields a refused value.
fn call(f: Value, args: Value) -> R<Value> {
    let args_v = args.items().unwrap_or_default();
    match f {
        Value::Refused(name) => Ok(Value::Refused(name)),
        Value::Global(Known::Dict) => {
            let out = match args_v.first() {
                None => Vec::new(),
                Some(Value::Dict(d)) => d.borrow().clone(),
                Some(Value::List(l)) => {
                    let mut out = Vec::new();
                    for item in l.borrow().iter() {
                        match item.items().as_deref() {
                            Some([k, v]) => out.push((k.clone(), v.clone())),
                            _ => return Err("OrderedDict built from a list of non-pairs".into()),
                        }
                    }
                    out
                }
                Some(other) => return Err(format!("OrderedDict built from {}", other.describe())),
            };
            Ok(Value::Dict(Rc::new(RefCell::new(out))))
        }
        Value::Global(Known::List) => Ok(Value::List(Rc::new(RefCell::new(
            args_v.first().and_then(Value::items).unwrap_or_default(),
        )))),
        Value::Global(Known::Tuple) => Ok(Value::Tuple(Rc::new(
            args_v.first().and_then(Value::items).unwrap_or_default(),
        ))),
        Value::Global(Known::Describe(name)) => {
            let parts: Vec<String> = args_v.iter().map(Value::describe).collect();
            Ok(Value::Str(format!("{name}({})", parts.join(", "))))
        }
        Value::Global(Known::RebuildTensor) => {
            let [storage, offset, size, stride, ..] = args_v.as_slice() else {
                return Err(format!("_rebuild_tensor with {} arguments", args_v.len()));
            };
            let storage = match storage {
                Value::Storage(s) => s.clone(),
                Value::Refused(name) => return Ok(Value::Refused(name.clone())),
                other => {
                    return Err(format!(
                        "a tensor rebuilt from {}, not a storage",
                        other.describe()
                    ))
                }
            };
            let offset = offset
                .as_int()
                .ok_or_else(|| format!("tensor offset is {}", offset.describe()))?;
            let offset = i64::try_from(storage.view_offset)
                .ok()
                .and_then(|v| offset.checked_add(v))
                .ok_or_else(|| {
                    format!(
                        "tensor offset {offset} plus view offset {} overflows",
                        storage.view_offset
                    )
                })?;
            let t = TensorRef {
                offset,
                size: ints(size, "size")?,
                stride: ints(stride, "stride")?,
                storage,
            };
            Ok(Value::Tensor(Rc::new(t)))
        }
        Value::Global(Known::RebuildParameter) => match args_v.into_iter().next() {
            Some(t @ (Value::Tensor(_) | Value::Refused(_))) => Ok(t),
            Some(other) => Err(format!("a parameter rebuilt from {}", other.describe())),
            None => Err("a parameter rebuilt from nothing".into()),
        },
        Value::Global(g @ (Known::StorageClass(_) | Known::Dtype(_))) => {
            Err(format!("the pickle calls {g:?}, which a state dict never does"))
        }
        other => Err(format!(
            "the pickle calls {}, which is not callable",
            other.describe()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(bytes: &[u8]) -> R<Value> {
        let mut pos = 0;
        unpickle(bytes, &mut pos, &mut |_| Err("no persistent ids here".into()))
    }

    #[test]
    fn builds_nested_containers_with_memo_sharing() {
        // pickle.dumps({'a': [1, 2.5, 'x'], 'b': (True, None)}, protocol=2)
        let bytes = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01G@\x04\x00\x00\x00\x00\x00\x00X\x01\x00\x00\x00xq\x03eX\x01\x00\x00\x00bq\x04\x88N\x86q\x05u.";
        let v = run(bytes).unwrap();
        let Value::Dict(d) = v else { panic!("not a dict") };
        let d = d.borrow();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].0.as_str(), Some("a"));
        let items = d[0].1.items().unwrap();
        assert_eq!(items[0].as_int(), Some(1));
        assert!(matches!(items[1], Value::Float(f) if f == 2.5));
        assert_eq!(items[2].as_str(), Some("x"));
        let t = d[1].1.items().unwrap();
        assert!(matches!(t[0], Value::Bool(true)) && matches!(t[1], Value::None));
    }

    #[test]
    fn unknown_globals_are_inert_and_named() {
        // pickle.dumps of an object whose __reduce__ is (os.system, ('echo pwned',)), protocol 2.
        let bytes = b"\x80\x02cposix\nsystem\nq\x00X\n\x00\x00\x00echo pwnedq\x01\x85q\x02Rq\x03.";
        match run(bytes).unwrap() {
            Value::Refused(name) => assert_eq!(name.as_str(), "posix.system"),
            other => panic!("expected a refused value, got {}", other.describe()),
        }
    }

    #[test]
    fn class_instantiating_opcodes_are_refused() {
        let err = run(b"(ios\nsystem\nS'echo'\n.").unwrap_err();
        assert!(err.contains("refused"), "{err}");
    }

    #[test]
    fn truncated_and_garbage_input_fail_cleanly() {
        let err = run(b"\x80\x02}q\x00(X\x05\x00\x00\x00ab").unwrap_err();
        assert!(err.contains("truncated"), "{err}");
        let err = run(b"\xffnot a pickle").unwrap_err();
        assert!(err.contains("not a pickle"), "{err}");
        let err = run(b"").unwrap_err();
        assert!(err.contains("truncated"), "{err}");
    }

    #[test]
    fn long1_is_signed_little_endian() {
        // pickle.dumps(-2**40, protocol=2) == b'\x80\x02\x8a\x06\x00\x00\x00\x00\x00\xff.'
        let v = run(b"\x80\x02\x8a\x06\x00\x00\x00\x00\x00\xff.").unwrap();
        assert_eq!(v.as_int(), Some(-(1i64 << 40)));
    }
}
