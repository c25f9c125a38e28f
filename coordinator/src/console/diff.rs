//! A line diff (longest common subsequence) between two versions of a
//! request's SQL, for the board to see what changed.

/// One line of a diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Same(String),
    Removed(String),
    Added(String),
}

/// The lines of `old` and `new` as kept, removed and added.
pub fn lines(old: &str, new: &str) -> Vec<Line> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    // lcs[i][j]: the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push(Line::Same(a[i].to_string()));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(Line::Removed(a[i].to_string()));
            i += 1;
        } else {
            out.push(Line::Added(b[j].to_string()));
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_line_is_removed_then_added_and_the_rest_kept() {
        let old = "SELECT a\nFROM t\nWHERE x = 1";
        let new = "SELECT a\nFROM t\nWHERE x = 2\nLIMIT 5";
        assert_eq!(
            lines(old, new),
            vec![
                Line::Same("SELECT a".into()),
                Line::Same("FROM t".into()),
                Line::Removed("WHERE x = 1".into()),
                Line::Added("WHERE x = 2".into()),
                Line::Added("LIMIT 5".into()),
            ]
        );
        assert!(
            lines("same", "same")
                .iter()
                .all(|l| matches!(l, Line::Same(_)))
        );
    }
}
