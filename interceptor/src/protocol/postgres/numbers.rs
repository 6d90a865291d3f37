//! PostgreSQL numbers as the decimal text the content detectors read.
//!
//! Why this exists: detectors find values in text, but a card number stored as `bigint`,
//! `numeric` or `float8` reaches a binary-format client (asyncpg; psycopg with `binary=True`)
//! as 8 bytes, or as base-10000 digits, in which no pattern can be seen. And in the text
//! format `float8` prints 4111111111111111 as `4.111111111111111e+15`. This module turns
//! both into plain decimal digits: the binary forms of int2, int4, int8, float4, float8 and
//! numeric (and arrays of them), and the exponent forms of text floats.
//!
//! What it does not do: decide anything. `results.rs` hands the text to the masker, and a
//! number that must be masked is sent as NULL (no replacement text fits in a number; the
//! client's original bytes are kept otherwise). Malformed input is an error, never a panic;
//! the caller then sends NULL (fail closed).
//!
//! Cost: a value is decoded into a buffer the caller reuses for every row, with no other
//! allocation. The text is bounded by a small multiple of the wire bytes, whatever they
//! hold: a run of zeros that only the scale of a number implies (a numeric's weight beyond
//! its digits, a float's exponent) is written as at most [`ZERO_RUN`] zeros. Detectors see
//! no difference, since a digit run longer than 19 is no card and zeros hold nothing else;
//! and `1e131071::numeric` (12 bytes on the wire) or an array of them cannot make the
//! gateway write 131,072 digits per element.

use std::io::Write as _;

/// The most zeros written for a run of zeros that the scale of a number implies (more than
/// the 19 digits of the longest card, so a card followed by them stays glued to digits).
pub const ZERO_RUN: usize = 32;

/// A binary number type, by element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Number {
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric,
}

impl Number {
    fn oid(self) -> u32 {
        match self {
            Number::Int2 => 21,
            Number::Int4 => 23,
            Number::Int8 => 20,
            Number::Float4 => 700,
            Number::Float8 => 701,
            Number::Numeric => 1700,
        }
    }
}

/// How a column's numbers arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// The binary form of one number.
    Binary(Number),
    /// The binary form of an array of numbers (any number of dimensions).
    BinaryArray(Number),
    /// The text form of a float or an array of floats: digits, but maybe with an exponent.
    FloatText,
}

/// The wire form of a column of this type and format, when it is a number detectors could
/// not read as it is. Text integers and numerics are plain digits already: `None`.
pub fn wire(type_oid: u32, format: i16) -> Option<Wire> {
    let scalar = |oid| {
        [
            Number::Int2,
            Number::Int4,
            Number::Int8,
            Number::Float4,
            Number::Float8,
            Number::Numeric,
        ]
        .into_iter()
        .find(|n| n.oid() == oid)
    };
    let element = match type_oid {
        1005 => Some(Number::Int2),
        1007 => Some(Number::Int4),
        1016 => Some(Number::Int8),
        1021 => Some(Number::Float4),
        1022 => Some(Number::Float8),
        1231 => Some(Number::Numeric),
        _ => None,
    };
    match format {
        0 => matches!(type_oid, 700 | 701 | 1021 | 1022).then_some(Wire::FloatText),
        1 => scalar(type_oid)
            .map(Wire::Binary)
            .or(element.map(Wire::BinaryArray)),
        _ => None,
    }
}

/// A binary number whose bytes do not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed binary {what}: {why}")]
pub struct Malformed {
    what: &'static str,
    why: &'static str,
}

fn malformed(what: &'static str, why: &'static str) -> Malformed {
    Malformed { what, why }
}

/// What [`decimal`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decimal {
    /// The value already is its decimal text (a text float without an exponent); `out` is
    /// untouched.
    Same,
    /// The decimal text was appended to `out`.
    Written,
}

/// Appends the decimal text of `value` (in `wire` form) to `out`.
pub fn decimal(wire: Wire, value: &[u8], out: &mut Vec<u8>) -> Result<Decimal, Malformed> {
    match wire {
        Wire::Binary(number) => scalar(number, value, out)?,
        Wire::BinaryArray(number) => array(number, value, out)?,
        Wire::FloatText => return Ok(float_text(value, out)),
    }
    Ok(Decimal::Written)
}

fn scalar(number: Number, value: &[u8], out: &mut Vec<u8>) -> Result<(), Malformed> {
    let written = match number {
        Number::Int2 => write!(out, "{}", i16::from_be_bytes(exact(value, "int2")?)),
        Number::Int4 => write!(out, "{}", i32::from_be_bytes(exact(value, "int4")?)),
        Number::Int8 => write!(out, "{}", i64::from_be_bytes(exact(value, "int8")?)),
        // Floats: the shortest digits that read back as the same float, with an exponent,
        // then written out plain (4111111111111111 stays 16 digits).
        Number::Float4 => {
            let f = f32::from_be_bytes(exact(value, "float4")?);
            return float(format_args!("{f:e}"), out);
        }
        Number::Float8 => {
            let f = f64::from_be_bytes(exact(value, "float8")?);
            return float(format_args!("{f:e}"), out);
        }
        Number::Numeric => return numeric(value, out),
    };
    // Writing to a Vec cannot fail.
    written.map_err(|_| malformed("number", "unwritable"))
}

/// The bytes of a fixed-size number, or an error when the length is not that size.
fn exact<const N: usize>(value: &[u8], what: &'static str) -> Result<[u8; N], Malformed> {
    value
        .try_into()
        .map_err(|_| malformed(what, "wrong length"))
}

/// A cursor over big-endian fields.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Malformed> {
        if n > self.0.len() {
            return Err(malformed(what, "truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn i16(&mut self, what: &'static str) -> Result<i16, Malformed> {
        let b = self.take(2, what)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, Malformed> {
        let b = self.take(4, what)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;

/// PostgreSQL's binary numeric (`numeric_send`): ndigits, weight, sign, dscale (each 16
/// bits), then ndigits base-10000 digits; the value is Σ digit[i] · 10000^(weight − i).
/// Written as `numeric_out` writes it (the integer part without leading zeros, then
/// `dscale` fraction digits), except that implied zero runs are capped (see the module doc).
fn numeric(value: &[u8], out: &mut Vec<u8>) -> Result<(), Malformed> {
    const WHAT: &str = "numeric";
    let mut r = Reader(value);
    let ndigits = r.i16(WHAT)?;
    let weight = i32::from(r.i16(WHAT)?);
    let sign = r.i16(WHAT)? as u16;
    let dscale = r.i16(WHAT)? as u16;
    let ndigits = usize::try_from(ndigits).map_err(|_| malformed(WHAT, "negative ndigits"))?;
    // numeric_recv rejects a display scale beyond 14 bits too.
    if dscale & 0xC000 != 0 {
        return Err(malformed(WHAT, "display scale out of range"));
    }
    let digits = r.take(ndigits * 2, WHAT)?;
    if !r.0.is_empty() {
        return Err(malformed(WHAT, "trailing bytes"));
    }
    let digit = |i: i32| -> u16 {
        usize::try_from(i)
            .ok()
            .and_then(|i| digits.get(i * 2..i * 2 + 2))
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
    };
    if (0..ndigits).any(|i| digit(i as i32) > 9999) {
        return Err(malformed(WHAT, "digit out of range"));
    }
    let special: &[u8] = match sign {
        NUMERIC_POS => b"",
        NUMERIC_NEG => b"-",
        NUMERIC_NAN => b"NaN",
        NUMERIC_PINF => b"Infinity",
        NUMERIC_NINF => b"-Infinity",
        _ => return Err(malformed(WHAT, "unknown sign")),
    };
    push(out, special);
    if special.len() > 1 {
        return Ok(());
    }
    // The integer part: the digits it has, then the zeros its weight implies.
    let int_groups = weight + 1;
    if int_groups <= 0 || ndigits == 0 {
        out.push(b'0');
    } else {
        let explicit = int_groups.min(ndigits as i32);
        for i in 0..explicit {
            push(out, itoa4(digit(i), i > 0).as_slice());
        }
        zeros(out, (int_groups - explicit) as usize * 4);
    }
    if dscale > 0 {
        out.push(b'.');
        let mut left = usize::from(dscale);
        let mut i = int_groups;
        if i < 0 {
            let leading = left.min(i.unsigned_abs() as usize * 4);
            zeros(out, leading);
            left -= leading;
            i = 0;
        }
        while left > 0 && (i as usize) < ndigits {
            let group = itoa4(digit(i), true);
            let n = left.min(4);
            push(out, group.get(..n).unwrap_or_default());
            left -= n;
            i += 1;
        }
        zeros(out, left);
    }
    Ok(())
}

/// `n` zeros, at most [`ZERO_RUN`] of them (see the module doc).
fn zeros(out: &mut Vec<u8>, n: usize) {
    const ZEROS: [u8; ZERO_RUN] = [b'0'; ZERO_RUN];
    out.extend_from_slice(&ZEROS[..n.min(ZERO_RUN)]);
}

/// A float, formatted with an exponent (`{:e}`) into a stack buffer, written out plain.
fn float(formatted: std::fmt::Arguments<'_>, out: &mut Vec<u8>) -> Result<(), Malformed> {
    // `{:e}` of an f64 is at most ~25 bytes ("-2.2250738585072014e-308").
    let mut buf = std::io::Cursor::new([0u8; 40]);
    buf.write_fmt(formatted)
        .map_err(|_| malformed("float", "unwritable"))?;
    let len = buf.position() as usize;
    plain(buf.get_ref().get(..len).unwrap_or_default(), out);
    Ok(())
}

/// A number token (`-4.111111111111111e+15`, `1.5`, `NaN`) written without its exponent:
/// the point moved by it, and the zeros it implies (at most [`ZERO_RUN`] per run). A token
/// that is not a number (`NaN`, `inf`, stray signs) is copied as it is.
fn plain(token: &[u8], out: &mut Vec<u8>) {
    let (sign, body) = match token.first() {
        Some(b'-' | b'+') => token.split_at(1),
        _ => (&token[..0], token),
    };
    let (mantissa, exponent) = match body.iter().position(|&b| b == b'e' || b == b'E') {
        Some(i) => (&body[..i], body.get(i + 1..).unwrap_or_default()),
        None => (body, &body[..0]),
    };
    let (int, frac) = match mantissa.iter().position(|&b| b == b'.') {
        Some(i) => (&mantissa[..i], mantissa.get(i + 1..).unwrap_or_default()),
        None => (mantissa, &mantissa[..0]),
    };
    let digits_only = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    let exp = exponent_value(exponent);
    if int.is_empty() && frac.is_empty() || !digits_only(int) || !digits_only(frac) || exp.is_none()
    {
        out.extend_from_slice(token);
        return;
    }
    let exp = exp.unwrap_or(0);
    out.extend_from_slice(if sign == b"-" { b"-" } else { b"" });
    // The point sits after `point` digits of int ++ frac.
    let total = int.len() + frac.len();
    let point = int.len() as i64 + exp;
    let digit_at = |i: usize| {
        if i < int.len() {
            int[i]
        } else {
            frac[i - int.len()]
        }
    };
    if point <= 0 {
        out.extend_from_slice(b"0.");
        zeros(out, point.unsigned_abs() as usize);
        out.extend((0..total).map(digit_at));
    } else if point as usize >= total {
        out.extend((0..total).map(digit_at));
        zeros(out, point as usize - total);
    } else {
        out.extend((0..point as usize).map(digit_at));
        out.push(b'.');
        out.extend((point as usize..total).map(digit_at));
    }
}

/// An exponent's value (empty is 0), saturated far beyond any float's range; `None` when it
/// is not a number.
fn exponent_value(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text.first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if text.is_empty() {
        return Some(0);
    }
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = digits
        .iter()
        .fold(0i64, |n, &b| (n * 10 + i64::from(b - b'0')).min(1_000_000));
    Some(if negative { -value } else { value })
}

fn push(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(bytes);
}

/// A base-10000 digit as decimal: four digits when `padded`, else without leading zeros.
fn itoa4(d: u16, padded: bool) -> ArrayText {
    let all = [
        b'0' + (d / 1000 % 10) as u8,
        b'0' + (d / 100 % 10) as u8,
        b'0' + (d / 10 % 10) as u8,
        b'0' + (d % 10) as u8,
    ];
    let skip = if padded {
        0
    } else {
        all.iter().take(3).take_while(|&&b| b == b'0').count()
    };
    ArrayText { all, skip }
}

struct ArrayText {
    all: [u8; 4],
    skip: usize,
}

impl ArrayText {
    fn as_slice(&self) -> &[u8] {
        self.all.get(self.skip..).unwrap_or_default()
    }

    fn get(&self, range: std::ops::RangeTo<usize>) -> Option<&[u8]> {
        self.as_slice().get(range)
    }
}

/// PostgreSQL's binary array (`array_send`): ndim, has-nulls flag, element type, then
/// (length, lower bound) per dimension, then each element as a length (−1 for NULL) and its
/// bytes. Written as `{a,b,NULL,…}`, flattened: the separators keep elements apart, which is
/// all a detector needs.
fn array(number: Number, value: &[u8], out: &mut Vec<u8>) -> Result<(), Malformed> {
    const WHAT: &str = "array";
    let mut r = Reader(value);
    let ndim = r.i32(WHAT)?;
    let _has_nulls = r.i32(WHAT)?;
    let element = r.i32(WHAT)? as u32;
    if !(0..=6).contains(&ndim) {
        return Err(malformed(WHAT, "dimensions out of range"));
    }
    if element != number.oid() {
        return Err(malformed(WHAT, "unexpected element type"));
    }
    let mut count: usize = if ndim == 0 { 0 } else { 1 };
    for _ in 0..ndim {
        let len = usize::try_from(r.i32(WHAT)?).map_err(|_| malformed(WHAT, "negative length"))?;
        let _lower_bound = r.i32(WHAT)?;
        count = count
            .checked_mul(len)
            .ok_or(malformed(WHAT, "too many elements"))?;
    }
    // Every element takes at least its 4-byte length: a count beyond that is a lie.
    if count > r.0.len() / 4 {
        return Err(malformed(WHAT, "too many elements"));
    }
    out.push(b'{');
    for i in 0..count {
        if i > 0 {
            out.push(b',');
        }
        match r.i32(WHAT)? {
            -1 => out.extend_from_slice(b"NULL"),
            len => {
                let len = usize::try_from(len).map_err(|_| malformed(WHAT, "negative length"))?;
                scalar(number, r.take(len, WHAT)?, out)?;
            }
        }
    }
    if !r.0.is_empty() {
        return Err(malformed(WHAT, "trailing bytes"));
    }
    out.push(b'}');
    Ok(())
}

/// A text float (or array of floats) with each exponent form (`4.111111111111111e+15`)
/// written out in plain digits. Without any `e`, the value is already plain: `Same`.
fn float_text(value: &[u8], out: &mut Vec<u8>) -> Decimal {
    if !value.iter().any(|&b| b == b'e' || b == b'E') {
        return Decimal::Same;
    }
    let in_number = |b: &u8| b.is_ascii_digit() || matches!(b, b'.' | b'+' | b'-' | b'e' | b'E');
    let mut rest = value;
    while !rest.is_empty() {
        let len = rest
            .iter()
            .position(|b| !in_number(b))
            .unwrap_or(rest.len());
        let (token, tail) = rest.split_at(len);
        plain(token, out);
        // The byte that ended the token (a separator, a brace, a letter of `NaN`).
        let (sep, tail) = tail.split_at(tail.len().min(1));
        out.extend_from_slice(sep);
        rest = tail;
    }
    Decimal::Written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(wire: Wire, value: &[u8]) -> Result<String, Malformed> {
        let mut out = b"keep:".to_vec();
        match decimal(wire, value, &mut out)? {
            Decimal::Same => Ok(String::from_utf8_lossy(value).into_owned()),
            Decimal::Written => Ok(String::from_utf8_lossy(&out[5..]).into_owned()),
        }
    }

    /// A binary numeric as numeric_send writes it.
    fn numeric_bytes(weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(digits.len() as i16).to_be_bytes());
        b.extend_from_slice(&weight.to_be_bytes());
        b.extend_from_slice(&sign.to_be_bytes());
        b.extend_from_slice(&dscale.to_be_bytes());
        for d in digits {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b
    }

    #[test]
    fn binary_integers_and_floats() {
        let card = 4_111_111_111_111_111i64;
        assert_eq!(
            text(Wire::Binary(Number::Int8), &card.to_be_bytes()).unwrap(),
            "4111111111111111"
        );
        assert_eq!(
            text(Wire::Binary(Number::Int8), &(-card).to_be_bytes()).unwrap(),
            "-4111111111111111"
        );
        assert_eq!(
            text(Wire::Binary(Number::Int4), &(-7i32).to_be_bytes()).unwrap(),
            "-7"
        );
        assert_eq!(
            text(Wire::Binary(Number::Int2), &i16::MIN.to_be_bytes()).unwrap(),
            "-32768"
        );
        assert_eq!(
            text(Wire::Binary(Number::Float8), &(card as f64).to_be_bytes()).unwrap(),
            "4111111111111111"
        );
        assert_eq!(
            text(Wire::Binary(Number::Float8), &0.5f64.to_be_bytes()).unwrap(),
            "0.5"
        );
        assert_eq!(
            text(Wire::Binary(Number::Float8), &f64::NAN.to_be_bytes()).unwrap(),
            "NaN"
        );
        assert_eq!(
            text(Wire::Binary(Number::Float4), &1.5f32.to_be_bytes()).unwrap(),
            "1.5"
        );
    }

    #[test]
    fn binary_numerics_as_numeric_out_writes_them() {
        // 4111111111111111: digits 4111 1111 1111 1111, weight 3.
        let card = numeric_bytes(3, NUMERIC_POS, 0, &[4111, 1111, 1111, 1111]);
        assert_eq!(
            text(Wire::Binary(Number::Numeric), &card).unwrap(),
            "4111111111111111"
        );
        // 4111111111111111.00 (numeric(20,2)).
        let scaled = numeric_bytes(3, NUMERIC_POS, 2, &[4111, 1111, 1111, 1111]);
        assert_eq!(
            text(Wire::Binary(Number::Numeric), &scaled).unwrap(),
            "4111111111111111.00"
        );
        for (bytes, want) in [
            (numeric_bytes(0, NUMERIC_POS, 0, &[]), "0"),
            (numeric_bytes(0, NUMERIC_NEG, 3, &[12, 3400]), "-12.340"),
            (numeric_bytes(-1, NUMERIC_POS, 4, &[5]), "0.0005"),
            (numeric_bytes(-2, NUMERIC_POS, 8, &[12]), "0.00000012"),
            // Implied zeros are capped: 1e40 and 1e-40 (weight ±10).
            (
                numeric_bytes(10, NUMERIC_POS, 0, &[1]),
                "100000000000000000000000000000000",
            ),
            (
                numeric_bytes(-11, NUMERIC_POS, 44, &[1000]),
                "0.000000000000000000000000000000001000",
            ),
            (numeric_bytes(2, NUMERIC_POS, 0, &[1]), "100000000"),
            (numeric_bytes(1, NUMERIC_POS, 1, &[7, 9, 5000]), "70009.5"),
            (numeric_bytes(0, NUMERIC_NAN, 0, &[]), "NaN"),
            (numeric_bytes(0, NUMERIC_NINF, 0, &[]), "-Infinity"),
        ] {
            assert_eq!(
                text(Wire::Binary(Number::Numeric), &bytes).unwrap(),
                want,
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn binary_arrays_are_braced_lists() {
        let mut b = Vec::new();
        for field in [1i32, 1, 20, 3, 1] {
            b.extend_from_slice(&field.to_be_bytes());
        }
        b.extend_from_slice(&8i32.to_be_bytes());
        b.extend_from_slice(&4_111_111_111_111_111i64.to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.extend_from_slice(&8i32.to_be_bytes());
        b.extend_from_slice(&5i64.to_be_bytes());
        assert_eq!(
            text(Wire::BinaryArray(Number::Int8), &b).unwrap(),
            "{4111111111111111,NULL,5}"
        );
        // An empty array: no dimensions.
        let empty = [0i32, 0, 20].map(i32::to_be_bytes).concat();
        assert_eq!(text(Wire::BinaryArray(Number::Int8), &empty).unwrap(), "{}");
        // The element type must be the column's.
        assert!(text(Wire::BinaryArray(Number::Int4), &b).is_err());
    }

    #[test]
    fn text_floats_lose_their_exponents() {
        for (value, want) in [
            ("4.111111111111111e+15", "4111111111111111"),
            ("-4.111111111111111E+15", "-4111111111111111"),
            (
                "{4.111111111111111e+15,NaN,1.5,-Infinity}",
                "{4111111111111111,NaN,1.5,-Infinity}",
            ),
            ("1e-05", "0.00001"),
            ("123.25", "123.25"),
            ("NaN", "NaN"),
        ] {
            assert_eq!(text(Wire::FloatText, value.as_bytes()).unwrap(), want);
        }
    }

    #[test]
    fn wire_forms_by_type_and_format() {
        assert_eq!(wire(20, 1), Some(Wire::Binary(Number::Int8)));
        assert_eq!(wire(1700, 1), Some(Wire::Binary(Number::Numeric)));
        assert_eq!(wire(1016, 1), Some(Wire::BinaryArray(Number::Int8)));
        assert_eq!(wire(701, 0), Some(Wire::FloatText));
        assert_eq!(wire(1022, 0), Some(Wire::FloatText));
        // Text integers and numerics are plain digits already; text is text.
        assert_eq!(wire(20, 0), None);
        assert_eq!(wire(1700, 0), None);
        assert_eq!(wire(25, 1), None);
    }

    #[test]
    fn malformed_input_is_an_error_never_a_panic() {
        for (wire, value) in [
            (Wire::Binary(Number::Int8), &b"\x00\x01"[..]),
            (Wire::Binary(Number::Int4), b"\x00\x00\x00\x00\x00"),
            (Wire::Binary(Number::Float8), b""),
            (Wire::Binary(Number::Numeric), b"\x00\x01\x00\x00\x00\x00"),
            (
                Wire::Binary(Number::Numeric),
                b"\xff\xff\x00\x00\x00\x00\x00\x00",
            ),
            // A digit of 10000.
            (
                Wire::Binary(Number::Numeric),
                b"\x00\x01\x00\x00\x00\x00\x00\x00\x27\x10",
            ),
            // An unknown sign; a display scale beyond 14 bits.
            (
                Wire::Binary(Number::Numeric),
                b"\x00\x00\x00\x00\x12\x34\x00\x00",
            ),
            (
                Wire::Binary(Number::Numeric),
                b"\x00\x00\x00\x00\x00\x00\xff\xff",
            ),
            (Wire::BinaryArray(Number::Int8), b"\x00\x00\x00\x01"),
            // One dimension of 2^30 elements, with no bytes for them.
            (
                Wire::BinaryArray(Number::Int8),
                b"\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x14\x40\x00\x00\x00\x00\x00\x00\x01",
            ),
        ] {
            let mut out = Vec::new();
            assert!(
                decimal(wire, value, &mut out).is_err(),
                "{wire:?} {value:?}"
            );
        }
        // Arbitrary bytes: errors or text, never a panic, never unbounded output.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut out = Vec::new();
        for len in 0..200usize {
            let value: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed >> 24) as u8
                })
                .collect();
            for number in [Number::Int8, Number::Float4, Number::Numeric] {
                for wire in [
                    Wire::Binary(number),
                    Wire::BinaryArray(number),
                    Wire::FloatText,
                ] {
                    out.clear();
                    let _ = decimal(wire, &value, &mut out);
                    assert!(out.len() <= 200_000);
                }
            }
        }
    }
}
