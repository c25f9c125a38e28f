//! The canonical form of a SQL query, by which a researcher's query is
//! matched to an approved request: parsed and printed again, so layout,
//! comments and the case of keywords and unquoted names do not matter, while
//! any change of meaning (a name, a literal, a condition) does.

use sqlparser::dialect::GenericDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

use crate::GovernanceError;

/// `sql`'s canonical form; it must be exactly one statement.
pub fn canonical_sql(sql: &str) -> Result<String, GovernanceError> {
    let dialect = GenericDialect {};
    let statements = Parser::parse_sql(&dialect, sql)
        .map_err(|e| GovernanceError::Invalid(format!("the SQL does not parse: {e}")))?;
    let [statement] = statements.as_slice() else {
        return Err(GovernanceError::Invalid(format!(
            "expected one SQL statement, found {}",
            statements.len()
        )));
    };
    let printed = statement.to_string();
    // Unquoted names are case-insensitive (DataFusion folds them to lower
    // case); keywords are printed in upper case.
    let tokens = Tokenizer::new(&dialect, &printed)
        .tokenize()
        .map_err(|e| GovernanceError::Invalid(format!("the SQL does not tokenise: {e}")))?;
    Ok(tokens
        .into_iter()
        .map(|token| match token {
            Token::Word(word) if word.quote_style.is_none() => {
                if word.keyword == Keyword::NoKeyword {
                    word.value.to_lowercase()
                } else {
                    word.value.to_uppercase()
                }
            }
            other => other.to_string(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_comments_and_case_do_not_matter() {
        let a = canonical_sql("SELECT area_code, count(*) FROM council.clients GROUP BY area_code")
            .unwrap();
        let b = canonical_sql(
            "select AREA_CODE,\n   COUNT(*) -- per area\n from Council.Clients /* all */ group by area_code;",
        )
        .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn any_change_of_meaning_does() {
        let base =
            canonical_sql("SELECT count(*) FROM acute.admissions WHERE birth_year < 1950").unwrap();
        for changed in [
            "SELECT count(*) FROM acute.admissions WHERE birth_year < 1951",
            "SELECT count(*) FROM acute.admissions WHERE birth_year <= 1950",
            "SELECT count(pid) FROM acute.admissions WHERE birth_year < 1950",
            "SELECT count(*) FROM acute.admissions",
            "SELECT count(*) FROM acute.\"Admissions\" WHERE birth_year < 1950",
        ] {
            assert_ne!(base, canonical_sql(changed).unwrap(), "{changed}");
        }
        // A string literal keeps its case.
        assert_ne!(
            canonical_sql("SELECT 1 WHERE 'a' = 'a'").unwrap(),
            canonical_sql("SELECT 1 WHERE 'A' = 'a'").unwrap()
        );
    }

    #[test]
    fn bad_sql_and_several_statements_are_refused_by_name() {
        assert!(
            canonical_sql("SELEC 1")
                .unwrap_err()
                .to_string()
                .contains("does not parse")
        );
        assert!(
            canonical_sql("SELECT 1; SELECT 2")
                .unwrap_err()
                .to_string()
                .contains("found 2")
        );
    }
}
