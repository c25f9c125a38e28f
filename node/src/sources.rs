//! Local sources: the organisation's raw tables, registered in a private
//! DataFusion session that queries never see directly.

use std::path::Path;
use std::time::SystemTime;

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionContext};

use crate::config::SourceConfig;
use crate::postgres;

/// Registers one source under `name` in `ctx`. Errors name the source and
/// say what is wrong (missing file, unreadable header, connection refused).
pub async fn register(
    ctx: &SessionContext,
    name: &str,
    source: &SourceConfig,
) -> Result<(), String> {
    match source {
        SourceConfig::Csv {
            path,
            delimiter,
            infer_types,
        } => {
            check_file(path)?;
            let extension = extension_of(path);
            let delimiter = u8::try_from(*delimiter)
                .map_err(|_| format!("delimiter {delimiter:?} is not one byte"))?;
            let mut options = CsvReadOptions::new()
                .has_header(true)
                .delimiter(delimiter)
                .file_extension(&extension);
            // Without inference every column is text, so identifiers keep
            // their leading zeros and odd values never fail a whole file.
            let text_schema;
            if !infer_types {
                text_schema = all_text_schema(path, delimiter)?;
                options = options.schema(&text_schema);
            }
            ctx.register_csv(name, &path.to_string_lossy(), options)
                .await
                .map_err(|e| format!("cannot read CSV file {}: {e}", path.display()))
        }
        SourceConfig::Parquet { path } => {
            check_file(path)?;
            let extension = extension_of(path);
            let options = ParquetReadOptions {
                file_extension: &extension,
                ..Default::default()
            };
            ctx.register_parquet(name, &path.to_string_lossy(), options)
                .await
                .map_err(|e| format!("cannot read Parquet file {}: {e}", path.display()))
        }
        SourceConfig::Postgres(pg) => postgres::register(ctx, name, pg).await,
    }
}

/// The modification time of a file source, for freshness.
pub fn modified(source: &SourceConfig) -> Option<SystemTime> {
    match source {
        SourceConfig::Csv { path, .. } | SourceConfig::Parquet { path } => {
            std::fs::metadata(path).and_then(|m| m.modified()).ok()
        }
        SourceConfig::Postgres(_) => None,
    }
}

fn check_file(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(format!("{} is not a file", path.display())),
        Err(e) => Err(format!("cannot open {}: {e}", path.display())),
    }
}

fn extension_of(path: &Path) -> String {
    path.extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default()
}

fn all_text_schema(path: &Path, delimiter: u8) -> Result<Schema, String> {
    use std::io::BufRead;
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut header = String::new();
    std::io::BufReader::new(file)
        .read_line(&mut header)
        .map_err(|e| format!("cannot read the header of {}: {e}", path.display()))?;
    let header = header.trim_end_matches(['\r', '\n']);
    if header.is_empty() {
        return Err(format!("{} has no header row", path.display()));
    }
    let fields: Vec<Field> = header
        .split(delimiter as char)
        .map(|name| Field::new(name.trim_matches('"'), DataType::Utf8, true))
        .collect();
    Ok(Schema::new(fields))
}
