//! Record fields only JSON can carry: `serde_json::Value` needs a
//! self-describing format, and flow-model types leave absent fields out.
//! They serialize as themselves in human-readable formats (the API's JSON)
//! and as their JSON text in binary ones, so the store can keep run and
//! task records in bincode. Use with `#[serde(with = "json_text")]`, or
//! `json_text::option` for an `Option`.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde::ser::{self, Serializer};
use serde::{Deserialize, Serialize};

pub fn serialize<T: Serialize, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    if serializer.is_human_readable() {
        value.serialize(serializer)
    } else {
        Text(value).serialize(serializer)
    }
}

pub fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<T, D::Error> {
    if deserializer.is_human_readable() {
        T::deserialize(deserializer)
    } else {
        deserializer.deserialize_str(TextVisitor(PhantomData))
    }
}

pub mod option {
    use super::*;

    pub fn serialize<T: Serialize, S: Serializer>(
        value: &Option<T>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            _ if serializer.is_human_readable() => value.serialize(serializer),
            Some(value) => serializer.serialize_some(&Text(value)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<T>, D::Error> {
        if deserializer.is_human_readable() {
            Option::<T>::deserialize(deserializer)
        } else {
            Ok(Option::<FromText<T>>::deserialize(deserializer)?.map(|text| text.0))
        }
    }
}

/// A value written as its JSON text.
struct Text<'a, T>(&'a T);

impl<T: Serialize> Serialize for Text<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text = serde_json::to_string(self.0).map_err(ser::Error::custom)?;
        serializer.serialize_str(&text)
    }
}

/// A value read from its JSON text.
struct FromText<T>(T);

impl<'de, T: DeserializeOwned> Deserialize<'de> for FromText<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_str(TextVisitor(PhantomData))
            .map(FromText)
    }
}

struct TextVisitor<T>(PhantomData<T>);

impl<T: DeserializeOwned> Visitor<'_> for TextVisitor<T> {
    type Value = T;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("the JSON text of a value")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        // Any depth: what was stored must read back (see `limits`).
        crate::limits::from_stored_text(text.as_bytes()).map_err(E::custom)
    }
}
