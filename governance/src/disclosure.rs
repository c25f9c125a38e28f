//! Disclosure control rules: which result rows describe too few persons to
//! release, which totals must be hidden with them so no hidden cell can be
//! recomputed by subtraction, and how counts are rounded.
//!
//! The coordinator counts the persons behind every output row; this module
//! decides, given those counts, what is released.

use serde::{Deserialize, Serialize};

use crate::GovernanceError;

/// Named rule sets used by established trusted research environments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// Fewer than 10 persons suppressed; counts rounded to the nearest 5.
    #[default]
    Carrow,
    /// DataSHIELD's default filter: fewer than 3 persons suppressed.
    Datashield,
    /// OpenSAFELY: 7 or fewer persons redacted; counts rounded to the nearest 5.
    Opensafely,
    /// PCORnet: fewer than 11 persons suppressed.
    Pcornet,
}

/// The thresholds one result is released under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Serialize, Deserialize)]
pub struct Rules {
    /// Where the rules come from.
    pub preset: Preset,
    /// Rows describing fewer persons than this have their measures suppressed.
    pub min_persons: u64,
    /// Counts are rounded to the nearest multiple of this (1: no rounding).
    pub round_to: u64,
}

impl Preset {
    /// The preset's rules.
    pub fn rules(self) -> Rules {
        let (min_persons, round_to) = match self {
            Preset::Carrow => (10, 5),
            Preset::Datashield => (3, 1),
            Preset::Opensafely => (8, 5),
            Preset::Pcornet => (11, 1),
        };
        Rules {
            preset: self,
            min_persons,
            round_to,
        }
    }
}

impl Rules {
    /// `preset`'s rules with the given overrides; zero is refused.
    pub fn new(
        preset: Preset,
        min_persons: Option<u64>,
        round_to: Option<u64>,
    ) -> Result<Self, GovernanceError> {
        let mut rules = preset.rules();
        if let Some(n) = min_persons {
            rules.min_persons = n;
        }
        if let Some(r) = round_to {
            if r == 0 {
                return Err(GovernanceError::Invalid(
                    "disclosure.round_to must be at least 1".into(),
                ));
            }
            rules.round_to = r;
        }
        Ok(rules)
    }

    /// One line saying what was applied, for result metadata and logs.
    pub fn describe(&self) -> String {
        let rounding = match self.round_to {
            1 => "counts not rounded".to_string(),
            r => format!("counts rounded to the nearest {r}"),
        };
        format!(
            "{:?}: rows of fewer than {} persons suppressed, {rounding}",
            self.preset, self.min_persons
        )
        .to_lowercase()
    }

    /// Whether a row describing `persons` persons must be suppressed.
    pub fn suppresses(&self, persons: u64) -> bool {
        persons < self.min_persons
    }

    /// `count` rounded to the nearest multiple of `round_to`.
    pub fn round(&self, count: i64) -> i64 {
        let r = self.round_to as i64;
        if r <= 1 {
            return count;
        }
        (count + r / 2).div_euclid(r) * r
    }
}

/// Which grouping set a result row belongs to and its group values, for
/// results with ROLLUP, CUBE or GROUPING SETS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupKey {
    /// Bit `i` set: grouping column `i` is grouped in this row (not a total over it).
    pub grouped: u64,
    /// The row's grouping column values, as text (NULL as `None`).
    pub values: Vec<Option<String>>,
}

impl GroupKey {
    /// Whether `self` is a total over rows including `detail`: it groups by a
    /// strict subset of `detail`'s columns, with the same values there.
    fn totals(&self, detail: &GroupKey) -> bool {
        self.grouped != detail.grouped
            && self.grouped & detail.grouped == self.grouped
            && (0..self.values.len())
                .filter(|i| self.grouped & (1 << i) != 0)
                .all(|i| self.values[i] == detail.values[i])
    }
}

/// Secondary suppression: every total over a suppressed row is suppressed
/// too, up to the grand total, so no equation "total = sum of parts" has
/// only one hidden term. Returns how many rows it added.
pub fn suppress_totals(suppressed: &mut [bool], keys: &[GroupKey]) -> usize {
    let mut added = 0;
    loop {
        let mut changed = false;
        for detail in 0..keys.len() {
            if !suppressed[detail] {
                continue;
            }
            for total in 0..keys.len() {
                if !suppressed[total] && keys[total].totals(&keys[detail]) {
                    suppressed[total] = true;
                    added += 1;
                    changed = true;
                }
            }
        }
        if !changed {
            return added;
        }
    }
}

/// What disclosure control did to one result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The rules applied, in words.
    pub rule: String,
    /// Rows whose measures were suppressed because they describe too few persons.
    pub rows_suppressed: usize,
    /// Further rows suppressed because they total a suppressed row.
    pub totals_suppressed: usize,
    /// Measure cells set to NULL.
    pub cells_suppressed: usize,
    /// Count cells rounded.
    pub counts_rounded: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(grouped: u64, values: &[Option<&str>]) -> GroupKey {
        GroupKey {
            grouped,
            values: values.iter().map(|v| v.map(str::to_string)).collect(),
        }
    }

    #[test]
    fn presets_carry_their_published_thresholds() {
        assert_eq!(Preset::Carrow.rules().min_persons, 10);
        assert_eq!(Preset::Datashield.rules().min_persons, 3);
        let os = Preset::Opensafely.rules();
        assert!(os.suppresses(7) && !os.suppresses(8));
        assert_eq!(os.round_to, 5);
        let pcornet = Preset::Pcornet.rules();
        assert!(pcornet.suppresses(10) && !pcornet.suppresses(11));
        assert!(Rules::new(Preset::Carrow, None, Some(0)).is_err());
        assert_eq!(
            Rules::new(Preset::Carrow, Some(5), None)
                .unwrap()
                .min_persons,
            5
        );
    }

    #[test]
    fn counts_round_to_the_nearest_multiple() {
        let rules = Preset::Carrow.rules();
        assert_eq!(
            [0, 2, 3, 7, 8, 12, 13, 1002].map(|c| rules.round(c)),
            [0, 0, 5, 5, 10, 10, 15, 1000]
        );
        assert_eq!(Preset::Pcornet.rules().round(13), 13);
    }

    #[test]
    fn every_total_over_a_suppressed_cell_is_suppressed_up_to_the_grand_total() {
        // ROLLUP (sex, decile): details, per-sex totals, the grand total.
        let keys = vec![
            key(0b11, &[Some("F"), Some("1")]),
            key(0b11, &[Some("F"), Some("2")]),
            key(0b11, &[Some("M"), Some("1")]),
            key(0b11, &[Some("M"), Some("2")]),
            key(0b01, &[Some("F"), None]),
            key(0b01, &[Some("M"), None]),
            key(0b00, &[None, None]),
        ];
        let mut suppressed = vec![false, true, false, false, false, false, false];
        let added = suppress_totals(&mut suppressed, &keys);
        assert_eq!(added, 2);
        assert_eq!(
            suppressed,
            vec![false, true, false, false, true, false, true]
        );
    }

    #[test]
    fn totals_of_other_groups_are_left_alone() {
        let keys = vec![
            key(0b11, &[Some("F"), Some("1")]),
            key(0b01, &[Some("M"), None]),
            key(0b10, &[None, Some("2")]),
        ];
        let mut suppressed = vec![true, false, false];
        assert_eq!(suppress_totals(&mut suppressed, &keys), 0);
    }
}
