//! Reads one table of the configuration field by field, so that one run reports every problem
//! (with its key path) instead of stopping at the first, and reports unknown keys as errors.

use crate::secret::Secret;
use config::{Value, ValueKind};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// `text` cut to 60 characters, for quoting a wrong value back in a message.
pub fn clip(text: &str) -> String {
    let mut out: String = text.chars().take(60).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

/// One problem in the configuration, with the dotted key path it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The dotted key path, such as `listener.smtp.upstream`.
    pub path: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A configuration value out of a fixed set, with the set spelled as the file spells it.
pub trait Choices: DeserializeOwned {
    /// Every valid value.
    const VALUES: &'static [&'static str];
}

/// Where problems are collected while a configuration is read, and what relative paths in it
/// are relative to.
#[derive(Debug, Default)]
pub struct Problems(pub Vec<Problem>, pub Option<PathBuf>);

impl Problems {
    /// `path` made absolute against the configuration file's directory; a configuration read
    /// from a string (tests) keeps its paths as given.
    pub fn resolve(&self, path: PathBuf) -> PathBuf {
        match &self.1 {
            Some(base) if path.is_relative() => base.join(path),
            _ => path,
        }
    }

    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }
}

/// A table being read. Every key that is read is removed; what is left at [`Table::finish`] is
/// unknown and reported.
pub struct Table<'p> {
    path: String,
    entries: BTreeMap<String, Value>,
    problems: &'p mut Problems,
}

impl<'p> Table<'p> {
    pub fn new(path: impl Into<String>, value: Value, problems: &'p mut Problems) -> Option<Self> {
        let path = path.into();
        match value.kind {
            ValueKind::Table(map) => Some(Table {
                path,
                entries: map.into_iter().collect(),
                problems,
            }),
            _ => {
                problems.push(path, "expected a table");
                None
            }
        }
    }

    pub fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub fn problem(&mut self, key: &str, message: impl Into<String>) {
        let path = self.key_path(key);
        self.problems.push(path, message);
    }

    pub fn problems(&mut self) -> &mut Problems {
        self.problems
    }

    pub fn has(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// Takes a raw value out of the table.
    pub fn take_value(&mut self, key: &str) -> Option<Value> {
        self.entries.remove(key)
    }

    /// An optional value of type `T`; a value of the wrong type is a problem.
    pub fn optional<T: DeserializeOwned>(&mut self, key: &str) -> Option<T> {
        let value = self.entries.remove(key)?;
        match value.try_deserialize::<T>() {
            Ok(v) => Some(v),
            Err(e) => {
                self.problem(key, describe_error(&e));
                None
            }
        }
    }

    /// An optional value out of a fixed set: a wrong one is a problem that lists the valid
    /// values (the deserializer's own message names neither).
    pub fn choice<T: Choices>(&mut self, key: &str) -> Option<T> {
        let value = self.entries.remove(key)?;
        let given = value.clone().into_string().unwrap_or_default();
        match value.try_deserialize::<T>() {
            Ok(v) => Some(v),
            Err(_) => {
                self.problem(
                    key,
                    format!(
                        "{:?} is not a valid value; valid values are: {}",
                        clip(&given),
                        T::VALUES.join(", ")
                    ),
                );
                None
            }
        }
    }

    /// A required value out of a fixed set (see [`Table::choice`]).
    pub fn required_choice<T: Choices>(&mut self, key: &str) -> Option<T> {
        if !self.has(key) {
            self.problem(key, format!("missing (one of: {})", T::VALUES.join(", ")));
            return None;
        }
        self.choice(key)
    }

    /// A required value; a missing one is a problem with `hint` as its explanation.
    pub fn required<T: DeserializeOwned>(&mut self, key: &str, hint: &str) -> Option<T> {
        if !self.has(key) {
            self.problem(key, format!("missing ({hint})"));
            return None;
        }
        self.optional(key)
    }

    /// An optional path, made absolute against the configuration file's directory.
    pub fn path(&mut self, key: &str) -> Option<PathBuf> {
        let p: PathBuf = self.optional(key)?;
        Some(self.problems.resolve(p))
    }

    /// A secret given inline as `key` or in a file as `key_file` (one or the other). The file's
    /// content is the secret, without a trailing newline.
    pub fn secret(&mut self, key: &str) -> Option<Secret> {
        let file_key = format!("{key}_file");
        let inline: Option<String> = self.optional(key);
        let file = self.path(&file_key);
        match (inline, file) {
            (Some(_), Some(_)) => {
                self.problem(key, format!("give either {key} or {file_key}, not both"));
                None
            }
            (Some(v), None) => Some(Secret::new(v)),
            (None, Some(path)) => match std::fs::read_to_string(&path) {
                Ok(mut s) => {
                    let trimmed = s.trim_end_matches(['\r', '\n']).len();
                    s.truncate(trimmed);
                    Some(Secret::new(s))
                }
                Err(e) => {
                    self.problem(&file_key, format!("cannot read {}: {e}", path.display()));
                    None
                }
            },
            (None, None) => None,
        }
    }

    /// The names of the sub-tables (for `[listener.NAME]` style sections), taken out in order.
    pub fn take_all(&mut self) -> Vec<(String, Value)> {
        std::mem::take(&mut self.entries).into_iter().collect()
    }

    /// Reports every key that was not read.
    pub fn finish(self) {
        for key in self.entries.keys() {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            self.problems.push(path, "unknown key");
        }
    }
}

/// The `config` crate's messages carry its own key context; keep only the useful part.
fn describe_error(e: &config::ConfigError) -> String {
    let text = e.to_string();
    match text.split_once(" for key") {
        Some((head, _)) => head.to_owned(),
        None => text,
    }
}
