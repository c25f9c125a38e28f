//! Estimating the Fellegi-Sunter model: u from random pairs; m from pairs
//! the data labels as matches (records sharing a valid NHS number or a
//! national id) wherever there are enough of them, by
//! expectation-maximisation otherwise; term-frequency adjusted u for exact
//! agreement on names, dates and addresses, as Splink does; and guard rails
//! that keep the model from learning the wrong thing (names and dates of
//! birth must carry evidence; household fields may not outweigh a person's).

use std::collections::HashMap;

use serde::Serialize;

use crate::comparison::{COMPARISONS, Pattern, at, compare};
use crate::fields::FieldTokens;
use crate::matching::LinkRecord;
use crate::token::Token;

/// Labelled pairs a comparison needs before its m is taken from them.
pub const MIN_LABELS: usize = 100;

/// Where a comparison's m probabilities came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MSource {
    /// Counted over pairs the data labels as matches.
    Labels,
    /// Expectation-maximisation over candidate pairs.
    Em,
}

/// m and u per comparison level, the prior, and how m was found.
#[derive(Debug, Clone)]
pub struct Model {
    pub m: Vec<Vec<f64>>,
    pub u: Vec<Vec<f64>>,
    pub prior: f64,
    pub m_source: Vec<MSource>,
    /// Labelled pairs each comparison's m was counted over.
    pub labels: Vec<usize>,
    /// The most the household comparisons together may add (log2 units).
    pub household_cap: f64,
}

impl Model {
    pub fn initial() -> Self {
        let spread = |best: f64, n: usize| -> Vec<f64> {
            // Agreement likely for matches (m) or unlikely (u); "missing" is
            // neutral and is never estimated.
            let mut v = vec![(1.0 - best) / (n - 2) as f64; n];
            v[0] = best;
            v[n - 1] = 1.0;
            v
        };
        Self {
            m: COMPARISONS
                .iter()
                .map(|c| spread(0.9, c.levels.len()))
                .collect(),
            u: COMPARISONS
                .iter()
                .map(|c| spread(0.05, c.levels.len()))
                .collect(),
            prior: 0.1,
            m_source: vec![MSource::Em; COMPARISONS.len()],
            labels: vec![0; COMPARISONS.len()],
            household_cap: f64::INFINITY,
        }
    }

    /// The log2 Bayes factor of comparison `c` at `level`.
    pub fn weight(&self, c: usize, level: u8) -> f64 {
        (self.m[c][level as usize] / self.u[c][level as usize]).log2()
    }

    /// The match probability of a pattern ignoring the comparisons in the
    /// `fixed` bit set (no term frequencies: for training).
    pub fn probability_without(&self, p: &Pattern, fixed: u16) -> f64 {
        let (mut m, mut u) = (self.prior, 1.0 - self.prior);
        for (c, &level) in p.iter().enumerate() {
            if fixed & (1 << c) == 0 {
                m *= self.m[c][level as usize];
                u *= self.u[c][level as usize];
            }
        }
        m / (m + u)
    }

    /// u from random pairs: how often records of different people agree.
    pub fn estimate_u(&mut self, records: &[LinkRecord], samples: usize) {
        let n = records.len() as u64;
        if n < 2 {
            return;
        }
        let mut sums: Vec<Vec<f64>> = self.u.iter().map(|l| vec![0.0; l.len()]).collect();
        // A fixed xorshift sequence: the same records give the same estimate.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let all_pairs = n * (n - 1) / 2;
        let mut taken = 0;
        while taken < samples as u64 && taken < all_pairs {
            let (i, j) = ((next() % n) as usize, (next() % n) as usize);
            if i == j {
                continue;
            }
            let pattern = compare(&records[i].fields, &records[j].fields);
            for (c, &level) in pattern.iter().enumerate() {
                sums[c][level as usize] += 1.0;
            }
            taken += 1;
        }
        self.u = sums.iter().map(|s| normalise_levels(s)).collect();
    }

    /// m of every comparison with enough labelled pairs, counted over them.
    /// `labelled` holds each labelled pair's pattern and the comparisons
    /// that labelled it (which say nothing of themselves).
    pub fn m_from_labels(&mut self, labelled: &[(Pattern, u16)]) {
        for c in 0..COMPARISONS.len() {
            let mut sums = vec![0.0; self.m[c].len()];
            let mut n = 0;
            for (pattern, by) in labelled {
                if by & (1 << c) == 0 {
                    sums[pattern[c] as usize] += 1.0;
                    n += 1;
                }
            }
            // Pairs missing this comparison say nothing of it either.
            let known = n - sums.last().copied().unwrap_or(0.0) as usize;
            if known >= MIN_LABELS {
                self.m[c] = normalise_levels(&sums);
                self.m_source[c] = MSource::Labels;
                self.labels[c] = known;
            }
        }
    }

    /// One EM round over the pattern counts of pairs found by one blocking
    /// rule: m of the comparisons the rule does not use, and the share of
    /// matches (u is fixed from random pairs). The rule's own comparisons
    /// agree by construction, so they say nothing here and are left out.
    pub fn step(&mut self, patterns: &HashMap<Pattern, u64>, fixed: u16) {
        let mut m_sum: Vec<Vec<f64>> = self.m.iter().map(|l| vec![0.0; l.len()]).collect();
        let (mut matches, mut total) = (0.0, 0.0);
        for (pattern, &count) in patterns {
            let w = self.probability_without(pattern, fixed);
            let n = count as f64;
            matches += w * n;
            total += n;
            for (c, &level) in pattern.iter().enumerate() {
                m_sum[c][level as usize] += w * n;
            }
        }
        for (c, sums) in m_sum.iter().enumerate() {
            if fixed & (1 << c) == 0 {
                self.m[c] = normalise_levels(sums);
            }
        }
        self.prior = (matches / total.max(1.0)).clamp(1e-6, 0.999);
    }

    /// Keeps the model from settling on the wrong answer: name and birth
    /// date agreement must be evidence for a match and their disagreement
    /// evidence against (at least one bit each way), their levels must not
    /// rank a worse agreement above a better one, and the household
    /// comparisons together may add no more than what a person-level
    /// disagreement takes away, less one bit.
    pub fn guard_rails(&mut self) {
        for c in [at::FAMILY, at::GIVEN, at::DOB] {
            let n = self.m[c].len() - 1;
            // Exact agreement: at least twice as likely for matches.
            self.m[c][0] = self.m[c][0].max(2.0 * self.u[c][0]);
            // Disagreement: at least twice as likely for non-matches.
            self.m[c][n - 1] = self.m[c][n - 1].min(0.5 * self.u[c][n - 1]);
            // Partial levels rank between, in order.
            for l in 1..n - 1 {
                let above = self.weight(c, l as u8 - 1);
                if self.weight(c, l as u8) > above {
                    self.m[c][l] = self.u[c][l] * above.exp2();
                }
            }
            let known: f64 = self.m[c][..n].iter().sum();
            for v in &mut self.m[c][..n] {
                *v /= known;
            }
        }
        let penalty = [at::GIVEN, at::DOB]
            .iter()
            .map(|&c| -self.weight(c, crate::comparison::disagree(c)))
            .fold(f64::INFINITY, f64::min);
        self.household_cap = (penalty - 1.0).max(1.0);
    }
}

/// Level counts to probabilities over the known levels (with a little
/// smoothing so no level is impossible); "missing" stays neutral at 1.
pub fn normalise_levels(sums: &[f64]) -> Vec<f64> {
    let last = sums.len() - 1;
    let known: f64 = sums[..last].iter().sum();
    let mut out: Vec<f64> = sums[..last]
        .iter()
        .map(|s| ((s + 0.01) / (known + 0.01 * last as f64)).clamp(1e-6, 1.0))
        .collect();
    out.push(1.0);
    out
}

/// The value of a record that exact agreement on comparison `c` is about,
/// for term frequencies (an address is its set of words).
pub fn tf_value(c: usize, f: &FieldTokens) -> Option<u64> {
    let fold = |t: &Token| u64::from_le_bytes(t[..8].try_into().expect("8 bytes"));
    match c {
        at::FAMILY => f.family.as_ref().map(fold),
        at::GIVEN => f.given.as_ref().map(fold),
        at::DOB => f.dob.as_ref().map(fold),
        at::POSTCODE => f.postcode.as_ref().map(fold),
        at::LOCALITY => f.locality.as_ref().map(fold),
        at::ADDRESS if !f.address_words.is_empty() => Some(
            f.address_words
                .iter()
                .fold(0xcbf2_9ce4_8422_2325u64, |h, t| {
                    (h ^ fold(t)).wrapping_mul(0x0000_0100_0000_01b3)
                }),
        ),
        _ => None,
    }
}

/// How often each value occurs, for the comparisons that adjust for it.
#[derive(Debug, Default)]
pub struct TermFrequencies {
    counts: Vec<HashMap<u64, u32>>,
    totals: Vec<u64>,
}

/// Comparisons whose exact agreement is weighed by how common the value is.
pub const TF_COMPARISONS: [usize; 6] = [
    at::FAMILY,
    at::GIVEN,
    at::DOB,
    at::POSTCODE,
    at::ADDRESS,
    at::LOCALITY,
];

impl TermFrequencies {
    /// Counts every record's values.
    pub fn count(records: &[LinkRecord]) -> Self {
        let mut out = Self {
            counts: vec![HashMap::new(); COMPARISONS.len()],
            totals: vec![0; COMPARISONS.len()],
        };
        for r in records {
            for c in TF_COMPARISONS {
                if let Some(v) = tf_value(c, &r.fields) {
                    *out.counts[c].entry(v).or_default() += 1;
                    out.totals[c] += 1;
                }
            }
        }
        out
    }

    /// The chance a record of another person has `value` for comparison
    /// `c`: its share of the records holding one, and never below one
    /// record's share.
    pub fn u(&self, c: usize, value: u64) -> Option<f64> {
        let total = *self.totals.get(c)? as f64;
        let count = *self.counts.get(c)?.get(&value)? as f64;
        (total > 0.0).then(|| count.max(1.0) / total)
    }
}
