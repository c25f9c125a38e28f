//! Vectorised tokenisation over Arrow string arrays, producing
//! `FixedSizeBinary(16)` arrays with nulls where no token can be made.

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, FixedSizeBinaryArray};
use arrow_buffer::{Buffer, NullBufferBuilder};
use arrow_schema::DataType;
use chrono::Utc;

use crate::LinkageError;
use crate::identity::{IdentifierKind, Identity, RawIdentity};
use crate::normalise;
use crate::token::{TOKEN_LEN, TokenKind, Tokeniser};

/// The Arrow type of a token column.
pub fn token_data_type() -> DataType {
    DataType::FixedSizeBinary(TOKEN_LEN as i32)
}

/// A string column of any Arrow string layout.
#[derive(Clone, Copy)]
enum StrColumn<'a> {
    Utf8(&'a arrow_array::StringArray),
    LargeUtf8(&'a arrow_array::LargeStringArray),
    Utf8View(&'a arrow_array::StringViewArray),
}

impl<'a> StrColumn<'a> {
    fn new(name: &str, array: &'a dyn Array) -> Result<Self, LinkageError> {
        match array.data_type() {
            DataType::Utf8 => Ok(Self::Utf8(array.as_string())),
            DataType::LargeUtf8 => Ok(Self::LargeUtf8(array.as_string())),
            DataType::Utf8View => Ok(Self::Utf8View(array.as_string_view())),
            other => Err(LinkageError::ColumnType {
                column: name.to_string(),
                data_type: other.clone(),
            }),
        }
    }

    fn get(&self, i: usize) -> Option<&'a str> {
        match self {
            Self::Utf8(a) => a.is_valid(i).then(|| a.value(i)),
            Self::LargeUtf8(a) => a.is_valid(i).then(|| a.value(i)),
            Self::Utf8View(a) => a.is_valid(i).then(|| a.value(i)),
        }
    }
}

/// The identifier columns of a batch, by kind; any may be absent.
#[derive(Default, Clone)]
pub struct IdentifierColumns {
    columns: [Option<ArrayRef>; IdentifierKind::ALL.len()],
}

struct Columns<'a> {
    len: usize,
    cols: [Option<StrColumn<'a>>; IdentifierKind::ALL.len()],
}

impl IdentifierColumns {
    /// These columns with `array` as the column of `kind`.
    pub fn with(mut self, kind: IdentifierKind, array: ArrayRef) -> Self {
        self.columns[kind.index()] = Some(array);
        self
    }

    /// The column of `kind`, if any.
    pub fn get(&self, kind: IdentifierKind) -> Option<&ArrayRef> {
        self.columns[kind.index()].as_ref()
    }

    fn resolve(&self) -> Result<Columns<'_>, LinkageError> {
        let mut len = None;
        let mut cols = [None; IdentifierKind::ALL.len()];
        for (slot, kind) in cols.iter_mut().zip(IdentifierKind::ALL) {
            let Some(array) = self.get(kind) else {
                continue;
            };
            match len {
                None => len = Some(array.len()),
                Some(n) if n != array.len() => {
                    return Err(LinkageError::LengthMismatch {
                        column: kind.name().to_string(),
                        expected: n,
                        found: array.len(),
                    });
                }
                Some(_) => {}
            }
            *slot = Some(StrColumn::new(kind.name(), array.as_ref())?);
        }
        Ok(Columns {
            len: len.unwrap_or(0),
            cols,
        })
    }

    /// Calls `f` with each row's index and normalised identity.
    pub fn for_each_identity(
        &self,
        mut f: impl FnMut(usize, &Identity),
    ) -> Result<(), LinkageError> {
        let cols = self.resolve()?;
        let today = Utc::now().date_naive();
        let mut identity = Identity::default();
        for i in 0..cols.len {
            identity.renormalise(&cols.raw(i), today);
            f(i, &identity);
        }
        Ok(())
    }
}

impl<'a> Columns<'a> {
    fn raw(&self, i: usize) -> RawIdentity<'a> {
        let mut raw = RawIdentity::default();
        for (col, kind) in self.cols.iter().zip(IdentifierKind::ALL) {
            if let Some(col) = col {
                raw.set(kind, col.get(i));
            }
        }
        raw
    }
}

impl Tokeniser {
    /// Tokens of `kind` for every row; null where a component is missing.
    pub fn token_array(
        &self,
        kind: TokenKind,
        columns: &IdentifierColumns,
    ) -> Result<FixedSizeBinaryArray, LinkageError> {
        if kind == TokenKind::NhsNumber
            && let Some(nhs) = columns.get(IdentifierKind::NhsNumber)
        {
            return self.nhs_number_array(nhs);
        }
        let cols = columns.resolve()?;
        let today = Utc::now().date_naive();
        let mut identity = Identity::default();
        let mut buf = Vec::with_capacity(64);
        self.build(cols.len, |i| {
            identity.renormalise(&cols.raw(i), today);
            self.token(kind, &identity, &mut buf)
        })
    }

    /// The `pid` of every row: its strongest available token, or null.
    pub fn pid_array(
        &self,
        columns: &IdentifierColumns,
    ) -> Result<FixedSizeBinaryArray, LinkageError> {
        let cols = columns.resolve()?;
        let today = Utc::now().date_naive();
        let mut identity = Identity::default();
        let mut buf = Vec::with_capacity(64);
        let shared = self.shared_numbers();
        self.build(cols.len, |i| {
            let raw = cols.raw(i);
            // The NHS number alone decides most rows: skip normalising the
            // rest (unless this node holds the number for several people).
            if let Some(nhs) = raw.nhs_number.and_then(normalise::nhs_number)
                && !shared.contains(&nhs)
            {
                return Some(self.nhs_number_token(&nhs));
            }
            identity.renormalise(
                &RawIdentity {
                    nhs_number: None,
                    ..raw
                },
                today,
            );
            self.pid(&identity, &mut buf)
        })
    }

    /// NHS-number tokens of a string array, without per-row allocation.
    pub fn nhs_number_array(&self, nhs: &ArrayRef) -> Result<FixedSizeBinaryArray, LinkageError> {
        let col = StrColumn::new("nhs_number", nhs.as_ref())?;
        self.build(nhs.len(), |i| {
            col.get(i)
                .and_then(normalise::nhs_number)
                .map(|n| self.nhs_number_token(&n))
        })
    }

    fn build(
        &self,
        len: usize,
        mut token_of_row: impl FnMut(usize) -> Option<[u8; TOKEN_LEN]>,
    ) -> Result<FixedSizeBinaryArray, LinkageError> {
        let mut values = Vec::with_capacity(len * TOKEN_LEN);
        let mut nulls = NullBufferBuilder::new(len);
        for i in 0..len {
            match token_of_row(i) {
                Some(token) => {
                    values.extend_from_slice(&token);
                    nulls.append_non_null();
                }
                None => {
                    values.extend_from_slice(&[0; TOKEN_LEN]);
                    nulls.append_null();
                }
            }
        }
        Ok(FixedSizeBinaryArray::new(
            TOKEN_LEN as i32,
            Buffer::from_vec(values),
            nulls.finish(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::LinkageSecret;
    use arrow_array::{Int32Array, StringArray, StringViewArray};
    use std::sync::Arc;

    fn tokeniser() -> Tokeniser {
        Tokeniser::new(&LinkageSecret::from_bytes([1; 32]), "proj")
    }

    #[test]
    fn nhs_number_array_nulls_invalid_and_missing() {
        let t = tokeniser();
        let arr: ArrayRef = Arc::new(StringArray::from(vec![
            Some("9434765919"),
            Some("9434765918"),
            None,
            Some(""),
        ]));
        let out = t.nhs_number_array(&arr).unwrap();
        assert_eq!(out.data_type(), &token_data_type());
        assert_eq!(out.len(), 4);
        assert_eq!(out.value(0), t.nhs_number_token(b"9434765919"));
        assert!(out.is_null(1) && out.is_null(2) && out.is_null(3));
    }

    #[test]
    fn pid_array_falls_back_to_names_and_matches_row_api() {
        let t = tokeniser();
        let cols = IdentifierColumns::default()
            .with(
                IdentifierKind::NhsNumber,
                Arc::new(StringArray::from(vec![Some("9434765919"), None, None])),
            )
            .with(
                IdentifierKind::FamilyName,
                Arc::new(StringViewArray::from(vec![
                    Some("Smith"),
                    Some("Jones"),
                    Some("Brown"),
                ])),
            )
            .with(
                IdentifierKind::GivenName,
                Arc::new(StringArray::from(vec![Some("Alice"), Some("Bob"), None])),
            )
            .with(
                IdentifierKind::DateOfBirth,
                Arc::new(StringArray::from(vec![
                    Some("1950-02-03"),
                    Some("01/01/1960"),
                    Some("1970-01-01"),
                ])),
            )
            .with(
                IdentifierKind::Sex,
                Arc::new(StringArray::from(vec![Some("F"), Some("1"), Some("2")])),
            );
        let out = t.pid_array(&cols).unwrap();
        let mut buf = Vec::new();
        let bob = Identity::normalise(&RawIdentity {
            family_name: Some("Jones"),
            given_name: Some("Bob"),
            date_of_birth: Some("1960-01-01"),
            sex: Some("M"),
            ..Default::default()
        });
        assert_eq!(out.value(0), t.nhs_number_token(b"9434765919"));
        assert_eq!(
            out.value(1),
            t.token(TokenKind::NameDobSex, &bob, &mut buf).unwrap()
        );
        assert!(out.is_null(2), "no given name: no token");
        let by_kind = t.token_array(TokenKind::NameDobSex, &cols).unwrap();
        assert!(by_kind.is_valid(0) && by_kind.is_valid(1) && by_kind.is_null(2));
    }

    #[test]
    fn rejects_non_string_columns_and_mismatched_lengths() {
        let t = tokeniser();
        let cols = IdentifierColumns::default()
            .with(IdentifierKind::Sex, Arc::new(Int32Array::from(vec![1])));
        let err = t.pid_array(&cols).unwrap_err().to_string();
        assert!(err.contains("sex") && err.contains("Int32"), "{err}");
        let cols = IdentifierColumns::default()
            .with(
                IdentifierKind::FamilyName,
                Arc::new(StringArray::from(vec!["A", "B"])),
            )
            .with(IdentifierKind::Sex, Arc::new(StringArray::from(vec!["F"])));
        let err = t.pid_array(&cols).unwrap_err().to_string();
        assert!(err.contains("sex"), "{err}");
    }
}
