//! Typed fields of a JSON object, read strictly: an absent or `null` key is `None`, a key of the wrong type is an
//! error naming the key and what was found. The configuration readers (PEFT's and mlx-lm's `adapter_config.json`,
//! Hugging Face `config.json`) share it, each turning a field error into its own error type.

use std::path::Path;

use serde_json::{Map, Value};

/// A JSON text that does not parse, where (1-based line and column) and why.
pub(crate) struct Syntax {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Parse `text` as JSON.
pub(crate) fn parse(text: &str) -> Result<Value, Syntax> {
    serde_json::from_str(text).map_err(|e| Syntax {
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })
}

/// The fields of one JSON object in the file `path`; `error(path, key, message)` makes a reader's error.
pub(crate) struct Fields<'a, E> {
    path: &'a Path,
    map: &'a Map<String, Value>,
    /// Prepended to every key named in an error (`lora_parameters.` for a nested object).
    prefix: &'a str,
    error: fn(&Path, String, String) -> E,
}

impl<'a, E> Fields<'a, E> {
    /// The fields of `map`, read from `path`.
    pub fn new(
        path: &'a Path,
        map: &'a Map<String, Value>,
        error: fn(&Path, String, String) -> E,
    ) -> Self {
        Fields {
            path,
            map,
            prefix: "",
            error,
        }
    }

    /// The fields of a nested object `map`, whose keys are reported as `prefix.key`.
    pub fn nested(&self, map: &'a Map<String, Value>, prefix: &'a str) -> Self {
        Fields {
            path: self.path,
            map,
            prefix,
            error: self.error,
        }
    }

    /// An error about `key`.
    pub fn error(&self, key: &str, message: String) -> E {
        (self.error)(self.path, format!("{}{key}", self.prefix), message)
    }

    /// The value of `key`, unless absent or `null`.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// A string.
    pub fn string(&self, key: &str) -> Result<Option<String>, E> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.error(key, format!("expected a string, found {other}"))),
        }
    }

    /// A list of strings (absent: empty), described as `what` in errors ("a list of names").
    pub fn strings(&self, key: &str, what: &str) -> Result<Option<Vec<String>>, E> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(String::from)
                        .ok_or_else(|| self.error(key, format!("expected {what}, found {v}")))
                })
                .collect::<Result<_, _>>()
                .map(Some),
            Some(other) => Err(self.error(key, format!("expected {what}, found {other}"))),
        }
    }

    /// `true` or `false`.
    pub fn boolean(&self, key: &str) -> Result<Option<bool>, E> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.error(key, format!("expected true or false, found {other}"))),
        }
    }

    /// A finite number.
    pub fn number(&self, key: &str) -> Result<Option<f64>, E> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .map(Some)
                .ok_or_else(|| self.error(key, format!("expected a number, found {v}"))),
        }
    }

    /// A positive integer that fits a u32 (a LoRA rank).
    pub fn positive_u32(&self, key: &str) -> Result<Option<u32>, E> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|r| u32::try_from(r).ok())
                .filter(|&r| r > 0)
                .map(Some)
                .ok_or_else(|| self.error(key, format!("expected a positive integer, found {v}"))),
        }
    }

    /// The first of `keys` present, as a non-negative integer that fits a u32 (configs name one size many ways).
    pub fn first_u32(&self, keys: &[&str]) -> Result<Option<u32>, E> {
        for key in keys {
            if let Some(v) = self.get(key) {
                return v
                    .as_u64()
                    .and_then(|x| u32::try_from(x).ok())
                    .map(Some)
                    .ok_or_else(|| {
                        self.error(key, format!("expected a non-negative integer, found {v}"))
                    });
            }
        }
        Ok(None)
    }
}
