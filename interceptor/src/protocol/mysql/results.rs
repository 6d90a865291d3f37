//! Result sets on their way back to the agent: what each column is, and masking of rows.
//!
//! Why this exists: masking works on values, but MySQL sends a result set as column
//! definitions followed by rows whose encoding depends on the protocol that asked (text for
//! `COM_QUERY`, binary for `COM_STMT_EXECUTE`). This module turns column definitions into the
//! protocol-independent [`ResultColumn`]s masking understands (their `org_table`/`org_name`
//! give the source column), and rewrites rows with what the [`Masker`] answers, keeping
//! NULLs exact: text rows (all values are strings) and binary rows (each value encoded by its
//! column's type; strings can take a replacement, any other value that needs masking becomes
//! NULL in the row's NULL bitmap, and integers reach the masker as decimal text).

use super::codec::{put_lenenc_bytes, FrameError, Reader};
use crate::command::{Masker, ResultColumn, Rewrite, ValueKind};

/// The binary collation: values of such columns are bytes, not text.
const BINARY_CHARSET: u16 = 63;

/// One column definition (protocol 4.1), as far as masking needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDef {
    pub schema: String,
    pub org_table: String,
    pub name: String,
    pub org_name: String,
    pub charset: u16,
    pub column_type: u8,
    pub flags: u16,
}

/// The column flag for unsigned integers.
const UNSIGNED_FLAG: u16 = 0x20;

impl ColumnDef {
    pub fn parse(body: &[u8]) -> Result<ColumnDef, FrameError> {
        let mut r = Reader::new(body, "column definition");
        let text = |r: &mut Reader<'_>| -> Result<String, FrameError> {
            Ok(String::from_utf8_lossy(r.lenenc_bytes()?).into_owned())
        };
        let _catalog = text(&mut r)?;
        let schema = text(&mut r)?;
        let _table = text(&mut r)?;
        let org_table = text(&mut r)?;
        let name = text(&mut r)?;
        let org_name = text(&mut r)?;
        r.lenenc()?;
        let charset = r.u16()?;
        r.u32()?;
        let column_type = r.u8()?;
        let flags = r.u16()?;
        Ok(ColumnDef {
            schema,
            org_table,
            name,
            org_name,
            charset,
            column_type,
            flags,
        })
    }

    /// How a value of this column can be rewritten in a text row.
    pub fn kind(&self) -> ValueKind {
        match self.column_type {
            // JSON (MySQL; MariaDB sends JSON as a text blob).
            0xF5 => ValueKind::Json,
            // VARCHAR, VAR_STRING, STRING, ENUM, SET and the BLOB/TEXT types.
            0x0F | 0xFD | 0xFE | 0xF7 | 0xF8 | 0xF9..=0xFC if self.charset != BINARY_CHARSET => {
                ValueKind::Text
            }
            // Numbers, dates, bit strings, binary strings, geometry: a replacement would
            // break the client's parser, so a masked value becomes NULL.
            _ => ValueKind::Opaque,
        }
    }

    pub fn column(&self) -> ResultColumn {
        let source = (!self.org_table.is_empty() && !self.org_name.is_empty()).then(|| {
            if self.schema.is_empty() {
                format!("{}.{}", self.org_table, self.org_name)
            } else {
                format!("{}.{}.{}", self.schema, self.org_table, self.org_name)
            }
        });
        ResultColumn {
            name: self.name.clone(),
            source,
            unresolved: false,
            kind: self.kind(),
        }
    }
}

/// A text row through `masker`: `Ok(None)` when every value stays as it is, else the new
/// row payload.
pub fn mask_text_row(
    masker: &mut dyn Masker,
    body: &[u8],
    columns: usize,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut r = Reader::new(body, "text row");
    let mut values = Vec::with_capacity(columns);
    let mut changed = false;
    let mut index = 0;
    while !r.is_empty() {
        let value = r.nullable_bytes()?;
        let rewrite = masker.value(index, value);
        changed |= rewrite != Rewrite::Keep;
        values.push((value, rewrite));
        index += 1;
    }
    masker.end_row();
    if !changed {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(body.len());
    for (value, rewrite) in values {
        match (rewrite, value) {
            (Rewrite::Keep, Some(v)) => put_lenenc_bytes(&mut out, v),
            (Rewrite::Keep, None) | (Rewrite::Null, _) => out.push(0xFB),
            (Rewrite::Replace(new), _) => put_lenenc_bytes(&mut out, &new),
        }
    }
    Ok(Some(out))
}

/// How a binary-protocol value of this column type is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Binary {
    /// A little-endian integer of this many bytes.
    Int(usize),
    Float,
    Double,
    /// One length byte, then that many bytes (dates, times).
    Short,
    /// A length-encoded string (strings, decimals, blobs, JSON, bits, geometry).
    Lenenc,
}

fn binary_layout(column_type: u8) -> Binary {
    match column_type {
        0x01 => Binary::Int(1),
        0x02 | 0x0D => Binary::Int(2),
        0x03 | 0x09 => Binary::Int(4),
        0x08 => Binary::Int(8),
        0x04 => Binary::Float,
        0x05 => Binary::Double,
        0x07 | 0x0A | 0x0B | 0x0C => Binary::Short,
        _ => Binary::Lenenc,
    }
}

/// A binary row (`COM_STMT_EXECUTE`) through `masker`: `Ok(None)` when every value stays as
/// it is, else the new row payload. Numbers reach the masker as decimal text; only
/// length-encoded string values can take a replacement, any other masked value becomes NULL.
pub fn mask_binary_row(
    masker: &mut dyn Masker,
    body: &[u8],
    columns: &[ColumnDef],
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut r = Reader::new(body, "binary row");
    if r.u8()? != 0x00 {
        return Err(FrameError::Malformed {
            what: "binary row",
            why: "bad header",
        });
    }
    let bitmap_len = (columns.len() + 7 + 2) / 8;
    let mut bitmap = r.take(bitmap_len)?.to_vec();
    let is_null = |bitmap: &[u8], i: usize| bitmap[(i + 2) / 8] & (1 << ((i + 2) % 8)) != 0;
    let mut values: Vec<(Option<&[u8]>, Rewrite)> = Vec::with_capacity(columns.len());
    let mut changed = false;
    for (i, column) in columns.iter().enumerate() {
        if is_null(&bitmap, i) {
            masker.value(i, None);
            values.push((None, Rewrite::Keep));
            continue;
        }
        let layout = binary_layout(column.column_type);
        let raw = match layout {
            Binary::Int(n) => r.take(n)?,
            Binary::Float => r.take(4)?,
            Binary::Double => r.take(8)?,
            Binary::Short => {
                let n = usize::from(r.u8()?);
                r.take(n)?
            }
            Binary::Lenenc => r.lenenc_bytes()?,
        };
        let decimal = number_text(layout, raw, column.flags & UNSIGNED_FLAG != 0);
        let seen = decimal.as_deref().map(str::as_bytes).unwrap_or(raw);
        let rewrite = match (masker.value(i, Some(seen)), layout) {
            (Rewrite::Keep, _) => Rewrite::Keep,
            (Rewrite::Replace(new), Binary::Lenenc) => Rewrite::Replace(new),
            (Rewrite::Replace(_) | Rewrite::Null, _) => Rewrite::Null,
        };
        changed |= rewrite != Rewrite::Keep;
        values.push((Some(raw), rewrite));
    }
    masker.end_row();
    if !changed {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(body.len());
    let mut tail = Vec::with_capacity(body.len());
    for (i, (value, rewrite)) in values.into_iter().enumerate() {
        let Some(raw) = value else { continue };
        match rewrite {
            Rewrite::Keep => {
                if let Binary::Short = binary_layout(columns[i].column_type) {
                    tail.push(raw.len() as u8);
                    tail.extend_from_slice(raw);
                } else if let Binary::Lenenc = binary_layout(columns[i].column_type) {
                    put_lenenc_bytes(&mut tail, raw);
                } else {
                    tail.extend_from_slice(raw);
                }
            }
            Rewrite::Replace(new) => put_lenenc_bytes(&mut tail, &new),
            Rewrite::Null => bitmap[(i + 2) / 8] |= 1 << ((i + 2) % 8),
        }
    }
    out.push(0x00);
    out.extend_from_slice(&bitmap);
    out.extend_from_slice(&tail);
    Ok(Some(out))
}

/// The decimal text of a binary number, for the detectors.
fn number_text(layout: Binary, raw: &[u8], unsigned: bool) -> Option<String> {
    let mut le = [0u8; 8];
    match layout {
        Binary::Int(n) => {
            le[..n].copy_from_slice(raw.get(..n)?);
            let bits = (n * 8) as u32;
            let value = u64::from_le_bytes(le);
            Some(if unsigned {
                value.to_string()
            } else {
                // Sign-extend from `bits`.
                let shift = 64 - bits;
                (((value << shift) as i64) >> shift).to_string()
            })
        }
        Binary::Float => {
            let b: [u8; 4] = raw.get(..4)?.try_into().ok()?;
            Some(f32::from_le_bytes(b).to_string())
        }
        Binary::Double => {
            let b: [u8; 8] = raw.get(..8)?.try_into().ok()?;
            Some(f64::from_le_bytes(b).to_string())
        }
        Binary::Short | Binary::Lenenc => None,
    }
}

#[cfg(test)]
mod tests;
