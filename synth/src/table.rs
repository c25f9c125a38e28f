//! A small column-wise table builder for the generated local tables.

use std::sync::Arc;

use arrow_array::{ArrayRef, Date32Array, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use chrono::NaiveDate;

/// Values of one column.
pub enum Values {
    Str(Vec<Option<String>>),
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Date(Vec<Option<NaiveDate>>),
}

/// A local table under construction: named columns filled row by row.
pub struct Table {
    pub name: &'static str,
    columns: Vec<(&'static str, Values)>,
}

/// One cell value when appending a row.
pub enum Cell {
    Str(Option<String>),
    Int(Option<i64>),
    Float(Option<f64>),
    Date(Option<NaiveDate>),
}

impl From<String> for Cell {
    fn from(v: String) -> Self {
        Cell::Str(Some(v))
    }
}
impl From<&str> for Cell {
    fn from(v: &str) -> Self {
        Cell::Str(Some(v.to_string()))
    }
}
impl From<Option<String>> for Cell {
    fn from(v: Option<String>) -> Self {
        Cell::Str(v)
    }
}
impl From<i64> for Cell {
    fn from(v: i64) -> Self {
        Cell::Int(Some(v))
    }
}
impl From<f64> for Cell {
    fn from(v: f64) -> Self {
        Cell::Float(Some(v))
    }
}
impl From<NaiveDate> for Cell {
    fn from(v: NaiveDate) -> Self {
        Cell::Date(Some(v))
    }
}
impl From<Option<NaiveDate>> for Cell {
    fn from(v: Option<NaiveDate>) -> Self {
        Cell::Date(v)
    }
}

impl Table {
    /// A table with the given column names and kinds.
    pub fn new(name: &'static str, columns: &[(&'static str, DataType)]) -> Self {
        let columns = columns
            .iter()
            .map(|(n, t)| {
                let values = match t {
                    DataType::Utf8 => Values::Str(Vec::new()),
                    DataType::Int64 => Values::Int(Vec::new()),
                    DataType::Float64 => Values::Float(Vec::new()),
                    DataType::Date32 => Values::Date(Vec::new()),
                    other => unreachable!("synthetic tables do not use {other}"),
                };
                (*n, values)
            })
            .collect();
        Self { name, columns }
    }

    /// Appends one row; cells must match the columns' kinds in order.
    pub fn push(&mut self, row: Vec<Cell>) {
        assert_eq!(
            row.len(),
            self.columns.len(),
            "row width for table {}",
            self.name
        );
        for ((name, values), cell) in self.columns.iter_mut().zip(row) {
            match (values, cell) {
                (Values::Str(v), Cell::Str(c)) => v.push(c),
                (Values::Int(v), Cell::Int(c)) => v.push(c),
                (Values::Float(v), Cell::Float(c)) => v.push(c),
                (Values::Date(v), Cell::Date(c)) => v.push(c),
                _ => panic!("cell kind does not match column {}.{name}", self.name),
            }
        }
    }

    /// Number of rows so far.
    pub fn len(&self) -> usize {
        match self.columns.first().map(|c| &c.1) {
            Some(Values::Str(v)) => v.len(),
            Some(Values::Int(v)) => v.len(),
            Some(Values::Float(v)) => v.len(),
            Some(Values::Date(v)) => v.len(),
            None => 0,
        }
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The table as one Arrow record batch.
    pub fn to_batch(&self) -> RecordBatch {
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
        let mut fields = Vec::new();
        let mut arrays: Vec<ArrayRef> = Vec::new();
        for (name, values) in &self.columns {
            let (data_type, array): (DataType, ArrayRef) = match values {
                Values::Str(v) => (DataType::Utf8, Arc::new(StringArray::from(v.clone()))),
                Values::Int(v) => (DataType::Int64, Arc::new(Int64Array::from(v.clone()))),
                Values::Float(v) => (DataType::Float64, Arc::new(Float64Array::from(v.clone()))),
                Values::Date(v) => (
                    DataType::Date32,
                    Arc::new(Date32Array::from(
                        v.iter()
                            .map(|d| d.map(|d| (d - epoch).num_days() as i32))
                            .collect::<Vec<_>>(),
                    )),
                ),
            };
            fields.push(Field::new(*name, data_type, true));
            arrays.push(array);
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
            .expect("columns have equal lengths")
    }
}
