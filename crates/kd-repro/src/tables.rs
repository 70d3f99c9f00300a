//! The registry of reproduction tables. Each table is a pair of TOML experiments (quick and
//! paper scale) compiled into the binary, so `kd reproduce <table>` works from any folder; a
//! `--config FILE` replaces the embedded experiment.

/// A reproduction table.
pub struct TableDef {
    /// Name used on the command line.
    pub name: &'static str,
    /// One line for `--list`.
    pub about: &'static str,
    /// Quick-scale experiment (TOML).
    pub quick: &'static str,
    /// Paper-scale experiment (TOML).
    pub paper: &'static str,
}

/// Every table the runner knows.
pub const TABLES: &[TableDef] = &[TableDef {
    name: "cifar100",
    about: "resnet32x4 → resnet8x4: teacher, student (no KD), KD, FitNets (RepDistiller numbers beside ours)",
    quick: include_str!("../../../configs/cifar100.quick.toml"),
    paper: include_str!("../../../configs/cifar100.paper.toml"),
}];

/// The table called `name`, or an error listing the known ones.
pub fn find(name: &str) -> anyhow::Result<&'static TableDef> {
    TABLES.iter().find(|t| t.name == name).ok_or_else(|| {
        let names: Vec<&str> = TABLES.iter().map(|t| t.name).collect();
        anyhow::anyhow!("unknown table {name:?}; known tables: {}", names.join(", "))
    })
}

/// The `--list` text.
pub fn listing() -> String {
    TABLES
        .iter()
        .map(|t| format!("{:<12} {}\n", t.name, t.about))
        .collect()
}
