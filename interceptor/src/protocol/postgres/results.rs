//! Results on their way back to the client: what each column is, and masking of the rows.
//!
//! Why this exists: masking works on values, but PostgreSQL sends rows as length-prefixed
//! byte strings whose meaning depends on a RowDescription that may have arrived much earlier
//! (asyncpg describes a statement once, then executes it many times with binary results).
//! This module turns a RowDescription (plus the formats a Bind asked for) into the
//! protocol-independent [`ResultColumn`]s masking understands, and rewrites DataRow, CopyData
//! and notice messages with what the [`Masker`] answers, keeping lengths and NULLs exact.
//! Numbers the detectors could not read as sent (binary numbers, floats with an exponent)
//! reach the masker as decimal text ([`numbers`]), and go back to the client as they came
//! or as NULL. NotificationResponse payloads (NOTIFY) are masked by content like notices.

use bytes::{BufMut as _, Bytes, BytesMut};

use super::{
    catalog::{Catalog, Known},
    codec::{backend, backend::Field, FrameError},
    numbers::{self, Decimal, Wire},
};
use crate::command::{Hooks, MaskReport, Masker, ResultColumn, Rewrite, ValueKind};

/// Types whose text and binary forms are both plain text.
const TEXT_TYPES: &[u32] = &[
    25,   // text
    1043, // varchar
    1042, // bpchar
    19,   // name
    18,   // "char"
    705,  // unknown
    142,  // xml
];
const JSON: u32 = 114;
const JSONB: u32 = 3802;
/// Types whose text form the client parses as something other than text (numbers, dates,
/// addresses, arrays of those): a masked value of these becomes NULL, since any replacement
/// text would break the client's parser.
const STRUCTURED_TEXT_TYPES: &[u32] = &[
    16, 17, 20, 21, 23, 26, 700, 701, 790,
    1700, // bool, bytea, integers, oid, floats, money, numeric
    1082, 1083, 1114, 1184, 1186, 1266, // dates, times, intervals
    2950, 869, 650, 829, 774, // uuid, inet, cidr, macaddr, macaddr8
    1000, 1005, 1007, 1016, 1021, 1022, 1231, 1182, 1115, 1185, 2951, 1041, // arrays of those
];

/// How a value of this type, in this format, can be rewritten.
pub fn value_kind(type_oid: u32, format: i16) -> ValueKind {
    match (type_oid, format) {
        (t, _) if TEXT_TYPES.contains(&t) => ValueKind::Text,
        (JSON, _) | (JSONB, 0) => ValueKind::Json,
        (JSONB, _) => ValueKind::JsonWithHeader,
        (t, 0) if STRUCTURED_TEXT_TYPES.contains(&t) => ValueKind::Opaque,
        // Other text forms (arrays of text, records, enums, domains, extension types) are
        // text the client reads as such.
        (_, 0) => ValueKind::Text,
        _ => ValueKind::Opaque,
    }
}

/// The format of column `i` under a Bind's result-format codes: none means text, one applies
/// to all, otherwise one per column.
fn format_of(formats: &[i16], i: usize) -> i16 {
    match formats {
        [] => 0,
        [one] => *one,
        many => many.get(i).copied().unwrap_or(0),
    }
}

/// The format of field `i`: a Bind's result formats override the field's own.
fn field_format(field: &Field, formats: Option<&[i16]>, i: usize) -> i16 {
    formats.map_or(field.format, |fs| format_of(fs, i))
}

/// The masker for a result with these fields (see [`columns`]), or `None` when the hooks
/// mask nothing. When some column holds numbers the detectors cannot read as sent, the
/// masker is wrapped so that those values reach it as decimal text.
pub fn masker<H: Hooks>(
    hooks: &H,
    fields: &[Field],
    formats: Option<&[i16]>,
    catalog: Option<&Catalog>,
) -> Option<Box<dyn Masker>> {
    let inner = hooks.masker(columns(fields, formats, catalog))?;
    let wires: Vec<Option<Wire>> = fields
        .iter()
        .enumerate()
        .map(|(i, f)| numbers::wire(f.type_oid, field_format(f, formats, i)))
        .collect();
    if wires.iter().all(Option::is_none) {
        return Some(inner);
    }
    Some(Box::new(DecimalNumbers {
        inner,
        wires,
        text: Vec::new(),
    }))
}

/// Hands number columns to the inner masker as decimal text, and sends the client either
/// the number as it came or NULL: a number has no room for a replacement text.
struct DecimalNumbers {
    inner: Box<dyn Masker>,
    wires: Vec<Option<Wire>>,
    /// The decimal text of the current value, reused for every value of the result.
    text: Vec<u8>,
}

impl Masker for DecimalNumbers {
    fn value(&mut self, column: usize, value: Option<&[u8]>) -> Rewrite {
        let (Some(wire), Some(value)) = (self.wires.get(column).copied().flatten(), value) else {
            return self.inner.value(column, value);
        };
        self.text.clear();
        let rewrite = match numbers::decimal(wire, value, &mut self.text) {
            Ok(Decimal::Same) => self.inner.value(column, Some(value)),
            Ok(Decimal::Written) => self.inner.value(column, Some(&self.text)),
            // Bytes that are not the number their type says: nothing can tell what they
            // hold, so they are not sent (fail closed). The inner masker sees a NULL, which
            // keeps its sample row in step with what the client gets.
            Err(e) => {
                tracing::debug!(column, error = %e, "undecodable number sent as NULL");
                self.inner.value(column, None);
                return Rewrite::Null;
            }
        };
        match rewrite {
            Rewrite::Keep => Rewrite::Keep,
            Rewrite::Replace(_) | Rewrite::Null => Rewrite::Null,
        }
    }

    fn end_row(&mut self) {
        self.inner.end_row();
    }

    fn report(&mut self) -> MaskReport {
        self.inner.report()
    }
}

/// The columns of a result. `formats` overrides the fields' own (a described statement says
/// 0 for every field; the Bind decides). With a catalog, plain column references are
/// resolved to `schema.table.column`.
pub fn columns(
    fields: &[Field],
    formats: Option<&[i16]>,
    catalog: Option<&Catalog>,
) -> Vec<ResultColumn> {
    fields
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let format = field_format(f, formats, i);
            let (source, unresolved) = match (f.table, catalog) {
                (0, _) => (None, false),
                (_, None) => (None, true),
                (table, Some(c)) => match c.known((table, f.attnum)) {
                    Known::Name(n) => (Some(n.to_string()), false),
                    Known::Absent | Known::Unknown => (None, true),
                },
            };
            ResultColumn {
                name: f.name.clone(),
                source,
                unresolved,
                kind: value_kind(f.type_oid, format),
            }
        })
        .collect()
}

/// Scratch space reused for every row of a session.
#[derive(Default)]
pub struct RowScratch {
    values: Vec<Option<std::ops::Range<usize>>>,
    rewrites: Vec<Rewrite>,
}

/// A DataRow with every value passed through `masker`, appended (tag and length included) to
/// `out` when something changed; `false`, and nothing appended, when nothing did.
pub fn mask_data_row(
    masker: &mut dyn Masker,
    body: &[u8],
    scratch: &mut RowScratch,
    out: &mut BytesMut,
) -> Result<bool, FrameError> {
    backend::data_row(body, &mut scratch.values)?;
    scratch.rewrites.clear();
    let mut changed = false;
    for (i, range) in scratch.values.iter().enumerate() {
        let value = range.clone().and_then(|r| body.get(r));
        let rewrite = masker.value(i, value);
        changed |= rewrite != Rewrite::Keep;
        scratch.rewrites.push(rewrite);
    }
    masker.end_row();
    if !changed {
        return Ok(false);
    }
    let start = out.len();
    out.reserve(body.len() + 64);
    out.put_u8(b'D');
    out.put_i32(0); // length, patched below
    out.put_i16(scratch.values.len() as i16);
    for (range, rewrite) in scratch.values.iter().zip(&scratch.rewrites) {
        let value: Option<&[u8]> = match rewrite {
            Rewrite::Keep => range.clone().and_then(|r| body.get(r)),
            Rewrite::Replace(v) => Some(v),
            Rewrite::Null => None,
        };
        match value {
            Some(v) => {
                out.put_i32(v.len() as i32);
                out.put_slice(v);
            }
            None => out.put_i32(-1),
        }
    }
    let len = (out.len() - start - 1) as i32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
    Ok(true)
}

/// Why a COPY row could not be masked.
#[derive(Debug, thiserror::Error)]
#[error("a binary COPY row holds a value that must be masked; binary COPY cannot be rewritten")]
pub struct UnmaskableCopy;

/// A CopyData row from the server, masked as one value. `binary` rows cannot be rewritten:
/// a row that needs masking ends the session instead.
pub fn mask_copy_data<H: Hooks>(
    hooks: &H,
    masker: &mut dyn Masker,
    body: &[u8],
    binary: bool,
) -> Result<Option<Bytes>, UnmaskableCopy> {
    let rewrite = masker.value(0, Some(body));
    masker.end_row();
    let replaced = match rewrite {
        Rewrite::Keep => return Ok(None),
        Rewrite::Null if binary => return Err(UnmaskableCopy),
        Rewrite::Replace(_) if binary => return Err(UnmaskableCopy),
        Rewrite::Replace(v) => v,
        // A row cannot be NULL: redact the spans instead.
        Rewrite::Null => hooks
            .mask_text(&String::from_utf8_lossy(body))
            .into_owned()
            .into_bytes(),
    };
    let mut out = BytesMut::with_capacity(replaced.len() + 5);
    out.put_u8(b'd');
    out.put_i32(replaced.len() as i32 + 4);
    out.put_slice(&replaced);
    Ok(Some(out.freeze()))
}

/// An ErrorResponse or NoticeResponse with its human-readable fields masked (a unique
/// violation quotes the duplicate key: "Key (email)=(…) already exists"). `None` when
/// nothing changed.
pub fn mask_notice<H: Hooks>(hooks: &H, tag: u8, body: &[u8]) -> Option<Bytes> {
    let mut fields = backend::notice_fields(body);
    let mut changed = false;
    for (code, text) in fields.iter_mut() {
        // Message, detail, hint, context, and the internal query.
        if matches!(*code, b'M' | b'D' | b'H' | b'W' | b'q') {
            if let std::borrow::Cow::Owned(masked) = hooks.mask_text(text) {
                *text = masked;
                changed = true;
            }
        }
    }
    if !changed {
        return None;
    }
    let mut out = BytesMut::new();
    backend::notice_from_fields(tag, &fields).encode(&mut out);
    Some(out.freeze())
}

/// A NotificationResponse (NOTIFY) with its payload masked by content, as notices are: an
/// agent that LISTENs must not receive in a payload what it could not SELECT. The channel
/// is left as it is: the client finds its listener by it, and it is a name the agent
/// chose itself when it LISTENed. `None` when nothing changed; an error for a message that
/// is not a well-formed notification (the session then ends: fail closed).
pub fn mask_notification<H: Hooks>(hooks: &H, body: &[u8]) -> Result<Option<Bytes>, FrameError> {
    let (pid, channel, payload) = backend::notification(body)?;
    let text = String::from_utf8_lossy(payload);
    let std::borrow::Cow::Owned(masked) = hooks.mask_text(&text) else {
        return Ok(None);
    };
    let mut out = BytesMut::new();
    backend::notification_message(pid, channel, masked.as_bytes()).encode(&mut out);
    Ok(Some(out.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Upper;
    impl Masker for Upper {
        fn value(&mut self, column: usize, value: Option<&[u8]>) -> Rewrite {
            match (column, value) {
                (0, Some(v)) => Rewrite::Replace(v.to_ascii_uppercase()),
                (1, Some(_)) => Rewrite::Null,
                _ => Rewrite::Keep,
            }
        }
        fn report(&mut self) -> MaskReport {
            MaskReport::default()
        }
    }

    fn row(values: &[Option<&[u8]>]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(values.len() as i16).to_be_bytes());
        for v in values {
            match v {
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v);
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        b
    }

    #[test]
    fn rewritten_rows_keep_exact_lengths_and_nulls() {
        let body = row(&[Some(b"abc"), Some(b"secret"), None, Some(b"x")]);
        let mut out = BytesMut::from(&b"prefix"[..]);
        assert!(mask_data_row(&mut Upper, &body, &mut RowScratch::default(), &mut out).unwrap());
        let out = out.split_off(6);
        assert_eq!(out[0], b'D');
        assert_eq!(
            i32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize,
            out.len() - 1
        );
        assert_eq!(&out[5..], &row(&[Some(b"ABC"), None, None, Some(b"x")])[..]);
    }

    #[test]
    fn malformed_rows_are_errors_not_panics() {
        let mut scratch = RowScratch::default();
        let mut out = BytesMut::new();
        for body in [
            &b""[..],
            b"\x00",
            b"\x00\x01\x00\x00\x00\x09ab",
            b"\x00\x01\xff\xff",
        ] {
            assert!(mask_data_row(&mut Upper, body, &mut scratch, &mut out).is_err());
        }
        // Trailing bytes after the last value.
        let mut body = row(&[Some(b"a")]);
        body.push(0);
        assert!(mask_data_row(&mut Upper, &body, &mut scratch, &mut out).is_err());
        assert!(out.is_empty());
    }

    /// Hooks that mask by content with every detector (redact), as a session's would.
    type Detecting = crate::fuzzing::MaskingHooks;

    fn detecting() -> Detecting {
        Detecting::detecting(crate::mask::Strategy::Redact)
    }

    fn field(name: &str, type_oid: u32, format: i16) -> Field {
        Field {
            name: name.to_owned(),
            table: 0,
            attnum: 0,
            type_oid,
            format,
        }
    }

    fn numeric(weight: i16, digits: &[u16]) -> Vec<u8> {
        let mut b = Vec::new();
        for v in [digits.len() as i16, weight, 0, 0] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        for d in digits {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b
    }

    #[test]
    fn numbers_holding_a_card_are_nulled_in_every_format() {
        let hooks = detecting();
        let fields = [
            field("i8", 20, 1),
            field("n", 1700, 1),
            field("f8", 701, 1),
            field("f8_text", 701, 0),
            field("i8_text", 20, 0),
            field("arr", 1016, 1),
            field("t", 25, 0),
        ];
        let mut masker = masker(&hooks, &fields, None, None).expect("masking is on");
        // One row with every form of `n`: binary int8, numeric, float8 and int8[], text
        // float8 (`4.111111111111111e+15`) and int8, and text with letters glued on.
        let row_of = |n: i64, digits: &[u16]| {
            let mut array = Vec::new();
            for v in [1i32, 0, 20, 1, 1, 8] {
                array.extend_from_slice(&v.to_be_bytes());
            }
            array.extend_from_slice(&n.to_be_bytes());
            let float_text = format!("{:e}", n as f64).replace('e', "e+");
            row(&[
                Some(&n.to_be_bytes()),
                Some(&numeric(3, digits)),
                Some(&(n as f64).to_be_bytes()),
                Some(float_text.as_bytes()),
                Some(n.to_string().as_bytes()),
                Some(&array),
                Some(format!("x{n}x").as_bytes()),
            ])
        };
        let body = row_of(4_111_111_111_111_111, &[4111, 1111, 1111, 1111]);
        let mut out = BytesMut::new();
        let mut scratch = RowScratch::default();
        assert!(mask_data_row(masker.as_mut(), &body, &mut scratch, &mut out).unwrap());
        let mut values = Vec::new();
        backend::data_row(&out[5..], &mut values).unwrap();
        let got: Vec<Option<&[u8]>> = values
            .iter()
            .map(|r| r.clone().map(|r| &out[5..][r]))
            .collect();
        let masked: Vec<Option<&[u8]>> = vec![None, None, None, None, None, None];
        assert_eq!(got[..6], masked[..]);
        assert_eq!(got[6], Some(&b"x[REDACTED:credit_card]x"[..]));
        // The Luhn-invalid control is sent as it came, in every format.
        let body = row_of(4_111_111_111_111_112, &[4111, 1111, 1111, 1112]);
        let mut out = BytesMut::new();
        assert!(!mask_data_row(masker.as_mut(), &body, &mut scratch, &mut out).unwrap());
        assert!(out.is_empty());
        let counts = masker.report().counts;
        assert_eq!(counts.get("detector:credit_card"), Some(&7));
    }

    #[test]
    fn undecodable_numbers_are_nulled() {
        let hooks = detecting();
        let fields = [field("i8", 20, 1), field("n", 1700, 1)];
        let mut masker = masker(&hooks, &fields, None, None).expect("masking is on");
        assert_eq!(masker.value(0, Some(b"\x00\x01")), Rewrite::Null);
        assert_eq!(masker.value(1, Some(b"\xff\xff\x00\x00")), Rewrite::Null);
        assert_eq!(masker.value(0, Some(&5i64.to_be_bytes())), Rewrite::Keep);
        assert_eq!(masker.value(0, None), Rewrite::Keep);
        // Without number columns, the hooks' own masker is used as it is.
        assert!(masker_is_plain(&hooks));
    }

    fn masker_is_plain(hooks: &Detecting) -> bool {
        let mut m = masker(hooks, &[field("t", 25, 1)], None, None).expect("masking is on");
        m.value(0, Some(b"\x00\x01")) == Rewrite::Keep
    }

    #[test]
    fn notification_payloads_are_masked_and_stay_well_formed() {
        let hooks = detecting();
        let mut body = 4242i32.to_be_bytes().to_vec();
        body.extend_from_slice(b"card_\xc3\xa9vents\0paid 4111111111111111 by alice@example.com\0");
        let out = mask_notification(&hooks, &body).unwrap().expect("masked");
        assert_eq!(out[0], b'A');
        assert_eq!(
            i32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize,
            out.len() - 1
        );
        let (pid, channel, payload) = backend::notification(&out[5..]).unwrap();
        assert_eq!(pid, 4242);
        assert_eq!(channel, b"card_\xc3\xa9vents");
        assert_eq!(payload, b"paid [REDACTED:credit_card] by [REDACTED:email]");
        // Nothing to mask: the server's bytes go through.
        let mut plain = 1i32.to_be_bytes().to_vec();
        plain.extend_from_slice(b"jobs\0done 4111111111111112\0");
        assert_eq!(mask_notification(&hooks, &plain).unwrap(), None);
        // Malformed: an error (the session ends), never a panic.
        for body in [
            &b""[..],
            b"\0\0\0\x01",
            b"\0\0\0\x01chan\0payload",
            b"\0\0\0\x01a\0b\0c",
        ] {
            assert!(mask_notification(&hooks, body).is_err(), "{body:?}");
        }
    }

    #[test]
    fn kinds_follow_type_and_format() {
        assert_eq!(value_kind(25, 1), ValueKind::Text);
        assert_eq!(value_kind(3802, 1), ValueKind::JsonWithHeader);
        assert_eq!(value_kind(3802, 0), ValueKind::Json);
        assert_eq!(value_kind(20, 0), ValueKind::Opaque);
        assert_eq!(value_kind(1009, 0), ValueKind::Text);
        assert_eq!(value_kind(1009, 1), ValueKind::Opaque);
        assert_eq!(format_of(&[1], 5), 1);
        assert_eq!(format_of(&[0, 1], 1), 1);
        assert_eq!(format_of(&[], 1), 0);
    }
}
