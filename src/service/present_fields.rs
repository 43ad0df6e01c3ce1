//! The names of the fields a message's JSON form would carry, read from its
//! `Serialize` impl without serialising a single value: the trail names
//! what was read, and building the whole JSON (PII included) to learn
//! that cost a read more than sealing its record.

use serde::ser::{self, Impossible, Serialize, SerializeStruct, Serializer};

#[derive(Debug, thiserror::Error)]
#[error("not a struct")]
pub struct NotAStruct;

impl ser::Error for NotAStruct {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        NotAStruct
    }
}

/// The JSON names of the fields `message` fills (pbjson leaves out the
/// ones at their default), in the order its impl writes them; empty for
/// anything that is not a struct.
pub fn json_names<T: Serialize>(message: &T) -> Vec<&'static str> {
    message.serialize(Names(Vec::new())).unwrap_or_default()
}

struct Names(Vec<&'static str>);

impl SerializeStruct for Names {
    type Ok = Vec<&'static str>;
    type Error = NotAStruct;

    fn serialize_field<V: ?Sized + Serialize>(&mut self, key: &'static str, _: &V) -> Result<(), NotAStruct> {
        self.0.push(key);
        Ok(())
    }

    fn end(self) -> Result<Self::Ok, NotAStruct> {
        Ok(self.0)
    }
}

macro_rules! not_a_struct {
    ($($name:ident($($arg:ty),*) -> $ret:ty;)*) => {
        $(fn $name(self, $(_: $arg),*) -> Result<$ret, NotAStruct> { Err(NotAStruct) })*
    };
}

impl Serializer for Names {
    type Ok = Vec<&'static str>;
    type Error = NotAStruct;
    type SerializeSeq = Impossible<Self::Ok, NotAStruct>;
    type SerializeTuple = Impossible<Self::Ok, NotAStruct>;
    type SerializeTupleStruct = Impossible<Self::Ok, NotAStruct>;
    type SerializeTupleVariant = Impossible<Self::Ok, NotAStruct>;
    type SerializeMap = Impossible<Self::Ok, NotAStruct>;
    type SerializeStruct = Self;
    type SerializeStructVariant = Impossible<Self::Ok, NotAStruct>;

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, NotAStruct> {
        Ok(self)
    }

    not_a_struct! {
        serialize_bool(bool) -> Self::Ok;
        serialize_i8(i8) -> Self::Ok;
        serialize_i16(i16) -> Self::Ok;
        serialize_i32(i32) -> Self::Ok;
        serialize_i64(i64) -> Self::Ok;
        serialize_u8(u8) -> Self::Ok;
        serialize_u16(u16) -> Self::Ok;
        serialize_u32(u32) -> Self::Ok;
        serialize_u64(u64) -> Self::Ok;
        serialize_f32(f32) -> Self::Ok;
        serialize_f64(f64) -> Self::Ok;
        serialize_char(char) -> Self::Ok;
        serialize_str(&str) -> Self::Ok;
        serialize_bytes(&[u8]) -> Self::Ok;
        serialize_none() -> Self::Ok;
        serialize_unit() -> Self::Ok;
        serialize_unit_struct(&'static str) -> Self::Ok;
        serialize_unit_variant(&'static str, u32, &'static str) -> Self::Ok;
        serialize_seq(Option<usize>) -> Self::SerializeSeq;
        serialize_tuple(usize) -> Self::SerializeTuple;
        serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct;
        serialize_tuple_variant(&'static str, u32, &'static str, usize) -> Self::SerializeTupleVariant;
        serialize_map(Option<usize>) -> Self::SerializeMap;
        serialize_struct_variant(&'static str, u32, &'static str, usize) -> Self::SerializeStructVariant;
    }

    fn serialize_some<V: ?Sized + Serialize>(self, value: &V) -> Result<Self::Ok, NotAStruct> {
        value.serialize(self)
    }

    fn serialize_newtype_struct<V: ?Sized + Serialize>(
        self,
        _: &'static str,
        value: &V,
    ) -> Result<Self::Ok, NotAStruct> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<V: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &V,
    ) -> Result<Self::Ok, NotAStruct> {
        Err(NotAStruct)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    /// The same names as the keys of the message's whole JSON.
    #[test]
    fn names_are_the_json_keys() {
        let user = pb::User {
            users_id: "u".into(),
            username: "bob".into(),
            email: Some(pb::Email { primary: "b@example.com".into(), ..Default::default() }),
            dob: "1970-01-01".into(),
            ..Default::default()
        };
        let mut from_json: Vec<String> = match serde_json::to_value(&user).unwrap() {
            serde_json::Value::Object(m) => m.keys().cloned().collect(),
            other => panic!("{other}"),
        };
        let mut names: Vec<String> = json_names(&user).into_iter().map(str::to_owned).collect();
        from_json.sort();
        names.sort();
        assert_eq!(names, from_json);
        assert_eq!(names, ["dob", "email", "username", "usersId"]);
        assert!(json_names(&pb::User::default()).is_empty());
        assert!(json_names(&"a string").is_empty());
    }
}
