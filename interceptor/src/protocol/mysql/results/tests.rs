use super::*;
use crate::command::MaskReport;

fn def(schema: &str, table: &str, name: &str, charset: u16, column_type: u8) -> Vec<u8> {
    let mut b = Vec::new();
    for s in ["def", schema, table, table, name, name] {
        put_lenenc_bytes(&mut b, s.as_bytes());
    }
    b.push(0x0C);
    b.extend_from_slice(&charset.to_le_bytes());
    b.extend_from_slice(&255u32.to_le_bytes());
    b.push(column_type);
    b.extend_from_slice(&[0, 0, 0, 0, 0]);
    b.truncate(b.len() - 3);
    b.extend_from_slice(&[0, 0, 0]);
    b
}

#[test]
fn column_definitions_name_their_source_and_kind() {
    let c = ColumnDef::parse(&def("appdb", "customers", "email", 45, 0xFD))
        .unwrap()
        .column();
    assert_eq!(c.source.as_deref(), Some("appdb.customers.email"));
    assert_eq!(c.kind, ValueKind::Text);
    let c = ColumnDef::parse(&def("appdb", "customers", "id", 63, 0x03))
        .unwrap()
        .column();
    assert_eq!(c.kind, ValueKind::Opaque);
    let c = ColumnDef::parse(&def("", "", "x", 63, 0xFC))
        .unwrap()
        .column();
    assert_eq!((c.source, c.kind), (None, ValueKind::Opaque));
    assert!(ColumnDef::parse(&[3, b'd']).is_err());
}

/// Masks column 1 with `***`, NULLs column 2.
struct Fixed;
impl Masker for Fixed {
    fn value(&mut self, column: usize, value: Option<&[u8]>) -> Rewrite {
        match (column, value) {
            (1, Some(_)) => Rewrite::Replace(b"***".to_vec()),
            (2, _) => Rewrite::Null,
            _ => Rewrite::Keep,
        }
    }
    fn report(&mut self) -> MaskReport {
        MaskReport::default()
    }
}

#[test]
fn text_rows_are_rewritten_with_nulls_exact() {
    let mut row = Vec::new();
    put_lenenc_bytes(&mut row, b"1");
    put_lenenc_bytes(&mut row, b"a@example.com");
    put_lenenc_bytes(&mut row, b"x");
    row.push(0xFB);
    let out = mask_text_row(&mut Fixed, &row, 4).unwrap().unwrap();
    let mut r = Reader::new(&out, "row");
    assert_eq!(r.nullable_bytes().unwrap(), Some(&b"1"[..]));
    assert_eq!(r.nullable_bytes().unwrap(), Some(&b"***"[..]));
    assert_eq!(r.nullable_bytes().unwrap(), None);
    assert_eq!(r.nullable_bytes().unwrap(), None);
    assert!(r.is_empty());
    // A row of only kept values is not rebuilt; a truncated one is an error.
    let mut keep = Vec::new();
    put_lenenc_bytes(&mut keep, b"1");
    assert_eq!(mask_text_row(&mut Fixed, &keep, 1).unwrap(), None);
    assert!(mask_text_row(&mut Fixed, &[5, b'a'], 1).is_err());
}

#[test]
fn binary_rows_are_rewritten_by_type_with_the_null_bitmap_exact() {
    let columns: Vec<ColumnDef> = [
        def("d", "t", "id", 63, 0x03),
        def("d", "t", "email", 45, 0xFD),
        def("d", "t", "n", 63, 0x08),
        def("d", "t", "gone", 45, 0xFD),
    ]
    .iter()
    .map(|b| ColumnDef::parse(b).unwrap())
    .collect();
    // id = -1 (LONG), email = 'a@b.c', n = 5 (LONGLONG; masked: becomes NULL), gone = NULL.
    let mut row = vec![0x00, 0b0010_0000];
    row.extend_from_slice(&(-1i32).to_le_bytes());
    put_lenenc_bytes(&mut row, b"a@b.c");
    row.extend_from_slice(&5i64.to_le_bytes());
    let out = mask_binary_row(&mut Fixed, &row, &columns)
        .unwrap()
        .unwrap();
    let mut expected = vec![0x00, 0b0011_0000];
    expected.extend_from_slice(&(-1i32).to_le_bytes());
    put_lenenc_bytes(&mut expected, b"***");
    assert_eq!(out, expected);
    assert_eq!(
        number_text(Binary::Int(4), &(-1i32).to_le_bytes(), false).as_deref(),
        Some("-1")
    );
    assert_eq!(
        number_text(Binary::Int(1), &[255], true).as_deref(),
        Some("255")
    );
    // Truncated rows are errors.
    assert!(mask_binary_row(&mut Fixed, &row[..6], &columns).is_err());
}
