//! Encoding user values as JSON that can be read back.
//!
//! `serde_json::to_value` accepts two kinds of value that serde_json cannot read back: a
//! non-finite float (NaN or an infinity), which it writes as `null`, and a value nested
//! deeper than its reader's limit of 127 arrays and objects. Stored, either one would fail
//! every later read: an entity whose state cannot be decoded, a message that cannot be
//! loaded at start-up. [`to_value`] builds the same `Value` but refuses both, so that a write
//! fails instead.
//!
//! It is `serde_json::value::Serializer` behind a wrapper ([`Checked`]) that checks every
//! float and counts the nesting of arrays and objects. Each element of a compound is handed
//! to the inner serializer wrapped in [`Guarded`], which serializes it through a new
//! [`Checked`], so nested values are checked as well. Every value carries its [`Path`] from
//! the root, a chain of small frames on the stack, formatted only into an error message.

use std::fmt::{self, Display};

use serde::ser::{
    self, Serialize, SerializeMap, SerializeSeq, SerializeStruct, SerializeStructVariant,
    SerializeTuple, SerializeTupleStruct, SerializeTupleVariant, Serializer,
};
use serde_json::Value;

/// The deepest nesting of arrays and objects a stored user value may have: a state, an input,
/// a result or an output. serde_json reads at most 127 levels, and a value may be stored a
/// few levels down inside a message or an orchestration history event (at most 4 today), so
/// this limit leaves room for those wrappers.
pub(crate) const MAX_DEPTH: usize = 100;

/// `serde_json::to_value`, except that a value serde_json could not read back is an error: one
/// that contains a non-finite `f32` or `f64` (the message says which and where), or one whose
/// arrays and objects nest deeper than [`MAX_DEPTH`].
pub(crate) fn to_value<T: Serialize + ?Sized>(value: &T) -> Result<Value, serde_json::Error> {
    let root = Path {
        parent: None,
        step: Step::Root,
        depth: 0,
    };
    value.serialize(Checked {
        inner: serde_json::value::Serializer,
        path: &root,
    })
}

/// Where a value sits inside the value being encoded.
#[derive(Clone, Copy)]
struct Path<'a> {
    /// The path of the enclosing value, `None` at the root.
    parent: Option<&'a Path<'a>>,
    /// The last step, from the parent to this value.
    step: Step<'a>,
    /// How many arrays and objects enclose this value.
    depth: usize,
}

/// One step of a [`Path`].
#[derive(Clone, Copy)]
enum Step<'a> {
    /// The value being encoded itself.
    Root,
    /// A struct field.
    Field(&'static str),
    /// An element of a sequence or tuple.
    Index(usize),
    /// The value under a map key.
    Key(&'a (dyn KeyText + 'a)),
    /// The value under a map key that is not known here.
    UnknownKey,
    /// The content of an enum variant, encoded as `{"Variant": ..}`.
    Variant(&'static str),
}

impl Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut steps = Vec::new();
        let mut path = Some(self);
        while let Some(p) = path {
            steps.push(p.step);
            path = p.parent;
        }
        for step in steps.iter().rev() {
            match step {
                Step::Root => {}
                Step::Field(name) | Step::Variant(name) => write!(f, ".{name}")?,
                Step::Index(index) => write!(f, "[{index}]")?,
                Step::Key(key) => write!(f, "[{}]", key.text())?,
                Step::UnknownKey => f.write_str("[?]")?,
            }
        }
        Ok(())
    }
}

impl<'a> Path<'a> {
    /// Where this is, for an error message: ` at .a[1]`, or nothing at the root.
    fn location(&self) -> String {
        let mut text = self.to_string();
        if !text.is_empty() {
            text.insert_str(0, " at ");
        }
        text
    }

    /// The error for a non-finite float of type `kind`.
    fn non_finite<E: ser::Error>(&self, kind: &str, value: impl Display) -> E {
        E::custom(format_args!(
            "{kind} value {value}{} cannot be stored: JSON has no NaN or infinity",
            self.location()
        ))
    }

    /// The path of a value inside this one, one step further.
    fn child(&'a self, step: Step<'a>) -> Path<'a> {
        Path {
            parent: Some(self),
            step,
            depth: self.depth + 1,
        }
    }
}

/// A map key, rendered only for an error message.
trait KeyText {
    /// The key as JSON text.
    fn text(&self) -> String;
}

/// A map key of any type, as a sized [`KeyText`].
struct KeyRef<'a, K: ?Sized>(&'a K);

impl<K: Serialize + ?Sized> KeyText for KeyRef<'_, K> {
    fn text(&self) -> String {
        serde_json::to_string(self.0).unwrap_or_else(|_| "?".to_string())
    }
}

/// A value handed to the inner serializer: it serializes itself through [`Checked`].
struct Guarded<'a, T: ?Sized> {
    value: &'a T,
    path: Path<'a>,
}

impl<T: Serialize + ?Sized> Serialize for Guarded<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(Checked {
            inner: serializer,
            path: &self.path,
        })
    }
}

/// A serializer that checks floats and nesting, then hands each value to `inner`.
struct Checked<'a, S> {
    inner: S,
    path: &'a Path<'a>,
}

impl<S: Serializer> Checked<'_, S> {
    /// Fails if opening `levels` arrays or objects here nests deeper than [`MAX_DEPTH`].
    fn open(&self, levels: usize) -> Result<(), S::Error> {
        if self.path.depth + levels > MAX_DEPTH {
            return Err(ser::Error::custom(format_args!(
                "the value nests arrays and objects more than {MAX_DEPTH} levels deep, \
                 which cannot be stored"
            )));
        }
        Ok(())
    }
}

impl<'a, S: Serializer> Serializer for Checked<'a, S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = Seq<'a, S::SerializeSeq>;
    type SerializeTuple = Seq<'a, S::SerializeTuple>;
    type SerializeTupleStruct = Seq<'a, S::SerializeTupleStruct>;
    type SerializeTupleVariant = Seq<'a, S::SerializeTupleVariant>;
    type SerializeMap = Map<'a, S::SerializeMap>;
    type SerializeStruct = Struct<'a, S::SerializeStruct>;
    type SerializeStructVariant = Struct<'a, S::SerializeStructVariant>;

    fn serialize_f32(self, v: f32) -> Result<S::Ok, S::Error> {
        if !v.is_finite() {
            return Err(self.path.non_finite("f32", v));
        }
        self.inner.serialize_f32(v)
    }

    fn serialize_f64(self, v: f64) -> Result<S::Ok, S::Error> {
        if !v.is_finite() {
            return Err(self.path.non_finite("f64", v));
        }
        self.inner.serialize_f64(v)
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<S::Ok, S::Error> {
        // serde_json encodes bytes as an array of numbers.
        self.open(1)?;
        self.inner.serialize_bytes(v)
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<S::Ok, S::Error> {
        let path = *self.path;
        self.inner.serialize_some(&Guarded { value, path })
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        let path = *self.path;
        self.inner
            .serialize_newtype_struct(name, &Guarded { value, path })
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        variant_index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        // `{"Variant": value}`: one object.
        self.open(1)?;
        let path = self.path.child(Step::Variant(variant));
        self.inner
            .serialize_newtype_variant(name, variant_index, variant, &Guarded { value, path })
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Self::SerializeSeq, S::Error> {
        self.open(1)?;
        Ok(Seq::new(self.inner.serialize_seq(len)?, *self.path))
    }

    fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, S::Error> {
        self.open(1)?;
        Ok(Seq::new(self.inner.serialize_tuple(len)?, *self.path))
    }

    fn serialize_tuple_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleStruct, S::Error> {
        self.open(1)?;
        Ok(Seq::new(
            self.inner.serialize_tuple_struct(name, len)?,
            *self.path,
        ))
    }

    fn serialize_tuple_variant(
        self,
        name: &'static str,
        variant_index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, S::Error> {
        // `{"Variant": [..]}`: an array inside an object.
        self.open(2)?;
        let inner = self
            .inner
            .serialize_tuple_variant(name, variant_index, variant, len)?;
        Ok(Seq::new(inner, self.path.child(Step::Variant(variant))))
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Self::SerializeMap, S::Error> {
        self.open(1)?;
        Ok(Map {
            inner: self.inner.serialize_map(len)?,
            path: *self.path,
        })
    }

    fn serialize_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStruct, S::Error> {
        self.open(1)?;
        Ok(Struct {
            inner: self.inner.serialize_struct(name, len)?,
            path: *self.path,
        })
    }

    fn serialize_struct_variant(
        self,
        name: &'static str,
        variant_index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, S::Error> {
        // `{"Variant": {..}}`: an object inside an object.
        self.open(2)?;
        let inner = self
            .inner
            .serialize_struct_variant(name, variant_index, variant, len)?;
        Ok(Struct {
            inner,
            path: self.path.child(Step::Variant(variant)),
        })
    }

    // The rest cannot hold a float or nest: passed on as they are.

    fn serialize_bool(self, v: bool) -> Result<S::Ok, S::Error> {
        self.inner.serialize_bool(v)
    }

    fn serialize_i8(self, v: i8) -> Result<S::Ok, S::Error> {
        self.inner.serialize_i8(v)
    }

    fn serialize_i16(self, v: i16) -> Result<S::Ok, S::Error> {
        self.inner.serialize_i16(v)
    }

    fn serialize_i32(self, v: i32) -> Result<S::Ok, S::Error> {
        self.inner.serialize_i32(v)
    }

    fn serialize_i64(self, v: i64) -> Result<S::Ok, S::Error> {
        self.inner.serialize_i64(v)
    }

    fn serialize_i128(self, v: i128) -> Result<S::Ok, S::Error> {
        self.inner.serialize_i128(v)
    }

    fn serialize_u8(self, v: u8) -> Result<S::Ok, S::Error> {
        self.inner.serialize_u8(v)
    }

    fn serialize_u16(self, v: u16) -> Result<S::Ok, S::Error> {
        self.inner.serialize_u16(v)
    }

    fn serialize_u32(self, v: u32) -> Result<S::Ok, S::Error> {
        self.inner.serialize_u32(v)
    }

    fn serialize_u64(self, v: u64) -> Result<S::Ok, S::Error> {
        self.inner.serialize_u64(v)
    }

    fn serialize_u128(self, v: u128) -> Result<S::Ok, S::Error> {
        self.inner.serialize_u128(v)
    }

    fn serialize_char(self, v: char) -> Result<S::Ok, S::Error> {
        self.inner.serialize_char(v)
    }

    fn serialize_str(self, v: &str) -> Result<S::Ok, S::Error> {
        self.inner.serialize_str(v)
    }

    fn serialize_none(self) -> Result<S::Ok, S::Error> {
        self.inner.serialize_none()
    }

    fn serialize_unit(self) -> Result<S::Ok, S::Error> {
        self.inner.serialize_unit()
    }

    fn serialize_unit_struct(self, name: &'static str) -> Result<S::Ok, S::Error> {
        self.inner.serialize_unit_struct(name)
    }

    fn serialize_unit_variant(
        self,
        name: &'static str,
        variant_index: u32,
        variant: &'static str,
    ) -> Result<S::Ok, S::Error> {
        self.inner
            .serialize_unit_variant(name, variant_index, variant)
    }

    fn collect_str<T: Display + ?Sized>(self, value: &T) -> Result<S::Ok, S::Error> {
        self.inner.collect_str(value)
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// A sequence, tuple, tuple struct or tuple variant being serialized: its elements are checked.
struct Seq<'a, C> {
    inner: C,
    /// The path of the array.
    path: Path<'a>,
    /// The index of the next element.
    index: usize,
}

impl<'a, C> Seq<'a, C> {
    fn new(inner: C, path: Path<'a>) -> Self {
        Self {
            inner,
            path,
            index: 0,
        }
    }
}

/// Implements one of the sequence-like compound traits for [`Seq`].
macro_rules! seq_impl {
    ($trait:ident, $method:ident) => {
        impl<C: $trait> $trait for Seq<'_, C> {
            type Ok = C::Ok;
            type Error = C::Error;

            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), C::Error> {
                self.index += 1;
                let path = self.path.child(Step::Index(self.index - 1));
                self.inner.$method(&Guarded { value, path })
            }

            fn end(self) -> Result<C::Ok, C::Error> {
                self.inner.end()
            }
        }
    };
}

seq_impl!(SerializeSeq, serialize_element);
seq_impl!(SerializeTuple, serialize_element);
seq_impl!(SerializeTupleStruct, serialize_field);
seq_impl!(SerializeTupleVariant, serialize_field);

/// A map being serialized: its values are checked. Its keys go to the inner serializer as
/// they are: serde_json refuses every key that is not a string, a number or a bool, and a
/// non-finite float key.
struct Map<'a, C> {
    inner: C,
    /// The path of the object.
    path: Path<'a>,
}

impl<C: SerializeMap> SerializeMap for Map<'_, C> {
    type Ok = C::Ok;
    type Error = C::Error;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), C::Error> {
        self.inner.serialize_key(key)
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), C::Error> {
        let path = self.path.child(Step::UnknownKey);
        self.inner.serialize_value(&Guarded { value, path })
    }

    fn serialize_entry<K: Serialize + ?Sized, V: Serialize + ?Sized>(
        &mut self,
        key: &K,
        value: &V,
    ) -> Result<(), C::Error> {
        let key_text = KeyRef(key);
        let path = self.path.child(Step::Key(&key_text));
        self.inner.serialize_entry(key, &Guarded { value, path })
    }

    fn end(self) -> Result<C::Ok, C::Error> {
        self.inner.end()
    }
}

/// A struct or struct variant being serialized: its fields are checked.
struct Struct<'a, C> {
    inner: C,
    /// The path of the object.
    path: Path<'a>,
}

/// Implements one of the struct-like compound traits for [`Struct`].
macro_rules! struct_impl {
    ($trait:ident) => {
        impl<C: $trait> $trait for Struct<'_, C> {
            type Ok = C::Ok;
            type Error = C::Error;

            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), C::Error> {
                let path = self.path.child(Step::Field(key));
                self.inner.serialize_field(key, &Guarded { value, path })
            }

            fn skip_field(&mut self, key: &'static str) -> Result<(), C::Error> {
                self.inner.skip_field(key)
            }

            fn end(self) -> Result<C::Ok, C::Error> {
                self.inner.end()
            }
        }
    };
}

struct_impl!(SerializeStruct);
struct_impl!(SerializeStructVariant);

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use serde::Serialize;
    use serde_json::{json, Value};

    use super::{to_value, MAX_DEPTH};
    use crate::id::EntityId;
    use crate::message::{Body, Outcome};
    use crate::orchestration::history::{Action, Event};

    /// The error message of encoding `value`, which must fail.
    fn refused<T: Serialize + ?Sized>(value: &T) -> String {
        match to_value(value) {
            Ok(value) => panic!("encoded as {value}, expected an error"),
            Err(err) => err.to_string(),
        }
    }

    /// How many arrays and objects nest in `value`.
    fn depth(value: &Value) -> usize {
        match value {
            Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
            Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// Serializes as bytes, which serde_json encodes as an array of numbers.
    struct Bytes(&'static [u8]);

    impl Serialize for Bytes {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.serialize_bytes(self.0)
        }
    }

    #[derive(Serialize)]
    enum Shape {
        Unit,
        Circle(f64),
        Pair(f64, f64),
        Point { x: f64, y: f64 },
    }

    #[derive(Serialize)]
    #[serde(tag = "type")]
    enum Tagged {
        Rect { w: f32, h: f32 },
    }

    #[derive(Serialize)]
    struct Inner {
        z: f64,
        #[serde(skip_serializing_if = "Option::is_none")]
        skipped: Option<u8>,
    }

    #[derive(Serialize)]
    struct Newtype(Vec<f64>);

    #[derive(Serialize)]
    struct Everything {
        unit: (),
        flag: bool,
        small: i8,
        big: u64,
        huge: i128,
        float: f32,
        double: f64,
        letter: char,
        text: String,
        none: Option<i32>,
        some: Option<Option<String>>,
        list: Vec<i64>,
        tuple: (u8, String, f64),
        map: BTreeMap<String, f64>,
        int_keys: HashMap<u32, bool>,
        shapes: Vec<Shape>,
        tagged: Tagged,
        newtype: Newtype,
        bytes: Bytes,
        json: Value,
        flat: Flat,
    }

    #[derive(Serialize)]
    struct Flat {
        a: u8,
        #[serde(flatten)]
        inner: Inner,
    }

    fn everything() -> Everything {
        Everything {
            unit: (),
            flag: true,
            small: -3,
            big: u64::MAX,
            huge: -5,
            float: 1.5,
            double: -0.25,
            letter: 'é',
            text: "hello \"world\"".into(),
            none: None,
            some: Some(Some("x".into())),
            list: vec![1, 2, 3],
            tuple: (7, "seven".into(), 7.5),
            map: BTreeMap::from([("a".into(), 1.0), ("b".into(), f64::MAX)]),
            int_keys: HashMap::from([(4, false)]),
            shapes: vec![
                Shape::Unit,
                Shape::Circle(2.0),
                Shape::Pair(1.0, 2.0),
                Shape::Point { x: 0.0, y: -1.0 },
            ],
            tagged: Tagged::Rect { w: 1.0, h: 2.0 },
            newtype: Newtype(vec![f64::MIN_POSITIVE]),
            bytes: Bytes(b"ab"),
            json: json!({"nested": [1, {"deep": null}], "n": 1.25}),
            flat: Flat {
                a: 1,
                inner: Inner {
                    z: 3.0,
                    skipped: None,
                },
            },
        }
    }

    #[test]
    fn ordinary_values_encode_as_serde_json_does() {
        let value = everything();
        assert_eq!(
            to_value(&value).unwrap(),
            serde_json::to_value(&value).unwrap()
        );
        for scalar in [json!(null), json!(1), json!("s"), json!([]), json!({})] {
            assert_eq!(to_value(&scalar).unwrap(), scalar);
        }
        assert_eq!(to_value("text").unwrap(), json!("text"));
        assert_eq!(to_value(&[1.5f64, -0.0]).unwrap(), json!([1.5, -0.0]));
    }

    #[test]
    fn a_non_finite_float_is_refused_naming_its_type_and_place() {
        assert_eq!(
            refused(&f64::INFINITY),
            "f64 value inf cannot be stored: JSON has no NaN or infinity"
        );
        assert!(refused(&f64::NAN).starts_with("f64 value NaN cannot"));
        assert!(refused(&f32::NEG_INFINITY).starts_with("f32 value -inf cannot"));
        assert!(refused(&Some(f32::NAN)).starts_with("f32 value NaN cannot"));
    }

    /// A change to [`everything`] that puts a non-finite float somewhere.
    type Change = fn(&mut Everything);

    #[test]
    fn a_non_finite_float_nested_anywhere_is_refused() {
        let cases: Vec<(Change, &str)> = vec![
            (|v| v.double = f64::NAN, "f64 value NaN at .double"),
            (|v| v.float = f32::INFINITY, "f32 value inf at .float"),
            (|v| v.tuple.2 = f64::NAN, "at .tuple[2]"),
            (
                |v| {
                    v.map.insert("b".into(), f64::NEG_INFINITY);
                },
                "f64 value -inf at .map[\"b\"]",
            ),
            (
                |v| v.shapes[1] = Shape::Circle(f64::NAN),
                "at .shapes[1].Circle",
            ),
            (
                |v| v.shapes[2] = Shape::Pair(0.0, f64::INFINITY),
                "at .shapes[2].Pair[1]",
            ),
            (
                |v| {
                    v.shapes[3] = Shape::Point {
                        x: 0.0,
                        y: f64::NAN,
                    }
                },
                "at .shapes[3].Point.y",
            ),
            (
                |v| {
                    v.tagged = Tagged::Rect {
                        w: f32::NAN,
                        h: 0.0,
                    }
                },
                "f32 value NaN at .tagged.w",
            ),
            (|v| v.newtype.0.push(f64::NAN), "at .newtype[1]"),
            (
                |v| v.flat.inner.z = f64::INFINITY,
                "f64 value inf at .flat[\"z\"]",
            ),
        ];
        for (change, expected) in cases {
            let mut value = everything();
            change(&mut value);
            let message = refused(&value);
            assert!(message.contains(expected), "{message:?} lacks {expected:?}");
        }
    }

    /// A map written key first, then value, as some hand-written `Serialize` impls do.
    struct KeyThenValue;

    impl Serialize for KeyThenValue {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let mut map = serializer.serialize_map(Some(1))?;
            map.serialize_key("k")?;
            map.serialize_value(&[f64::NAN])?;
            map.end()
        }
    }

    #[test]
    fn a_value_written_apart_from_its_key_is_checked_too() {
        assert!(refused(&KeyThenValue).starts_with("f64 value NaN at [?][0] cannot"));
    }

    /// A node of a nested value; [`WRAPS`] nest one inside another through each kind of serde
    /// compound, and the leaves are a number or bytes (an array in serde_json).
    #[derive(Serialize)]
    #[serde(untagged)]
    enum Node {
        Leaf(f64),
        Bytes(Bytes),
        Seq(Vec<Node>),
        Map(BTreeMap<String, Node>),
        Struct { inner: Box<Node> },
        Tuple(Box<Node>, u8),
        Some(Option<Box<Node>>),
        Tagged(TaggedNode),
    }

    #[derive(Serialize)]
    enum TaggedNode {
        Newtype(Box<Node>),
        Tuple(Box<Node>, u8),
        Struct { inner: Box<Node> },
    }

    /// Puts a node inside one more compound.
    type Wrap = fn(Node) -> Node;

    const WRAPS: [Wrap; 7] = [
        |n| Node::Seq(vec![Node::Leaf(0.0), n]),
        |n| Node::Map(BTreeMap::from([("k".to_string(), n)])),
        |n| Node::Struct { inner: Box::new(n) },
        |n| Node::Tuple(Box::new(n), 1),
        |n| Node::Tagged(TaggedNode::Newtype(Box::new(Node::Some(Some(Box::new(n)))))),
        |n| Node::Tagged(TaggedNode::Tuple(Box::new(n), 1)),
        |n| Node::Tagged(TaggedNode::Struct { inner: Box::new(n) }),
    ];

    #[test]
    fn depth_is_counted_as_serde_json_nests_every_kind_of_compound() {
        for (kind, wrap) in WRAPS.iter().enumerate() {
            for leaf in [|| Node::Leaf(1.0), || Node::Bytes(Bytes(b"x"))] {
                let mut node = leaf();
                let mut refused_once = false;
                while !refused_once {
                    let expected = serde_json::to_value(&node).unwrap();
                    match to_value(&node) {
                        Ok(value) => {
                            assert!(depth(&expected) <= MAX_DEPTH, "kind {kind}");
                            assert_eq!(value, expected);
                        }
                        Err(err) => {
                            assert!(depth(&expected) > MAX_DEPTH, "kind {kind}: {err}");
                            assert!(err.to_string().contains("more than 100 levels deep"));
                            refused_once = true;
                        }
                    }
                    node = wrap(node);
                }
            }
        }
    }

    /// A value whose arrays nest `levels` deep.
    fn arrays(levels: usize) -> Value {
        (0..levels).fold(json!(1), |v, _| Value::Array(vec![v]))
    }

    #[test]
    fn depth_at_the_limit_is_accepted_and_past_it_refused() {
        assert_eq!(to_value(&arrays(MAX_DEPTH)).unwrap(), arrays(MAX_DEPTH));
        assert_eq!(
            refused(&arrays(MAX_DEPTH + 1)),
            "the value nests arrays and objects more than 100 levels deep, which cannot be stored"
        );
        // Refused long before a deep value could exhaust the stack.
        assert!(to_value(&arrays(5_000)).is_err());
    }

    #[test]
    fn a_value_at_the_limit_reads_back_inside_its_deepest_stored_wrappers() {
        let value = to_value(&arrays(MAX_DEPTH)).unwrap();
        let event = Event::Scheduled {
            seq: 1,
            action: Action::CallEntity {
                id: EntityId::new("a", "b"),
                operation: "op".into(),
                input: Some(value.clone()),
            },
        };
        let text = serde_json::to_string(&event).unwrap();
        assert_eq!(serde_json::from_str::<Event>(&text).unwrap(), event);
        let body = Body::Completion {
            seq: 1,
            result: Outcome::Ok(value),
        };
        let text = serde_json::to_string(&body).unwrap();
        assert!(serde_json::from_str::<Body>(&text).is_ok());
    }

    #[derive(Serialize)]
    struct State {
        id: u64,
        name: String,
        balance: f64,
        active: bool,
        tags: Vec<String>,
    }

    /// Compares the cost with `serde_json::to_value` on small states:
    /// `cargo test -p entities-core --release json::tests::speed -- --ignored --nocapture`.
    #[test]
    #[ignore = "a micro benchmark, run by hand in release mode"]
    fn speed() {
        use std::hint::black_box;
        use std::time::Instant;

        fn time<T: Serialize>(label: &str, value: &T) {
            const RUNS: u32 = 2_000_000;
            let mut best = [f64::MAX; 2];
            for _ in 0..5 {
                let start = Instant::now();
                for _ in 0..RUNS {
                    black_box(serde_json::to_value(black_box(value)).unwrap());
                }
                best[0] = best[0].min(start.elapsed().as_nanos() as f64 / RUNS as f64);
                let start = Instant::now();
                for _ in 0..RUNS {
                    black_box(to_value(black_box(value)).unwrap());
                }
                best[1] = best[1].min(start.elapsed().as_nanos() as f64 / RUNS as f64);
            }
            println!(
                "{label}: serde_json::to_value {:.1} ns, checked {:.1} ns ({:+.0} %)",
                best[0],
                best[1],
                (best[1] / best[0] - 1.0) * 100.0
            );
        }

        time("i64", &42i64);
        time(
            "5-field struct",
            &State {
                id: 7,
                name: "alice".into(),
                balance: 12.5,
                active: true,
                tags: vec!["a".into(), "b".into()],
            },
        );
        time("Vec<f64> of 16", &vec![1.5f64; 16]);
    }
}
