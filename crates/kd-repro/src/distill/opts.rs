//! `key=value` options from the command line, and overrides merged onto defaults, as TOML.
//!
//! Method options, network overrides and recipe overrides all end up as TOML tables that are
//! merged onto a default table and then deserialised by the same `deny_unknown_fields` types a
//! table's experiment file uses, so a typo is an error listing the known keys, and a value means
//! on the command line what it means in a file.

use anyhow::{bail, Context, Result};
use toml::{Table, Value};

/// Parses `key=value` pairs into a table. The value is read as a TOML value (`4`, `0.5`,
/// `true`, `"p3"`, `["p3", "p4"]`, `{ epochs = 1 }`), and as a plain string when it is not
/// one; a dotted key (`prefit.epochs=1`) sets a nested table. `flag` names the option in
/// errors.
pub fn parse_pairs(flag: &str, pairs: &[String]) -> Result<Table> {
    let mut out = Table::new();
    for pair in pairs {
        let Some((key, raw)) = pair.split_once('=') else {
            bail!("{flag} {pair:?}: expected key=value");
        };
        let key = key.trim();
        let parts: Vec<&str> = key.split('.').map(str::trim).collect();
        if parts
            .iter()
            .any(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        {
            bail!("{flag} {pair:?}: {key:?} is not an option name (letters, digits, _ and . only)");
        }
        let value = parse_value(raw.trim());
        let mut into = &mut out;
        for p in &parts[..parts.len() - 1] {
            let entry = into
                .entry(p.to_string())
                .or_insert_with(|| Value::Table(Table::new()));
            into = match entry {
                Value::Table(t) => t,
                _ => bail!("{flag} {pair:?}: {p:?} was given a value, so it cannot hold options"),
            };
        }
        into.insert(parts[parts.len() - 1].to_string(), value);
    }
    Ok(out)
}

/// A command-line value as TOML, or the text itself as a string.
fn parse_value(raw: &str) -> Value {
    toml::from_str::<Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_string()))
}

/// Merges `over` onto `base`: tables merge key by key, anything else is replaced. A table whose
/// `kind` differs from the one it replaces (another schedule, another optimiser) replaces it
/// whole, since the old kind's keys mean nothing to the new one.
pub fn merge(base: &mut Table, over: &Table) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(Value::Table(b)), Value::Table(o)) if same_kind(b, o) => merge(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

fn same_kind(a: &Table, b: &Table) -> bool {
    match (a.get("kind"), b.get("kind")) {
        (Some(x), Some(y)) => x == y,
        _ => true,
    }
}

/// `value` (a serialisable config) as a TOML table.
pub fn to_table(what: &str, value: &impl serde::Serialize) -> Result<Table> {
    match Value::try_from(value).with_context(|| format!("{what} as TOML"))? {
        Value::Table(t) => Ok(t),
        other => bail!("{what}: expected a table, got {other}"),
    }
}

/// Deserialises `table` as `T`; errors name `what` and keep serde's list of known keys.
pub fn from_table<T: serde::de::DeserializeOwned>(what: &str, table: Table) -> Result<T> {
    Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| anyhow::anyhow!("{what}: {}", e.message().trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[&str]) -> Result<Table> {
        parse_pairs(
            "--method-opt",
            &p.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
    }

    #[test]
    fn values_are_toml_and_dotted_keys_nest() {
        let t = pairs(&[
            "tau=4",
            "alpha=0.5",
            "on=true",
            "tap=p3",
            "taps=[\"p3\", \"p4\"]",
            "prefit.epochs=2",
        ])
        .unwrap();
        assert_eq!(t["tau"], Value::Integer(4));
        assert_eq!(t["alpha"], Value::Float(0.5));
        assert_eq!(t["on"], Value::Boolean(true));
        assert_eq!(t["tap"], Value::String("p3".into()));
        assert_eq!(t["taps"].as_array().unwrap().len(), 2);
        assert_eq!(t["prefit"]["epochs"], Value::Integer(2));
    }

    #[test]
    fn malformed_pairs_name_the_flag_and_the_pair() {
        let e = pairs(&["tau"]).unwrap_err().to_string();
        assert!(e.contains("--method-opt \"tau\": expected key=value"), "{e}");
        let e = pairs(&["a b=1"]).unwrap_err().to_string();
        assert!(e.contains("is not an option name"), "{e}");
        let e = pairs(&["a=1", "a.b=2"]).unwrap_err().to_string();
        assert!(e.contains("cannot hold options"), "{e}");
    }

    #[test]
    fn merge_keeps_defaults_and_replaces_other_kinds() {
        let mut base: Table =
            toml::from_str("epochs = 10\nlr = { lr = 0.05, schedule = { kind = \"poly\", power = 0.9 } }")
                .unwrap();
        let over: Table = toml::from_str("epochs = 2\nlr = { schedule = { kind = \"cosine\" } }").unwrap();
        merge(&mut base, &over);
        assert_eq!(base["epochs"], Value::Integer(2));
        assert_eq!(base["lr"]["lr"], Value::Float(0.05));
        let schedule = base["lr"]["schedule"].as_table().unwrap();
        assert_eq!(schedule.len(), 1, "{schedule:?}");
        let over: Table = toml::from_str("lr = { lr = 0.1 }").unwrap();
        merge(&mut base, &over);
        assert_eq!(base["lr"]["lr"], Value::Float(0.1));
        assert_eq!(base["lr"]["schedule"]["kind"], Value::String("cosine".into()));
    }

    #[test]
    fn an_unknown_key_lists_the_known_ones() {
        let t: Table = toml::from_str("kind = \"kd\"\ntaau = 4.0\nce_weight = 0.1\nkd_weight = 0.9").unwrap();
        let e = from_table::<crate::methods::Method>("method kd", t)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("taau") && e.contains("tau") && e.contains("kd_weight"),
            "{e}"
        );
    }
}
