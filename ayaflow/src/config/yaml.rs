//! The YAML file (`--config`): a mapping of option keys (see [`OPTIONS`]) to values, kept as
//! written so that `null` and wrong types get the options' own messages.

use std::collections::BTreeMap;

use serde_yaml_ng::Value;

use super::{
    ConfigError,
    options::{OPTIONS, OptionSpec},
    value::show_yaml,
};

/// The options a YAML file sets.
#[derive(Debug, Default)]
pub struct YamlFile {
    /// By option name: the key as written (an old key keeps its old spelling for messages) and
    /// the value.
    values: BTreeMap<&'static str, (String, Value)>,
    /// One line per deprecated key used, saying what to write instead.
    pub deprecations: Vec<String>,
}

impl YamlFile {
    /// Parses `text`; `origin` (the file's path, or `YAML text`) names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<YamlFile, ConfigError> {
        let yaml_error = |error: String| ConfigError::Yaml {
            origin: origin.to_owned(),
            error,
        };
        // An empty or comments-only file is "no options"; a list or a scalar deserves a clearer
        // message than a type error.
        let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| yaml_error(e.to_string()))?;
        let mapping = match doc {
            Value::Null => return Ok(YamlFile::default()),
            Value::Mapping(m) => m,
            other => {
                return Err(yaml_error(format!(
                    "expected a mapping of options, found {}",
                    show_yaml(&other)
                )));
            }
        };
        let mut file = YamlFile::default();
        for (key, value) in mapping {
            let Value::String(key) = key else {
                return Err(yaml_error(format!(
                    "a key must be an option name, found {}",
                    show_yaml(&key)
                )));
            };
            let (opt, old) = lookup(&key).ok_or_else(|| {
                let known: Vec<String> = OPTIONS
                    .iter()
                    .filter_map(|o| o.yaml_key())
                    .map(|k| format!("`{k}`"))
                    .collect();
                yaml_error(format!(
                    "unknown field `{key}`, expected one of {}",
                    known.join(", ")
                ))
            })?;
            if let Some((earlier, _)) = file.values.get(opt.name) {
                return Err(yaml_error(format!(
                    "`{key}` and `{earlier}` both set {}: keep only `{}`",
                    opt.name, opt.name
                )));
            }
            if old {
                file.deprecations.push(format!(
                    "{origin}: the YAML key `{key}` is deprecated, write `{}` instead (same \
                     value, same meaning)",
                    opt.name
                ));
            }
            file.values.insert(opt.name, (key, value));
        }
        Ok(file)
    }

    /// The key as written and the value of option `name`, if the file sets it.
    pub fn get(&self, name: &str) -> Option<(&str, &Value)> {
        self.values.get(name).map(|(k, v)| (k.as_str(), v))
    }
}

/// The option a YAML key sets, and whether the key is an old spelling.
fn lookup(key: &str) -> Option<(&'static OptionSpec, bool)> {
    OPTIONS.iter().find_map(|o| {
        if o.yaml_key() == Some(key) {
            Some((o, false))
        } else if o.old_yaml_keys.contains(&key) {
            Some((o, true))
        } else {
            None
        }
    })
}
