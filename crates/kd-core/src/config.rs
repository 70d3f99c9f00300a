//! TOML configuration loading.
//!
//! Every config struct uses `deny_unknown_fields`, so a typo is an error rather than a silently
//! ignored knob; the error names the file and the key (toml's message carries the key and line).

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{KdError, Result};

/// Parses `text` as `T`, attributing errors to `path`.
pub fn parse<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T> {
    toml::from_str(text).map_err(|e| KdError::Config {
        path: path.to_path_buf(),
        msg: e.to_string().trim().to_string(),
    })
}

/// Reads and parses the TOML file at `path`.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| KdError::Config {
        path: path.into(),
        msg: e.to_string(),
    })?;
    parse(path, &text)
}

/// Serialises `value` as TOML.
pub fn to_string<T: Serialize>(value: &T) -> Result<String> {
    toml::to_string_pretty(value).map_err(|e| KdError::invalid(format!("cannot serialise config: {e}")))
}

/// Writes `value` as TOML to `path` atomically.
pub fn save<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    crate::io::write_atomic(path, to_string(value)?.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Demo {
        epochs: usize,
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let err = parse::<Demo>(Path::new("cfg/x.toml"), "epochs = 3\nepocs = 4\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cfg/x.toml") && err.contains("epocs"), "{err}");
    }
}
