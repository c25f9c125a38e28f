//! Types at the client boundary: strings cross as `Utf8`, not `Utf8View` or
//! `LargeUtf8`, so that JDBC and other Flight SQL clients read them.

use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::common::{Column, Result};
use datafusion::logical_expr::{Expr, cast};
use datafusion::prelude::DataFrame;

/// The type a column of `data_type` has at the boundary.
pub fn client_type(data_type: &DataType) -> DataType {
    match data_type {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        other => other.clone(),
    }
}

/// `field` with its boundary type.
pub fn client_field(field: &Field) -> Field {
    field.clone().with_data_type(client_type(field.data_type()))
}

/// Adds a projection casting every column to its boundary type, when needed.
pub fn to_client_types(df: DataFrame) -> Result<DataFrame> {
    let needs_cast = df
        .schema()
        .fields()
        .iter()
        .any(|f| client_type(f.data_type()) != *f.data_type());
    if !needs_cast {
        return Ok(df);
    }
    let exprs: Vec<Expr> = df
        .schema()
        .iter()
        .map(|(qualifier, field)| {
            let column = Expr::Column(Column::from((qualifier, field)));
            let target = client_type(field.data_type());
            if target == *field.data_type() {
                column
            } else {
                cast(column, target).alias_qualified(qualifier.cloned(), field.name())
            }
        })
        .collect();
    df.select(exprs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn string_views_become_utf8_and_names_survive() {
        let ctx = SessionContext::new();
        let df = ctx
            .sql("SELECT arrow_cast('a', 'Utf8View') AS s, 1 AS n, arrow_cast('b', 'LargeUtf8') AS l")
            .await
            .unwrap();
        let df = to_client_types(df).unwrap();
        let schema = df.schema().as_arrow().clone();
        assert_eq!(
            schema.field_with_name("s").unwrap().data_type(),
            &DataType::Utf8
        );
        assert_eq!(
            schema.field_with_name("l").unwrap().data_type(),
            &DataType::Utf8
        );
        assert_eq!(
            schema.field_with_name("n").unwrap().data_type(),
            &DataType::Int64
        );
        let batches = df.collect().await.unwrap();
        assert_eq!(batches[0].schema().field(0).data_type(), &DataType::Utf8);
    }
}
