//! Disclosure control mechanisms: what a released cell of an aggregate may
//! show, given the persons behind it and what each contributed.
//!
//! The coordinator computes, for every cell (one output row of a controlled
//! aggregate), the number of distinct persons, the cell key (the sum of the
//! persons' record keys) and, for each measure, every person's contribution.
//! This module decides from those alone what is released:
//!
//! - **threshold**: a cell of fewer than `min_persons` persons is not
//!   released, nor is one within a sticky random margin above it
//!   (`Binomial(threshold_margin, 1/2)` more persons, drawn from the cell key);
//! - **cell key perturbation** (as in the ABS TableBuilder and ONS's 2021
//!   Census tables): one perturbation per cell, looked up from
//!   [`PERTURBATION_WEIGHTS`] by the cell key and the person count, so the
//!   same set of persons always gets the same noise whatever SQL produced it;
//! - **contribution scaling**: counts of rows and sums are expressed in units
//!   of what one person contributes (the mean of the largest contributions
//!   after the two largest are flattened to it, as Diffix does), perturbed
//!   and rounded in those units, so a person's presence or value hides in the
//!   noise whether they contribute one row, many rows or a large sum;
//! - **magnitude rules** for sums and averages (as tau-Argus and sdcTable
//!   apply them): (n,k) dominance and the p% rule over per-person
//!   contributions;
//! - **rounding** to the preset's base, in the measure's units.

use serde::{Deserialize, Serialize};
use siphasher::sip::SipHasher24;
use std::hash::Hasher;

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

/// The largest perturbation added to a cell, in the measure's units.
pub const MAX_PERTURBATION: i64 = 5;

/// The perturbation table: relative weights of perturbations -5 ..= 5. The
/// distribution is symmetric (unbiased), with variance 4.03 (standard
/// deviation 2.0): `2 * (25*1 + 16*2 + 9*4 + 4*8 + 1*12) / 68`. Cells of
/// fewer than 6 persons (possible only with `min_persons` below 6) use the
/// same shape cut to `|p| < persons`, so no count is perturbed below one.
pub const PERTURBATION_WEIGHTS: [u64; 11] = [1, 2, 4, 8, 12, 14, 12, 8, 4, 2, 1];

/// How many of the largest contributions are flattened, and over how many
/// of the next largest the flattening level (and the unit) is averaged.
pub const OUTLIERS: usize = 2;
/// See [`OUTLIERS`].
pub const TOP_GROUP: usize = 4;

/// The thresholds and parameters one result is released under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Serialize, Deserialize)]
pub struct Rules {
    /// Where the rules come from.
    pub preset: Preset,
    /// Cells about fewer distinct persons than this are never released.
    pub min_persons: u64,
    /// Released values are rounded to a multiple of this (in the measure's
    /// units; 1: whole units).
    pub round_to: u64,
    /// The sticky margin above `min_persons` is `Binomial(threshold_margin,
    /// 1/2)` persons (0: a hard threshold).
    pub threshold_margin: u32,
    /// (n,k) dominance: a sum is sensitive when its `dominance_n` largest
    /// contributors make up more than `dominance_k` percent of it.
    pub dominance_n: u32,
    /// See `dominance_n`.
    pub dominance_k: u32,
    /// p% rule: a sum is sensitive when the others than its two largest
    /// contributors add up to less than `p_percent` percent of the largest.
    pub p_percent: u32,
}

impl Preset {
    /// Every preset.
    pub const ALL: [Preset; 4] = [
        Preset::Carrow,
        Preset::Datashield,
        Preset::Opensafely,
        Preset::Pcornet,
    ];

    /// The preset's rules. Every preset perturbs by the cell key method and
    /// applies the magnitude rules: (n,k) = (2, 85), sdcTable's default, and
    /// the p% rule with p = 20 (agencies keep their own p confidential; 20
    /// is the value in the US Bureau of Labor Statistics' published example
    /// of its p% test). With these values the p% rule catches cells the
    /// dominance rule lets through: one large contributor, a small second.
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
            threshold_margin: 4,
            dominance_n: 2,
            dominance_k: 85,
            p_percent: 20,
        }
    }
}

/// Overrides of a preset's parameters (the coordinator's `[disclosure]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overrides {
    pub min_persons: Option<u64>,
    pub round_to: Option<u64>,
    pub threshold_margin: Option<u32>,
    pub dominance_n: Option<u32>,
    pub dominance_k: Option<u32>,
    pub p_percent: Option<u32>,
}

impl Rules {
    /// `preset`'s rules with `overrides`; values that would switch a
    /// mechanism off by accident are refused, naming the key.
    pub fn new(preset: Preset, overrides: Overrides) -> Result<Self, GovernanceError> {
        let mut rules = preset.rules();
        let invalid = |m: &str| Err(GovernanceError::Invalid(format!("disclosure.{m}")));
        if let Some(n) = overrides.min_persons {
            if n < 2 {
                return invalid(
                    "min_persons must be at least 2 (a cell of one person is that person)",
                );
            }
            rules.min_persons = n;
        }
        if let Some(r) = overrides.round_to {
            if r == 0 {
                return invalid("round_to must be at least 1");
            }
            rules.round_to = r;
        }
        if let Some(m) = overrides.threshold_margin {
            if m > 32 {
                return invalid("threshold_margin must be at most 32");
            }
            rules.threshold_margin = m;
        }
        if let Some(n) = overrides.dominance_n {
            if n == 0 {
                return invalid("dominance_n must be at least 1");
            }
            rules.dominance_n = n;
        }
        if let Some(k) = overrides.dominance_k {
            if k == 0 || k > 100 {
                return invalid("dominance_k is a percentage between 1 and 100");
            }
            rules.dominance_k = k;
        }
        if let Some(p) = overrides.p_percent {
            if p > 100 {
                return invalid("p_percent is a percentage between 0 and 100");
            }
            rules.p_percent = p;
        }
        Ok(rules)
    }

    /// Each parameter set weaker than every preset sets it, named with the
    /// weakest preset value (empty when no parameter is).
    pub fn weaker_than_presets(&self) -> Vec<String> {
        let presets: Vec<Rules> = Preset::ALL.iter().map(|p| p.rules()).collect();
        let weakest = |get: fn(&Rules) -> u64, stronger_is_larger: bool| {
            let values = presets.iter().map(get);
            if stronger_is_larger {
                values.min()
            } else {
                values.max()
            }
            .expect("there are presets")
        };
        let mut weaker = Vec::new();
        let mut check = |name: &str, get: fn(&Rules) -> u64, stronger_is_larger: bool| {
            let (mine, floor) = (get(self), weakest(get, stronger_is_larger));
            let weaker_here = if stronger_is_larger {
                mine < floor
            } else {
                mine > floor
            };
            if weaker_here {
                weaker.push(format!(
                    "disclosure.{name} = {mine} is weaker than every preset (the weakest has {floor})"
                ));
            }
        };
        check("min_persons", |r| r.min_persons, true);
        check("threshold_margin", |r| r.threshold_margin.into(), true);
        check("dominance_n", |r| r.dominance_n.into(), true);
        check("dominance_k", |r| r.dominance_k.into(), false);
        check("p_percent", |r| r.p_percent.into(), true);
        weaker
    }

    /// One line saying what was applied, for result metadata and logs.
    pub fn describe(&self) -> String {
        let rounding = match self.round_to {
            1 => "rounded to whole units".to_string(),
            r => format!("rounded to multiples of {r} units"),
        };
        format!(
            "{:?}: cells of fewer than {} persons suppressed (more within a sticky margin of up to {}), \
             values perturbed by the cell key method and {rounding}, sums under ({},{}) dominance and the p% rule (p = {})",
            self.preset,
            self.min_persons,
            self.threshold_margin,
            self.dominance_n,
            self.dominance_k,
            self.p_percent
        )
        .to_lowercase()
    }

    /// Whether a cell of `persons` persons must be suppressed whatever its
    /// cell key (the hard part of the threshold).
    pub fn below_threshold(&self, persons: u64) -> bool {
        persons < self.min_persons
    }

    /// The cell's perturbation, or `None` when the cell is not released
    /// (below the threshold or within its sticky margin).
    pub fn perturbation(&self, keys: &RecordKeys, cell: Cell) -> Option<i64> {
        if self.below_threshold(cell.persons) {
            return None;
        }
        let margin = binomial_half(
            keys.lookup(cell.cell_key, cell.persons, Lookup::Margin),
            self.threshold_margin,
        );
        if cell.persons < self.min_persons + margin {
            return None;
        }
        let draw = keys.lookup(cell.cell_key, cell.persons, Lookup::Perturbation);
        Some(perturbation(draw, cell.persons))
    }

    /// The released count of `persons` distinct persons under perturbation `p`.
    pub fn release_persons(&self, persons: u64, p: i64) -> i64 {
        self.round_units(persons as f64 + p as f64, 1.0).max(0.0) as i64
    }

    /// The released value of a count of rows or a sum, from its per-person
    /// contributions, under the cell's perturbation `p`. Counts are never
    /// released below zero.
    pub fn release_measure(&self, contributions: &Contributions, p: i64, count: bool) -> f64 {
        let (flattened, level) = contributions.flattened();
        let unit = if count {
            nice_unit(level.max(1.0))
        } else {
            nice_unit(level)
        };
        if unit == 0.0 {
            return 0.0;
        }
        let released = self.round_units(flattened / unit + p as f64, unit);
        if count { released.max(0.0) } else { released }
    }

    /// `value` (in units) rounded to the rounding base, scaled back by `unit`.
    fn round_units(&self, value: f64, unit: f64) -> f64 {
        let base = self.round_to.max(1) as f64;
        (value / base).round() * base * unit
    }

    /// Which magnitude rule makes a sum with these contributions sensitive,
    /// if any.
    pub fn magnitude_sensitive(&self, contributions: &Contributions) -> Option<MagnitudeRule> {
        let top = contributions.top();
        let total: f64 = contributions.total_abs;
        if total == 0.0 {
            return None;
        }
        let n = (self.dominance_n as usize).min(top.len());
        let largest: f64 = top[..n].iter().map(|c| c.abs()).sum();
        if largest > total * self.dominance_k as f64 / 100.0 {
            return Some(MagnitudeRule::Dominance);
        }
        let x1 = top.first().map_or(0.0, |c| c.abs());
        let x2 = top.get(1).map_or(0.0, |c| c.abs());
        if total - x1 - x2 < self.p_percent as f64 / 100.0 * x1 {
            return Some(MagnitudeRule::PPercent);
        }
        None
    }
}

/// The magnitude rule that made a cell sensitive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MagnitudeRule {
    Dominance,
    PPercent,
}

/// A perturbation from a uniform `draw`, for a cell of `persons` persons.
fn perturbation(draw: u64, persons: u64) -> i64 {
    let reach = MAX_PERTURBATION.min(persons.saturating_sub(1) as i64);
    let weights = &PERTURBATION_WEIGHTS
        [(MAX_PERTURBATION - reach) as usize..=(MAX_PERTURBATION + reach) as usize];
    let total: u64 = weights.iter().sum();
    let mut at = ((draw as u128 * total as u128) >> 64) as u64;
    for (i, w) in weights.iter().enumerate() {
        if at < *w {
            return i as i64 - reach;
        }
        at -= w;
    }
    reach
}

/// A `Binomial(trials, 1/2)` draw from the bits of `draw`.
fn binomial_half(draw: u64, trials: u32) -> u64 {
    let mask = if trials >= 64 {
        u64::MAX
    } else {
        (1u64 << trials) - 1
    };
    (draw & mask).count_ones() as u64
}

/// The smallest of 1, 2 and 5 times a power of ten that is at least `level`
/// (0 for 0): the unit a measure is perturbed and rounded in.
pub fn nice_unit(level: f64) -> f64 {
    if level.is_nan() || level <= 0.0 || !level.is_finite() {
        return 0.0;
    }
    let mut unit = 10f64.powi(level.log10().floor() as i32);
    for step in [1.0, 2.0, 5.0, 10.0] {
        if unit * step >= level * (1.0 - 1e-12) {
            unit *= step;
            return unit;
        }
    }
    unit * 10.0
}

/// The persons behind one cell: how many, and the sum of their record keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cell {
    pub persons: u64,
    /// Sum (wrapping) of the persons' record keys.
    pub cell_key: u64,
}

impl Cell {
    /// Adds a person with record key `key`.
    pub fn add(&mut self, key: u64) {
        self.persons += 1;
        self.cell_key = self.cell_key.wrapping_add(key);
    }
}

/// Per-person contributions to one measure of one cell: their total and the
/// largest few, which is all the mechanisms need.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Contributions {
    /// The sum of every contribution.
    pub total: f64,
    /// The sum of their absolute values.
    pub total_abs: f64,
    /// The largest contributions by absolute value, largest first.
    largest: [f64; OUTLIERS + TOP_GROUP],
    len: usize,
}

impl Contributions {
    /// Adds one person's contribution.
    pub fn add(&mut self, c: f64) {
        self.total += c;
        self.total_abs += c.abs();
        let keep = self.largest.len();
        if self.len == keep && c.abs() <= self.largest[keep - 1].abs() {
            return;
        }
        let mut at = self.len.min(keep - 1);
        if self.len < keep {
            self.len += 1;
        }
        while at > 0 && self.largest[at - 1].abs() < c.abs() {
            self.largest[at] = self.largest[at - 1];
            at -= 1;
        }
        self.largest[at] = c;
    }

    /// The largest contributions, largest first.
    pub fn top(&self) -> &[f64] {
        &self.largest[..self.len]
    }

    /// The total with its largest contributions flattened, and the level
    /// they were flattened to: the two largest (fewer in a tiny cell) are
    /// brought down to the mean absolute value of the next four, which is
    /// also what one person is taken to contribute.
    pub fn flattened(&self) -> (f64, f64) {
        let top = self.top();
        if top.is_empty() {
            return (self.total, 0.0);
        }
        let outliers = OUTLIERS.min(top.len().saturating_sub(1));
        let group = &top[outliers..];
        let level = group.iter().map(|c| c.abs()).sum::<f64>() / group.len() as f64;
        let excess: f64 = top[..outliers]
            .iter()
            .map(|c| c.signum() * (c.abs() - level).max(0.0))
            .sum();
        (self.total - excess, level)
    }
}

/// What [`RecordKeys::lookup`] draws for.
#[derive(Debug, Clone, Copy)]
enum Lookup {
    Margin = 1,
    Perturbation = 2,
}

/// Record keys of one project: each person's fixed random key, from their
/// person key under a secret that planners never hold (SipHash-2-4, a
/// keyed pseudo-random function), and the table lookups drawn from cell keys.
#[derive(Clone)]
pub struct RecordKeys {
    k0: u64,
    k1: u64,
}

impl std::fmt::Debug for RecordKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordKeys(<redacted>)")
    }
}

impl RecordKeys {
    /// Keys from 16 secret bytes (derived per project by the coordinator).
    pub fn new(key: &[u8; 16]) -> Self {
        let (a, b) = key.split_at(8);
        Self {
            k0: u64::from_le_bytes(a.try_into().expect("8 bytes")),
            k1: u64::from_le_bytes(b.try_into().expect("8 bytes")),
        }
    }

    /// The record key of the person with person key `person`.
    pub fn record_key(&self, person: &[u8]) -> u64 {
        let mut h = SipHasher24::new_with_keys(self.k0, self.k1);
        h.write(b"record");
        h.write(person);
        h.finish()
    }

    /// A uniform draw for `purpose` from a cell key and the cell's count.
    fn lookup(&self, cell_key: u64, persons: u64, purpose: Lookup) -> u64 {
        let mut h = SipHasher24::new_with_keys(self.k0, self.k1);
        h.write(b"lookup");
        h.write_u8(purpose as u8);
        h.write_u64(cell_key);
        h.write_u64(persons);
        h.finish()
    }
}

/// What disclosure control did to one result (sent with it, and audited).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The rules applied, in words.
    pub rule: String,
    /// Cells released.
    pub rows_released: usize,
    /// Cells not released: too few persons (within the sticky margin included).
    pub rows_suppressed: usize,
    /// Sums and averages withheld (NULL) by the magnitude rules.
    pub cells_suppressed: usize,
    /// Values released perturbed and rounded.
    pub cells_perturbed: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> RecordKeys {
        RecordKeys::new(&[7u8; 16])
    }

    #[test]
    fn presets_carry_their_published_thresholds() {
        assert_eq!(Preset::Carrow.rules().min_persons, 10);
        assert_eq!(Preset::Datashield.rules().min_persons, 3);
        let os = Preset::Opensafely.rules();
        assert!(os.below_threshold(7) && !os.below_threshold(8));
        assert_eq!(os.round_to, 5);
        let pcornet = Preset::Pcornet.rules();
        assert!(pcornet.below_threshold(10) && !pcornet.below_threshold(11));
        let zero_round = Overrides {
            round_to: Some(0),
            ..Default::default()
        };
        assert!(Rules::new(Preset::Carrow, zero_round).is_err());
        let one_person = Overrides {
            min_persons: Some(1),
            ..Default::default()
        };
        let err = Rules::new(Preset::Carrow, one_person).unwrap_err();
        assert!(err.to_string().contains("disclosure.min_persons"), "{err}");
        let five = Overrides {
            min_persons: Some(5),
            ..Default::default()
        };
        assert_eq!(Rules::new(Preset::Carrow, five).unwrap().min_persons, 5);
    }

    #[test]
    fn the_perturbation_table_is_unbiased_with_variance_four() {
        let total: u64 = PERTURBATION_WEIGHTS.iter().sum();
        let mean: f64 = PERTURBATION_WEIGHTS
            .iter()
            .enumerate()
            .map(|(i, w)| (i as f64 - 5.0) * *w as f64)
            .sum::<f64>()
            / total as f64;
        let variance: f64 = PERTURBATION_WEIGHTS
            .iter()
            .enumerate()
            .map(|(i, w)| (i as f64 - 5.0).powi(2) * *w as f64)
            .sum::<f64>()
            / total as f64;
        assert_eq!(mean, 0.0);
        assert!((variance - 4.03).abs() < 0.01, "{variance}");
        // Draws over the whole range follow the table.
        let mut seen = [0u64; 11];
        let steps = 68_000u64;
        for i in 0..steps {
            let draw = (u64::MAX / steps) * i;
            seen[(perturbation(draw, 100) + 5) as usize] += 1;
        }
        for (i, w) in PERTURBATION_WEIGHTS.iter().enumerate() {
            assert!((seen[i] as i64 - (*w * 1000) as i64).abs() <= 1, "{seen:?}");
        }
        // Small cells are never perturbed below one person.
        for draw in [0, u64::MAX / 3, u64::MAX] {
            assert!(perturbation(draw, 3).abs() <= 2);
        }
    }

    #[test]
    fn the_same_persons_always_get_the_same_noise_and_others_other_noise() {
        let rules = Preset::Carrow.rules();
        let k = keys();
        let cell_of = |persons: std::ops::Range<u64>| {
            let mut cell = Cell::default();
            for p in persons {
                cell.add(k.record_key(&p.to_le_bytes()));
            }
            cell
        };
        let a = cell_of(0..200);
        assert_eq!(
            rules.perturbation(&k, a),
            rules.perturbation(&k, cell_of(0..200))
        );
        // Persons added in another order give the same cell key.
        let mut b = Cell::default();
        for p in (0..200u64).rev() {
            b.add(k.record_key(&p.to_le_bytes()));
        }
        assert_eq!(a, b);
        // Over many cells differing by one person the noise varies.
        let distinct: std::collections::HashSet<i64> = (200..260)
            .filter_map(|n| rules.perturbation(&k, cell_of(0..n)))
            .collect();
        assert!(distinct.len() >= 6, "{distinct:?}");
    }

    #[test]
    fn small_cells_are_never_released_and_the_margin_is_sticky() {
        let rules = Preset::Carrow.rules();
        let k = keys();
        for key in 0..500u64 {
            let cell = |persons| Cell {
                persons,
                cell_key: key.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            };
            assert_eq!(rules.perturbation(&k, cell(9)), None);
            assert!(rules.perturbation(&k, cell(14)).is_some());
            assert_eq!(
                rules.perturbation(&k, cell(11)),
                rules.perturbation(&k, cell(11))
            );
        }
        let released_at = |persons| {
            (0..2000u64)
                .filter(|key| {
                    rules
                        .perturbation(
                            &k,
                            Cell {
                                persons,
                                cell_key: key.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                            },
                        )
                        .is_some()
                })
                .count()
        };
        // Binomial(4, 1/2): P(margin = 0) = 1/16, P(margin <= 2) = 11/16.
        let at_ten = released_at(10);
        assert!((60..200).contains(&at_ten), "{at_ten}");
        let at_twelve = released_at(12);
        assert!((1250..1500).contains(&at_twelve), "{at_twelve}");
    }

    #[test]
    fn units_are_one_two_or_five_times_a_power_of_ten() {
        assert_eq!(nice_unit(1.0), 1.0);
        assert_eq!(nice_unit(1.2), 2.0);
        assert_eq!(nice_unit(3.0), 5.0);
        assert_eq!(nice_unit(5.0), 5.0);
        assert_eq!(nice_unit(6.0), 10.0);
        assert_eq!(nice_unit(873.0), 1000.0);
        assert_eq!(nice_unit(0.03), 0.05);
        assert_eq!(nice_unit(0.0), 0.0);
    }

    #[test]
    fn contributions_keep_the_largest_and_flatten_the_top_two() {
        let mut c = Contributions::default();
        for v in [1.0, 50.0, 3.0, 2.0, -40.0, 4.0, 5.0, 1.0, 2.0] {
            c.add(v);
        }
        assert_eq!(c.top(), &[50.0, -40.0, 5.0, 4.0, 3.0, 2.0]);
        assert_eq!(c.total, 28.0);
        // Next four: 5, 4, 3, 2 -> level 3.5; 50 -> 3.5 and -40 -> -3.5.
        let (flattened, level) = c.flattened();
        assert_eq!(level, 3.5);
        assert_eq!(flattened, 28.0 - 46.5 + 36.5);
    }

    #[test]
    fn a_multiplied_count_is_released_as_the_person_count_times_the_multiplier() {
        // Every person contributing 5 rows (a cross join with five constant
        // rows) is perturbed and rounded in units of 5: no finer than counting persons.
        let rules = Preset::Carrow.rules();
        for persons in [37u64, 123, 998] {
            for p in -5..=5 {
                let mut once = Contributions::default();
                let mut five = Contributions::default();
                for _ in 0..persons {
                    once.add(1.0);
                    five.add(5.0);
                }
                let a = rules.release_measure(&once, p, true);
                let b = rules.release_measure(&five, p, true);
                assert_eq!(a, rules.release_persons(persons, p) as f64);
                assert_eq!(b, 5.0 * a, "{persons} {p}");
                // Floats are controlled like integers (sum(1.0)).
                let mut tenth = Contributions::default();
                for _ in 0..persons {
                    tenth.add(0.1);
                }
                assert!((rules.release_measure(&tenth, p, false) - a / 10.0).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn one_large_contributor_is_hidden_in_noise_of_its_own_size() {
        let rules = Preset::Carrow.rules();
        let mut without = Contributions::default();
        for i in 0..30 {
            without.add(100.0 + i as f64);
        }
        let mut with = without.clone();
        with.add(5_000.0);
        // The outlier is flattened to the level of the next contributors: its
        // presence moves the released value by about one unit, which the
        // perturbation covers.
        let difference = with.flattened().0 - without.flattened().0;
        let (_, level) = with.flattened();
        assert!(difference <= 2.0 * level, "{difference} vs {level}");
        assert_eq!(nice_unit(level), 200.0);
        let released = rules.release_measure(&with, 0, false);
        assert_eq!(released % 1000.0, 0.0, "{released}");
    }

    #[test]
    fn dominance_and_p_percent_flag_sums_one_or_two_persons_make() {
        let rules = Preset::Carrow.rules();
        let sum_of = |values: &[f64]| {
            let mut c = Contributions::default();
            for v in values {
                c.add(*v);
            }
            c
        };
        let mut even = vec![10.0; 20];
        assert_eq!(rules.magnitude_sensitive(&sum_of(&even)), None);
        even.push(2_000.0);
        assert_eq!(
            rules.magnitude_sensitive(&sum_of(&even)),
            Some(MagnitudeRule::Dominance)
        );
        // The two largest holding 84% pass (2, 85), but the others (19 x 10
        // = 190) are less than 20% of the largest (1 000): p%.
        let mut p = vec![10.0; 19];
        p.extend([1_000.0, 10.0]);
        let c = sum_of(&p);
        assert!(c.top()[..2].iter().sum::<f64>() / c.total_abs <= 0.85 + 1e-9);
        assert_eq!(rules.magnitude_sensitive(&c), Some(MagnitudeRule::PPercent));
    }

    #[test]
    fn settings_weaker_than_every_preset_are_named() {
        for preset in Preset::ALL {
            assert!(
                preset.rules().weaker_than_presets().is_empty(),
                "{preset:?}"
            );
        }
        let weak = Overrides {
            min_persons: Some(2),
            threshold_margin: Some(0),
            dominance_k: Some(95),
            ..Default::default()
        };
        let named = Rules::new(Preset::Datashield, weak)
            .unwrap()
            .weaker_than_presets()
            .join("\n");
        for part in [
            "min_persons = 2 is weaker than every preset (the weakest has 3)",
            "threshold_margin = 0",
            "dominance_k = 95",
        ] {
            assert!(named.contains(part), "{named}");
        }
        assert!(!named.contains("p_percent"), "{named}");
        // Stronger than the presets is fine.
        let strong = Overrides {
            min_persons: Some(20),
            p_percent: Some(50),
            ..Default::default()
        };
        assert!(
            Rules::new(Preset::Carrow, strong)
                .unwrap()
                .weaker_than_presets()
                .is_empty()
        );
    }
}
