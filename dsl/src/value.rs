//! The values that cross a script call's boundary: arguments in, the result out.
//!
//! [`Value`] is what a caller sends and gets back (the gRPC API carries it as JSON); inside
//! the script it is a Rhai `Dynamic`. Conversions refuse what the other side cannot hold
//! (function pointers, custom types) with a message, never by guessing.

use std::collections::BTreeMap;

use rhai::{Array, Blob, Dynamic, Map};
use serde::{Deserialize, Serialize};

/// A script argument or result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// Nothing (Rhai's `()`, JSON's `null`).
    Unit,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A string.
    Str(String),
    /// Bytes (a Rhai blob).
    Bytes(Vec<u8>),
    /// An array.
    Array(Vec<Value>),
    /// A map with string keys, in key order.
    Map(BTreeMap<String, Value>),
}

impl Value {
    /// The script's view of it.
    pub fn to_dynamic(&self) -> Dynamic {
        match self {
            Value::Unit => Dynamic::UNIT,
            Value::Bool(b) => Dynamic::from_bool(*b),
            Value::Int(i) => Dynamic::from_int(*i),
            Value::Float(f) => Dynamic::from_float(*f),
            Value::Str(s) => Dynamic::from(s.clone()),
            Value::Bytes(b) => Dynamic::from_blob(b.clone()),
            Value::Array(a) => Dynamic::from_array(a.iter().map(Value::to_dynamic).collect()),
            Value::Map(m) => {
                let mut out = Map::new();
                for (k, v) in m {
                    out.insert(k.as_str().into(), v.to_dynamic());
                }
                Dynamic::from_map(out)
            }
        }
    }

    /// What a script returned, or an error naming the type it cannot carry.
    pub fn from_dynamic(d: &Dynamic) -> Result<Value, String> {
        if d.is_unit() {
            return Ok(Value::Unit);
        }
        if let Ok(b) = d.as_bool() {
            return Ok(Value::Bool(b));
        }
        if let Ok(i) = d.as_int() {
            return Ok(Value::Int(i));
        }
        if let Ok(f) = d.as_float() {
            return Ok(Value::Float(f));
        }
        if d.is_string() {
            return Ok(Value::Str(d.clone().into_string().unwrap_or_default()));
        }
        if d.is_char() {
            return Ok(Value::Str(d.to_string()));
        }
        if d.is_blob() {
            return Ok(Value::Bytes(d.clone().cast::<Blob>()));
        }
        if d.is_array() {
            let a = d.clone().cast::<Array>();
            return a
                .iter()
                .map(Value::from_dynamic)
                .collect::<Result<_, _>>()
                .map(Value::Array);
        }
        if d.is_map() {
            let m = d.clone().cast::<Map>();
            let mut out = BTreeMap::new();
            for (k, v) in &m {
                out.insert(k.to_string(), Value::from_dynamic(v)?);
            }
            return Ok(Value::Map(out));
        }
        Err(format!("a script cannot return a {}", d.type_name()))
    }

    /// The value at `key` of a map.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(m) => m.get(key),
            _ => None,
        }
    }

    /// The integer it holds.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The string it holds.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_dynamic() {
        let mut m = BTreeMap::new();
        m.insert("a".to_string(), Value::Int(-3));
        m.insert("b".to_string(), Value::Bytes(vec![0, 255]));
        let v = Value::Array(vec![
            Value::Unit,
            Value::Bool(true),
            Value::Float(1.5),
            Value::Str("x".into()),
            Value::Map(m),
        ]);
        assert_eq!(Value::from_dynamic(&v.to_dynamic()), Ok(v));
    }
}
