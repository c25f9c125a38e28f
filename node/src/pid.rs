//! Scalar functions used inside published tables' plans: the project-scoped
//! `pid` and the national opt-out list check. They are embedded in the
//! plans the node builds and never registered by name, so no query can call
//! them.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use carrow_linkage::normalise::{self, NhsNumber};
use carrow_linkage::{IdentifierColumns, IdentifierKind, Tokeniser, token_data_type};
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// Number of identifier arguments `carrow_pid` takes: one per identifier
/// kind, in `IdentifierKind::ALL` order.
pub const PID_ARGS: usize = IdentifierKind::ALL.len();

/// `carrow_pid(<one text argument per identifier kind>)`: the strongest
/// available token of each row, keyed for one project.
#[derive(Debug)]
pub struct PidFunction {
    tokeniser: Arc<Tokeniser>,
    signature: Signature,
}

impl PidFunction {
    /// The function for `tokeniser`'s project, as a UDF.
    pub fn udf(tokeniser: Arc<Tokeniser>) -> Arc<ScalarUDF> {
        // Volatile so that no filter over it is pushed into a source (a
        // PostgreSQL source would be sent a function it does not have).
        let signature = Signature::exact(vec![DataType::Utf8; PID_ARGS], Volatility::Volatile);
        Arc::new(ScalarUDF::from(Self {
            tokeniser,
            signature,
        }))
    }
}

impl PartialEq for PidFunction {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.tokeniser, &other.tokeniser)
    }
}
impl Eq for PidFunction {}
impl Hash for PidFunction {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.tokeniser.project().hash(state);
    }
}

fn to_arrays(args: ScalarFunctionArgs) -> Result<Vec<ArrayRef>> {
    ColumnarValue::values_to_arrays(&args.args)
}

impl ScalarUDFImpl for PidFunction {
    fn name(&self) -> &str {
        "carrow_pid"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(token_data_type())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = to_arrays(args)?;
        let columns = IdentifierKind::ALL
            .into_iter()
            .zip(arrays)
            .fold(IdentifierColumns::default(), |columns, (kind, array)| {
                columns.with(kind, array)
            });
        let pids = self
            .tokeniser
            .pid_array(&columns)
            .map_err(|e| DataFusionError::Execution(format!("computing pid: {e}")))?;
        Ok(ColumnarValue::Array(Arc::new(pids)))
    }
}

/// The national data opt-out list: normalised NHS numbers never released.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OptOutList(HashSet<NhsNumber>);

impl OptOutList {
    /// Parses a file of NHS numbers: one a line, an optional `nhs_number`
    /// header, blank lines ignored. Returns the list and the line numbers of
    /// entries that are not valid NHS numbers (never their values).
    pub fn parse(text: &str) -> (Self, Vec<usize>) {
        let mut set = HashSet::new();
        let mut invalid = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let value = line.split(',').next().unwrap_or("").trim();
            if value.is_empty() || (i == 0 && value.eq_ignore_ascii_case("nhs_number")) {
                continue;
            }
            match normalise::nhs_number(value) {
                Some(n) => {
                    set.insert(n);
                }
                None => invalid.push(i + 1),
            }
        }
        (Self(set), invalid)
    }

    /// Number of people on the list.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `carrow_opted_out(nhs)`: true where the row's NHS number is on the list.
#[derive(Debug)]
pub struct OptedOutFunction {
    list: Arc<OptOutList>,
    signature: Signature,
}

impl OptedOutFunction {
    /// The function over `list`, as a UDF.
    pub fn udf(list: Arc<OptOutList>) -> Arc<ScalarUDF> {
        // Volatile for the same reason as `carrow_pid`: it runs in the node.
        let signature = Signature::exact(vec![DataType::Utf8], Volatility::Volatile);
        Arc::new(ScalarUDF::from(Self { list, signature }))
    }
}

impl PartialEq for OptedOutFunction {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.list, &other.list)
    }
}
impl Eq for OptedOutFunction {}
impl Hash for OptedOutFunction {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.list.len().hash(state);
    }
}

impl ScalarUDFImpl for OptedOutFunction {
    fn name(&self) -> &str {
        "carrow_opted_out"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = to_arrays(args)?;
        let strings = cast(&arrays[0], &DataType::Utf8)?;
        let strings = strings
            .as_any()
            .downcast_ref::<datafusion::arrow::array::StringArray>()
            .ok_or_else(|| DataFusionError::Internal("carrow_opted_out expects strings".into()))?;
        let flags: BooleanArray = (0..strings.len())
            .map(|i| {
                let opted = strings.is_valid(i)
                    && normalise::nhs_number(strings.value(i))
                        .is_some_and(|n| self.list.0.contains(&n));
                Some(opted)
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(flags)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opt_out_list_parses_headers_and_reports_bad_lines_by_number() {
        let (list, invalid) =
            OptOutList::parse("nhs_number\n943 476 5919\n\n1234567890\n4010232137\n");
        assert_eq!(list.len(), 2);
        assert_eq!(invalid, vec![4]);
    }
}
