//! Record linkage over field tokens: deterministic links on strong shared
//! tokens, then Fellegi-Sunter scoring of candidate pairs (found by blocking
//! on token equality, never all pairs) with m and u probabilities estimated
//! by expectation-maximisation, as Splink does on plaintext. Every record
//! gets a person key: the smallest `pid` of the records linked to it.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::blocking::{BLOCKING_RULES, BlockKey, BlockingRule};
use crate::fields::{Field, FieldTokens, share_variant, shared};
use crate::token::Token;

/// One record to link: where it came from, its `pid` and its field tokens.
#[derive(Debug, Clone)]
pub struct LinkRecord {
    /// The node (or dataset) it came from.
    pub source: u32,
    pub pid: Token,
    pub fields: FieldTokens,
}

/// Linkage settings.
#[derive(Debug, Clone, Copy)]
pub struct LinkOptions {
    /// A candidate pair links when its match probability reaches this.
    pub threshold: f64,
    /// Pairs whose probability is within this of the threshold are reported as uncertain.
    pub uncertainty: f64,
    /// Blocks with more records than this are skipped (too common to tell apart).
    pub max_block: usize,
    /// Expectation-maximisation rounds.
    pub em_rounds: usize,
    /// Random record pairs sampled to estimate u probabilities.
    pub u_samples: usize,
}

impl Default for LinkOptions {
    fn default() -> Self {
        Self {
            threshold: 0.9,
            uncertainty: 0.4,
            max_block: 500,
            em_rounds: 25,
            u_samples: 200_000,
        }
    }
}

/// One comparison and its levels, best first; the last level is "missing".
struct Comparison {
    name: &'static str,
    levels: &'static [&'static str],
}

const COMPARISONS: [Comparison; 9] = [
    Comparison {
        name: "nhs_number",
        levels: &["agree", "disagree", "missing"],
    },
    Comparison {
        name: "national_id",
        levels: &["exact", "one edit", "disagree", "missing"],
    },
    Comparison {
        name: "family",
        levels: &["exact", "one edit", "phonetic", "disagree", "missing"],
    },
    Comparison {
        name: "given",
        levels: &["exact", "one edit", "initial", "disagree", "missing"],
    },
    Comparison {
        name: "date_of_birth",
        levels: &["exact", "one digit", "year or day", "disagree", "missing"],
    },
    Comparison {
        name: "sex",
        levels: &["agree", "disagree", "missing"],
    },
    Comparison {
        name: "postcode",
        levels: &["exact", "one edit", "sector", "disagree", "missing"],
    },
    Comparison {
        name: "address",
        levels: &["all words", "most words", "a word", "disagree", "missing"],
    },
    Comparison {
        name: "locality",
        levels: &["exact", "one edit", "disagree", "missing"],
    },
];

/// Bits of a comparison set, by position in [`COMPARISONS`].
pub(crate) mod bit {
    pub const NATIONAL_ID: u16 = 1 << 1;
    pub const FAMILY: u16 = 1 << 2;
    pub const GIVEN: u16 = 1 << 3;
    pub const DOB: u16 = 1 << 4;
    pub const POSTCODE: u16 = 1 << 6;
    pub const ADDRESS: u16 = 1 << 7;
    pub const LOCALITY: u16 = 1 << 8;
}

/// The agreement pattern of a pair: one level per comparison.
type Pattern = [u8; COMPARISONS.len()];

fn same(a: Option<&Token>, b: Option<&Token>) -> Option<bool> {
    Some(a? == b?)
}

/// The level of one comparison whose levels are: exact, each partial
/// agreement of `partial` (tried in order, only when needed), disagree,
/// missing. `exact` is `None` when either side is missing.
fn level(exact: Option<bool>, partial: &[&dyn Fn() -> bool]) -> u8 {
    let n = partial.len() as u8;
    match exact {
        None => n + 2,
        Some(true) => 0,
        Some(false) => partial
            .iter()
            .position(|agrees| agrees())
            .map_or(n + 1, |i| i as u8 + 1),
    }
}

/// Address level: all words shared, at least two thirds, at least one, none.
fn compare_address(a: &[Token], b: &[Token]) -> u8 {
    if a.is_empty() || b.is_empty() {
        return 4;
    }
    let common = shared(a, b);
    let most = a.len().max(b.len());
    if common == most {
        0
    } else if common * 3 >= most * 2 {
        1
    } else if common > 0 {
        2
    } else {
        3
    }
}

/// One name against another: exact, one edit, `weaker`, disagree, missing.
fn name(
    x: Option<&Token>,
    x_variants: &[Token],
    y: Option<&Token>,
    y_variants: &[Token],
    weaker: &dyn Fn() -> bool,
) -> u8 {
    level(
        same(x, y),
        &[&|| share_variant(x_variants, y_variants), weaker],
    )
}

/// Family and given name levels (exact, one edit, phonetic or initial,
/// disagree, missing), taking one record's names the other way round when
/// that agrees better (they were written in each other's place).
fn compare_names(a: &FieldTokens, b: &FieldTokens) -> (u8, u8) {
    let straight = (
        name(
            a.family.as_ref(),
            &a.family_variants,
            b.family.as_ref(),
            &b.family_variants,
            &|| same(a.family_phonetic.as_ref(), b.family_phonetic.as_ref()) == Some(true),
        ),
        name(
            a.given.as_ref(),
            &a.given_variants,
            b.given.as_ref(),
            &b.given_variants,
            &|| same(a.given_initial.as_ref(), b.given_initial.as_ref()) == Some(true),
        ),
    );
    if straight == (0, 0) {
        return straight;
    }
    // Phonetic codes and initials are not comparable across the two parts.
    let swapped = (
        name(
            a.family.as_ref(),
            &a.family_variants,
            b.given.as_ref(),
            &b.given_variants,
            &|| false,
        ),
        name(
            a.given.as_ref(),
            &a.given_variants,
            b.family.as_ref(),
            &b.family_variants,
            &|| false,
        ),
    );
    let known = |(f, g): (u8, u8)| f < 4 && g < 4;
    if known(swapped) && known(straight) && swapped.0 + swapped.1 < straight.0 + straight.1 {
        swapped
    } else {
        straight
    }
}

fn compare(a: &FieldTokens, b: &FieldTokens) -> Pattern {
    let same_field = |f: Field| same(a.get(f), b.get(f));
    let agree = |f: Field| same_field(f) == Some(true);
    let close = |f: Field| share_variant(a.list(f), b.list(f));
    let (family, given) = compare_names(a, b);
    [
        level(same_field(Field::NhsNumber), &[]),
        level(
            same_field(Field::NationalId),
            &[&|| close(Field::NationalIdVariant)],
        ),
        family,
        given,
        level(
            same_field(Field::Dob),
            &[&|| close(Field::DobVariant), &|| {
                agree(Field::DobYear) || agree(Field::DobMonthDay)
            }],
        ),
        level(same_field(Field::Sex), &[]),
        level(
            same_field(Field::Postcode),
            &[&|| close(Field::PostcodeVariant), &|| agree(Field::Sector)],
        ),
        compare_address(&a.address_words, &b.address_words),
        level(
            same_field(Field::Locality),
            &[&|| close(Field::LocalityVariant)],
        ),
    ]
}

/// m and u probabilities per comparison level, and the share of matches.
#[derive(Debug, Clone)]
struct Model {
    m: Vec<Vec<f64>>,
    u: Vec<Vec<f64>>,
    prior: f64,
}

impl Model {
    fn initial() -> Self {
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
        }
    }

    fn probability(&self, p: &Pattern) -> f64 {
        self.probability_without(p, 0)
    }

    /// The match probability ignoring the comparisons in the `fixed` bit set.
    fn probability_without(&self, p: &Pattern, fixed: u16) -> f64 {
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
    fn estimate_u(&mut self, records: &[LinkRecord], samples: usize) {
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

    /// One EM round over the pattern counts of pairs found by one blocking
    /// rule: m of the comparisons the rule does not use, and the share of
    /// matches (u is fixed from random pairs). The rule's own comparisons
    /// agree by construction, so they say nothing here and are left out.
    fn step(&mut self, patterns: &HashMap<Pattern, u64>, fixed: u16) {
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
}

/// Level counts to probabilities over the known levels (with a little
/// smoothing so no level is impossible); "missing" stays neutral at 1.
fn normalise_levels(sums: &[f64]) -> Vec<f64> {
    let last = sums.len() - 1;
    let known: f64 = sums[..last].iter().sum();
    let mut out: Vec<f64> = sums[..last]
        .iter()
        .map(|s| ((s + 0.01) / (known + 0.01 * last as f64)).clamp(1e-6, 1.0))
        .collect();
    out.push(1.0);
    out
}

/// A comparison level's estimated m, u and match weight (log2 m/u).
#[derive(Debug, Clone, Serialize)]
pub struct LevelWeight {
    pub comparison: &'static str,
    pub level: &'static str,
    pub m: f64,
    pub u: f64,
    pub weight: f64,
}

/// How many candidate pairs a blocking rule found.
#[derive(Debug, Clone, Serialize)]
pub struct RulePairs {
    pub rule: &'static str,
    pub pairs: usize,
}

/// What linkage did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LinkReport {
    pub records: usize,
    /// Records joined to another by the same pid (as they join without linkage).
    pub linked_by_pid: usize,
    /// Records joined to another by a shared NHS-number token.
    pub linked_by_nhs_number: usize,
    /// Further records joined by the same name, date of birth and sex.
    pub linked_by_name_dob_sex: usize,
    /// Further records joined by Fellegi-Sunter scoring.
    pub linked_by_score: usize,
    pub candidate_pairs: usize,
    /// Pairs each blocking rule found (a pair may be found by several).
    pub pairs_by_rule: Vec<RulePairs>,
    /// Candidate pairs scored within the uncertainty band around the threshold.
    pub uncertain_pairs: usize,
    pub blocks_skipped: usize,
    pub persons: usize,
    pub estimated_match_share: f64,
    pub weights: Vec<LevelWeight>,
}

/// Every record's person key, and the report.
#[derive(Debug, Clone)]
pub struct Linkage {
    pub keys: Vec<Token>,
    pub report: LinkReport,
}

struct UnionFind(Vec<u32>);

impl UnionFind {
    fn find(&mut self, mut i: u32) -> u32 {
        while self.0[i as usize] != i {
            let parent = self.0[self.0[i as usize] as usize];
            self.0[i as usize] = parent;
            i = parent;
        }
        i
    }
    /// Joins the sets of `a` and `b`; whether they were apart.
    fn union(&mut self, a: u32, b: u32) -> bool {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra == rb {
            return false;
        }
        let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
        self.0[hi as usize] = lo;
        true
    }
}

/// Groups record indices by their keys under `rule`.
fn blocks(records: &[LinkRecord], rule: &BlockingRule) -> HashMap<BlockKey, Vec<u32>> {
    let mut out: HashMap<BlockKey, Vec<u32>> = HashMap::new();
    let mut keys = Vec::new();
    for (i, r) in records.iter().enumerate() {
        keys.clear();
        (rule.keys)(&r.fields, &mut keys);
        keys.sort_unstable();
        keys.dedup();
        for key in &keys {
            out.entry(*key).or_default().push(i as u32);
        }
    }
    out
}

/// Groups record indices by a key, skipping records without one.
fn groups<K: std::hash::Hash + Eq>(
    records: &[LinkRecord],
    key: impl Fn(&FieldTokens) -> Option<K>,
) -> HashMap<K, Vec<u32>> {
    let mut out: HashMap<K, Vec<u32>> = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        if let Some(k) = key(&r.fields) {
            out.entry(k).or_default().push(i as u32);
        }
    }
    out
}

/// Links `records`, reporting progress through `progress`.
pub fn link(
    records: &[LinkRecord],
    options: &LinkOptions,
    mut progress: impl FnMut(&str),
) -> Linkage {
    let n = records.len();
    let mut sets = UnionFind((0..n as u32).collect());
    let mut report = LinkReport {
        records: n,
        ..Default::default()
    };

    // Deterministic: the same pid (how records link without this stage),
    // the same NHS number, then the same name, date of birth and sex where
    // the NHS numbers do not contradict it.
    let mut by_pid: HashMap<Token, u32> = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        if let Some(&first) = by_pid.get(&r.pid) {
            report.linked_by_pid += sets.union(first, i as u32) as usize;
        } else {
            by_pid.insert(r.pid, i as u32);
        }
    }
    for members in groups(records, |f| f.nhs_number).into_values() {
        for w in members.windows(2) {
            report.linked_by_nhs_number += sets.union(w[0], w[1]) as usize;
        }
    }
    for members in groups(records, |f| Some((f.family?, f.given?, f.dob?, f.sex?))).into_values() {
        // Two NHS numbers under one name and birth date are two people: a
        // record without a number cannot be given to either on these fields
        // alone, so scoring (postcode and the rest) decides.
        let numbers: HashSet<&Token> = members
            .iter()
            .filter_map(|&i| records[i as usize].fields.nhs_number.as_ref())
            .collect();
        if numbers.len() > 1 {
            continue;
        }
        for w in members.windows(2) {
            report.linked_by_name_dob_sex += sets.union(w[0], w[1]) as usize;
        }
    }
    progress(&format!(
        "deterministic: {} links by NHS number, {} by name, date of birth and sex",
        report.linked_by_nhs_number, report.linked_by_name_dob_sex
    ));

    // Candidate pairs: records sharing a blocking key.
    let mut pairs: HashMap<(u32, u32), Pattern> = HashMap::new();
    let mut sessions: Vec<(u16, HashMap<Pattern, u64>)> = Vec::new();
    for rule in BLOCKING_RULES {
        let mut counts: HashMap<Pattern, u64> = HashMap::new();
        let mut seen: HashSet<(u32, u32)> = HashSet::new();
        let max_block = rule
            .max_block
            .map_or(options.max_block, |m| m.min(options.max_block));
        for members in blocks(records, rule).into_values() {
            if members.len() > max_block {
                report.blocks_skipped += 1;
                continue;
            }
            for (x, &i) in members.iter().enumerate() {
                for &j in &members[x + 1..] {
                    if !seen.insert((i, j)) {
                        continue; // the pair shares several of this rule's keys
                    }
                    // Every rule trains on all its pairs, seen before or not.
                    let pattern = *pairs.entry((i, j)).or_insert_with(|| {
                        compare(&records[i as usize].fields, &records[j as usize].fields)
                    });
                    *counts.entry(pattern).or_default() += 1;
                }
            }
        }
        report.pairs_by_rule.push(RulePairs {
            rule: rule.name,
            pairs: seen.len(),
        });
        sessions.push((rule.fixed, counts));
    }
    report.candidate_pairs = pairs.len();
    progress(&format!("{} candidate pairs from blocking", pairs.len()));

    // Expectation-maximisation over the patterns' counts.
    let mut counts: HashMap<Pattern, u64> = HashMap::new();
    for pattern in pairs.values() {
        *counts.entry(*pattern).or_default() += 1;
    }
    let mut model = Model::initial();
    model.estimate_u(records, options.u_samples);
    // Train on each rule's pairs; a comparison's m is the mean of the
    // estimates from the rules that leave it free.
    let mut m_sums: Vec<Vec<f64>> = model.m.iter().map(|l| vec![0.0; l.len()]).collect();
    let mut m_counts = [0usize; COMPARISONS.len()];
    let mut expected_matches: f64 = report.linked_by_nhs_number as f64;
    for (fixed, session) in &sessions {
        if session.is_empty() {
            continue;
        }
        let mut trained = model.clone();
        for _ in 0..options.em_rounds {
            trained.step(session, *fixed);
        }
        let pairs: u64 = session.values().sum();
        expected_matches = expected_matches.max(trained.prior * pairs as f64);
        for c in 0..COMPARISONS.len() {
            if fixed & (1 << c) == 0 {
                m_counts[c] += 1;
                for (sum, m) in m_sums[c].iter_mut().zip(&trained.m[c]) {
                    *sum += m;
                }
            }
        }
    }
    for c in 0..COMPARISONS.len() {
        if m_counts[c] > 0 {
            model.m[c] = m_sums[c].iter().map(|s| s / m_counts[c] as f64).collect();
        }
    }
    // The prior: the chance that two records drawn at random match (u is
    // measured on random pairs too), from the matches the best rule found.
    let all_pairs = (n as f64) * (n as f64 - 1.0) / 2.0;
    model.prior = (expected_matches.max(1.0) / all_pairs.max(1.0)).clamp(1e-12, 0.5);
    report.estimated_match_share = model.prior;
    for (c, comparison) in COMPARISONS.iter().enumerate() {
        for (l, level) in comparison
            .levels
            .iter()
            .enumerate()
            .take(comparison.levels.len() - 1)
        {
            let (m, u) = (model.m[c][l], model.u[c][l]);
            report.weights.push(LevelWeight {
                comparison: comparison.name,
                level,
                m,
                u,
                weight: (m / u).log2(),
            });
        }
    }

    // Score: link pairs at or above the threshold.
    let scores: HashMap<Pattern, f64> = counts.keys().map(|p| (*p, model.probability(p))).collect();
    let mut ordered: Vec<(&(u32, u32), &Pattern)> = pairs.iter().collect();
    ordered.sort_unstable_by_key(|(k, _)| **k);
    for ((i, j), pattern) in ordered {
        let p = scores[pattern];
        if (p - options.threshold).abs() < options.uncertainty && p < 1.0 - 1e-9 && p > 1e-9 {
            report.uncertain_pairs += 1;
        }
        if p >= options.threshold {
            report.linked_by_score += sets.union(*i, *j) as usize;
        }
    }
    progress(&format!(
        "scoring: {} further links",
        report.linked_by_score
    ));

    // Person key: the smallest pid in each set.
    let mut smallest: HashMap<u32, Token> = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        let root = sets.find(i as u32);
        smallest
            .entry(root)
            .and_modify(|t| *t = (*t).min(r.pid))
            .or_insert(r.pid);
    }
    report.persons = smallest.len();
    let keys = (0..n as u32).map(|i| smallest[&sets.find(i)]).collect();
    Linkage { keys, report }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::FieldTokeniser;
    use crate::identity::{Identity, RawIdentity};
    use crate::secret::LinkageSecret;

    fn record(source: u32, pid: u8, ids: [Option<&str>; 6]) -> LinkRecord {
        let secret = LinkageSecret::from_bytes([3u8; 32]);
        let [nhs, family, given, dob, sex, postcode] = ids;
        let identity = Identity::normalise(&RawIdentity {
            nhs_number: nhs,
            family_name: family,
            given_name: given,
            date_of_birth: dob,
            sex,
            postcode,
            ..Default::default()
        });
        LinkRecord {
            source,
            pid: [pid; 16],
            fields: FieldTokeniser::new(&secret, "p").tokens(&identity),
        }
    }

    #[test]
    fn namesakes_born_the_same_day_are_told_apart_by_what_else_they_share() {
        let a = record(
            0,
            1,
            [
                Some("9434765919"),
                Some("Smith"),
                Some("John"),
                Some("1950-01-01"),
                Some("M"),
                Some("LS1 1AA"),
            ],
        );
        let b = record(
            0,
            2,
            [
                Some("4010232137"),
                Some("Smith"),
                Some("John"),
                Some("1950-01-01"),
                Some("M"),
                Some("LS9 9ZZ"),
            ],
        );
        let c = record(
            1,
            3,
            [
                None,
                Some("Smith"),
                Some("John"),
                Some("1950-01-01"),
                Some("M"),
                Some("LS9 9ZZ"),
            ],
        );
        let linked = link(&[a, b, c], &LinkOptions::default(), |_| {});
        assert_ne!(
            linked.keys[0], linked.keys[1],
            "two NHS numbers, two people"
        );
        assert_ne!(
            linked.keys[0], linked.keys[2],
            "c does not live where a lives"
        );
        assert_eq!(linked.report.linked_by_name_dob_sex, 0);
    }

    #[test]
    fn levels_run_exact_partial_disagree_missing() {
        assert_eq!(level(Some(true), &[&|| panic!("not needed")]), 0);
        assert_eq!(level(Some(false), &[&|| false, &|| true]), 2);
        assert_eq!(level(Some(false), &[&|| false, &|| false]), 3);
        assert_eq!(level(None, &[&|| true, &|| true]), 4);
        assert_eq!(level(Some(false), &[]), 1);
        assert_eq!(level(None, &[]), 2);
    }

    fn tokens(raw: RawIdentity<'_>) -> FieldTokens {
        let secret = LinkageSecret::from_bytes([3u8; 32]);
        FieldTokeniser::new(&secret, "p").tokens(&Identity::normalise(&raw))
    }

    #[test]
    fn swapped_names_addresses_and_localities_are_compared_by_their_parts() {
        let a = tokens(RawIdentity {
            family_name: Some("Rollins"),
            given_name: Some("Ashleigh"),
            date_of_birth: Some("19180307"),
            address: Some("22 McRae Place, Mansfield Park"),
            locality: Some("Dapto"),
            postal_code: Some("4670"),
            ..Default::default()
        });
        let b = tokens(RawIdentity {
            family_name: Some("Ashleigh"),
            given_name: Some("Rolliqns"),
            date_of_birth: Some("19180307"),
            address: Some("22 mcrae place mansfie l dpark"),
            locality: Some("Dato"),
            postal_code: Some("4672"),
            ..Default::default()
        });
        let p = compare(&a, &b);
        let at = |name: &str| COMPARISONS.iter().position(|c| c.name == name).unwrap();
        let level_name = |name: &str| COMPARISONS[at(name)].levels[p[at(name)] as usize];
        assert_eq!(level_name("family"), "one edit", "{p:?}");
        assert_eq!(level_name("given"), "exact", "{p:?}");
        assert_eq!(level_name("date_of_birth"), "exact");
        assert_eq!(
            level_name("address"),
            "a word",
            "22, MCRAE, PLACE of 5 and 6 words"
        );
        assert_eq!(level_name("locality"), "one edit");
        assert_eq!(level_name("postcode"), "one edit");
        assert_eq!(level_name("nhs_number"), "missing");
        assert_eq!(level_name("sex"), "missing");
    }

    /// A valid NHS number (modulus 11) made from `seed`.
    fn nhs(seed: u64) -> String {
        let mut n = 400_000_000 + seed * 7;
        loop {
            let digits: Vec<u32> = format!("{n:09}")
                .chars()
                .map(|c| c.to_digit(10).unwrap())
                .collect();
            let sum: u32 = digits
                .iter()
                .enumerate()
                .map(|(i, d)| d * (10 - i as u32))
                .sum();
            let check = (11 - sum % 11) % 11;
            if check < 10 {
                return format!("{n:09}{check}");
            }
            n += 1;
        }
    }

    #[test]
    fn typos_and_missing_nhs_numbers_still_link_and_different_people_do_not() {
        let families = [
            "Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies",
            "Patel", "Khan", "Evans", "Thomas", "Roberts", "Walker", "Wright", "Thompson",
            "Robinson", "White", "Hughes", "Edwards",
        ];
        let givens = [
            "Anna", "Ben", "Carl", "Dina", "Emma", "Fred", "Gina", "Hugo", "Iris", "Jack", "Kate",
            "Liam", "Mona", "Nick", "Olga", "Paul", "Rosa", "Sam", "Tina", "Umar",
        ];
        let mut seed = 12345u64;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let (mut records, mut truth) = (Vec::new(), Vec::new());
        for person in 0..400u64 {
            let family = families[next(20) as usize];
            let given = givens[next(20) as usize];
            // Common names and few postcodes: blocks hold several different people.
            let dob = format!(
                "19{}-{:02}-{:02}",
                40 + next(10),
                1 + next(12),
                1 + next(28)
            );
            let postcode = format!("LS{} {}AB", 1 + next(4), next(3));
            let sex = if next(2) == 0 { "F" } else { "M" };
            let mut a = record(
                0,
                0,
                [
                    Some(&nhs(person)),
                    Some(family),
                    Some(given),
                    Some(&dob),
                    Some(sex),
                    Some(&postcode),
                ],
            );
            a.pid[..2].copy_from_slice(&(person as u16).to_be_bytes());
            records.push(a);
            truth.push(person);
            if next(10) < 6 {
                // The other node: no NHS number, sometimes one letter wrong.
                let typed = if next(5) == 0 {
                    let mut chars: Vec<char> = family.chars().collect();
                    chars[2] = if chars[2] == 'x' { 'y' } else { 'x' };
                    chars.into_iter().collect::<String>()
                } else {
                    family.to_string()
                };
                let mut b = record(
                    1,
                    0,
                    [
                        None,
                        Some(&typed),
                        Some(given),
                        Some(&dob),
                        Some(sex),
                        Some(&postcode),
                    ],
                );
                b.pid[..2].copy_from_slice(&(person as u16).to_be_bytes());
                b.pid[2] = 1;
                records.push(b);
                truth.push(person);
            }
        }
        let linked = link(&records, &LinkOptions::default(), |_| {});
        let (mut tp, mut fp, mut fn_) = (0, 0, 0);
        for a in 0..records.len() {
            for b in a + 1..records.len() {
                match (linked.keys[a] == linked.keys[b], truth[a] == truth[b]) {
                    (true, true) => tp += 1,
                    (true, false) => fp += 1,
                    (false, true) => fn_ += 1,
                    _ => {}
                }
            }
        }
        assert!(tp > 200, "{tp}");
        assert_eq!((fp, fn_), (0, 0), "{:#?}", linked.report);
        assert!(
            linked.report.linked_by_score > 0,
            "typos were linked by score: {:?}",
            linked.report
        );
    }
}
