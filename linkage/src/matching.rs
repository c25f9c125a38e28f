//! Record linkage over field tokens, built for real populations where
//! people live together (households, care homes, twins, namesakes):
//!
//! 1. records holding the same `pid` at one node are one record to the
//!    queries and are grouped first;
//! 2. candidate pairs come from blocking on token equality (never all
//!    pairs), an NHS number or national id shared being one of the rules;
//! 3. the Fellegi-Sunter model ([`crate::estimate`]): u from random pairs,
//!    m counted over the pairs the data labels as matches (a shared valid
//!    NHS number or national id) and by expectation-maximisation only where
//!    labels are missing, guard rails, term-frequency adjustments, and
//!    household fields (address, postcode, locality) that may add little
//!    and count once against a pair;
//! 4. pairs at or above the threshold, with evidence about the person and
//!    not only their home, are grouped strongest first under constraints
//!    ([`crate::cluster`]): no group holds two NHS numbers or national ids,
//!    incompatible dates of birth or different given names, or more records
//!    of one node than one person has.
//!
//! Every record gets a person key: the smallest `pid` of its group (a
//! derived key when that `pid` names another group too).

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::blocking::{BLOCKING_RULES, BlockKey, BlockingRule};
use crate::cluster::Groups;
use crate::comparison::{
    self, COMPARISONS, Conflict, Pattern, at, compare, details_agree, person_evidence,
    uncorroborated_identifier, without_identifier,
};
use crate::estimate::{MSource, Model, TF_COMPARISONS, TermFrequencies, tf_value};
use crate::fields::FieldTokens;
use crate::token::{TOKEN_LEN, Token};

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
    /// The most records of one node a person's group may hold.
    pub max_records_per_source: usize,
    /// How many of the largest groups the report explains.
    pub explain_groups: usize,
}

impl Default for LinkOptions {
    fn default() -> Self {
        Self {
            threshold: 0.9,
            uncertainty: 0.4,
            max_block: 500,
            em_rounds: 25,
            u_samples: 200_000,
            max_records_per_source: 3,
            explain_groups: 5,
        }
    }
}

/// A comparison level's estimated m, u and match weight (log2 m/u).
#[derive(Debug, Clone, Serialize)]
pub struct LevelWeight {
    pub comparison: &'static str,
    pub level: &'static str,
    pub m: f64,
    pub u: f64,
    pub weight: f64,
    /// Where m came from: labelled pairs or expectation-maximisation.
    pub m_source: MSource,
}

/// How many candidate pairs a blocking rule found.
#[derive(Debug, Clone, Serialize)]
pub struct RulePairs {
    pub rule: &'static str,
    pub pairs: usize,
}

/// How many merges one constraint refused.
#[derive(Debug, Clone, Serialize)]
pub struct Refusals {
    pub constraint: Conflict,
    pub description: &'static str,
    pub merges: usize,
}

/// One of the largest groups and why its records were joined, in token
/// terms: each record's node and pid prefix, each link's comparison levels.
#[derive(Debug, Clone, Serialize)]
pub struct GroupExplained {
    pub records: usize,
    /// `node:pid-prefix` of each record.
    pub members: Vec<String>,
    /// Each link that joined it: the two records, its probability, its levels.
    pub links: Vec<String>,
}

/// What linkage did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LinkReport {
    pub records: usize,
    /// Records joined to another by the same pid at one node.
    pub linked_by_pid: usize,
    /// Further records joined by a shared NHS number (and compatible details).
    pub linked_by_nhs_number: usize,
    /// Further records joined by Fellegi-Sunter scoring.
    pub linked_by_score: usize,
    pub candidate_pairs: usize,
    /// Pairs each blocking rule found (a pair may be found by several).
    pub pairs_by_rule: Vec<RulePairs>,
    /// Candidate pairs labelled matches by a shared NHS number or national id.
    pub labelled_pairs: usize,
    /// Candidate pairs scored within the uncertainty band around the threshold.
    pub uncertain_pairs: usize,
    pub blocks_skipped: usize,
    /// Links above the threshold refused for lack of evidence about the
    /// person (only their home agreed).
    pub refused_without_person_evidence: usize,
    /// Merges refused by each constraint.
    pub refused: Vec<Refusals>,
    pub persons: usize,
    /// (group size in records, how many groups).
    pub group_sizes: Vec<(usize, usize)>,
    pub largest_groups: Vec<GroupExplained>,
    pub estimated_match_share: f64,
    /// The most household comparisons together add to a pair (log2).
    pub household_cap: f64,
    pub weights: Vec<LevelWeight>,
}

impl LinkReport {
    /// The size of the largest group.
    pub fn largest_group(&self) -> usize {
        self.group_sizes.last().map_or(0, |(size, _)| *size)
    }
}

/// Every record's person key, and the report.
#[derive(Debug, Clone)]
pub struct Linkage {
    pub keys: Vec<Token>,
    pub report: LinkReport,
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

/// Candidate pairs with their patterns, and per blocking rule the counts of
/// its pairs' patterns (for EM) with the comparisons it fixes.
struct Candidates {
    pairs: HashMap<(u32, u32), Pattern>,
    sessions: Vec<(u16, HashMap<Pattern, u64>)>,
}

fn candidates(
    records: &[LinkRecord],
    options: &LinkOptions,
    report: &mut LinkReport,
) -> Candidates {
    let mut pairs: HashMap<(u32, u32), Pattern> = HashMap::new();
    let mut sessions = Vec::new();
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
    Candidates { pairs, sessions }
}

/// The model of `records`: u from random pairs; m from labelled pairs, by
/// EM where labels are too few; guard rails; the prior.
fn estimate(
    records: &[LinkRecord],
    candidates: &Candidates,
    options: &LinkOptions,
    report: &mut LinkReport,
) -> Model {
    let mut model = Model::initial();
    model.estimate_u(records, options.u_samples);
    // Labels: pairs of different records sharing an NHS number or a
    // national id, which say nothing of the comparison that labelled them.
    // The few sharing a relative's number by mistake stay in: leaving out
    // every pair whose birth date or name differs would teach the model
    // that a person's records never disagree.
    let labelled: Vec<(Pattern, u16)> = candidates
        .pairs
        .iter()
        .filter(|((i, j), _)| {
            let (a, b) = (&records[*i as usize], &records[*j as usize]);
            !(a.source == b.source && a.pid == b.pid)
        })
        .filter_map(|(_, p)| {
            let by = u16::from(p[at::NHS] == 0) << at::NHS
                | u16::from(p[at::NATIONAL_ID] == 0) << at::NATIONAL_ID;
            (by != 0).then_some((*p, by))
        })
        .collect();
    report.labelled_pairs = labelled.len();
    let mut trial = model.clone();
    trial.m_from_labels(&labelled);
    if trial.m_source.contains(&MSource::Em) {
        // Train on each rule's pairs; a comparison's m is the mean of the
        // estimates from the rules that leave it free.
        let mut m_sums: Vec<Vec<f64>> = model.m.iter().map(|l| vec![0.0; l.len()]).collect();
        let mut m_counts = [0usize; COMPARISONS.len()];
        for (fixed, session) in &candidates.sessions {
            if session.is_empty() {
                continue;
            }
            let mut trained = model.clone();
            for _ in 0..options.em_rounds {
                trained.step(session, *fixed);
            }
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
    }
    model.m_from_labels(&labelled);
    model.guard_rails();
    // The prior: the share of matches among candidate pairs (EM on it
    // alone, m and u fixed), spread over all pairs, as u is over random pairs.
    let mut counts: HashMap<Pattern, u64> = HashMap::new();
    for pattern in candidates.pairs.values() {
        *counts.entry(*pattern).or_default() += 1;
    }
    let total = candidates.pairs.len().max(1) as f64;
    model.prior = 0.1;
    for _ in 0..options.em_rounds {
        let matches: f64 = counts
            .iter()
            .map(|(p, n)| model.probability_without(p, 0) * *n as f64)
            .sum();
        model.prior = (matches / total).clamp(1e-6, 0.999);
    }
    let n = records.len() as f64;
    let all_pairs = n * (n - 1.0) / 2.0;
    model.prior = (model.prior * total / all_pairs.max(1.0)).clamp(1e-12, 0.5);
    model
}

/// The log2 odds that a pair is one person: the prior and each
/// comparison's weight, where exact agreement on a common value weighs
/// less and on a rare one more; household comparisons count against a pair
/// once (they move together), and for a pair agreeing on nothing about the
/// person (identifier, given name, birth date) add no more than the model's
/// cap, so a shared home never outweighs being two people.
fn score(model: &Model, tf: &TermFrequencies, a: &FieldTokens, p: &Pattern) -> f64 {
    let mut odds = (model.prior / (1.0 - model.prior)).log2();
    let (mut home_for, mut home_against) = (0.0f64, 0.0f64);
    for (c, &level) in p.iter().enumerate() {
        let mut w = model.weight(c, level);
        if level == 0
            && TF_COMPARISONS.contains(&c)
            && let Some(u) = tf_value(c, a).and_then(|v| tf.u(c, v))
        {
            w = (model.m[c][0] / u).log2();
        }
        if COMPARISONS[c].household {
            if w > 0.0 {
                home_for += w;
            } else {
                home_against = home_against.min(w);
            }
        } else {
            odds += w;
        }
    }
    if !person_evidence(p) {
        home_for = home_for.min(model.household_cap);
    }
    odds + home_for + home_against
}

fn probability(log2_odds: f64) -> f64 {
    1.0 / (1.0 + (-log2_odds).exp2())
}

/// Links `records`, reporting progress through `progress`.
pub fn link(
    records: &[LinkRecord],
    options: &LinkOptions,
    mut progress: impl FnMut(&str),
) -> Linkage {
    let n = records.len();
    let mut report = LinkReport {
        records: n,
        ..Default::default()
    };
    let mut groups = Groups::new(n, options.max_records_per_source);

    // One pid at one node is one record to the queries.
    let mut by_pid: HashMap<(u32, Token), u32> = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        match by_pid.get(&(r.source, r.pid)) {
            Some(&first) => report.linked_by_pid += usize::from(groups.force(first, i as u32)),
            None => {
                by_pid.insert((r.source, r.pid), i as u32);
            }
        }
    }

    let found = candidates(records, options, &mut report);
    report.candidate_pairs = found.pairs.len();
    progress(&format!(
        "{} candidate pairs from blocking",
        found.pairs.len()
    ));
    let model = estimate(records, &found, options, &mut report);
    progress(&format!(
        "model: {} labelled pairs; m from labels for {} of {} comparisons",
        report.labelled_pairs,
        model
            .m_source
            .iter()
            .filter(|s| **s == MSource::Labels)
            .count(),
        COMPARISONS.len()
    ));
    let tf = TermFrequencies::count(records);

    // Records that share their details (birth date and given name) with
    // another record: a number they share with someone whose details differ
    // is most likely a relative's.
    let mut has_own_details = vec![false; n];
    for (&(i, j), pattern) in &found.pairs {
        if details_agree(pattern) {
            has_own_details[i as usize] = true;
            has_own_details[j as usize] = true;
        }
    }
    let weighed = |i: u32, j: u32, pattern: &Pattern| {
        if uncorroborated_identifier(pattern)
            && (has_own_details[i as usize] || has_own_details[j as usize])
        {
            without_identifier(pattern)
        } else {
            *pattern
        }
    };

    // Score every candidate, then group the links strongest first (by log
    // odds: probabilities of strong links all round to 1).
    let mut links: Vec<(f64, u32, u32)> = Vec::new();
    for (&(i, j), found_pattern) in &found.pairs {
        let pattern = &weighed(i, j, found_pattern);
        let odds = score(&model, &tf, &records[i as usize].fields, pattern);
        let p = probability(odds);
        if (p - options.threshold).abs() < options.uncertainty && p < 1.0 - 1e-9 && p > 1e-9 {
            report.uncertain_pairs += 1;
        }
        if p >= options.threshold {
            if person_evidence(pattern) {
                links.push((odds, i, j));
            } else {
                report.refused_without_person_evidence += 1;
            }
        }
    }
    links.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
    let mut accepted: Vec<(f64, u32, u32)> = Vec::new();
    for (odds, i, j) in links {
        let p = probability(odds);
        if let Ok(true) = groups.link(i, j, records) {
            if weighed(i, j, &found.pairs[&(i, j)])[at::NHS] == 0 {
                report.linked_by_nhs_number += 1;
            } else {
                report.linked_by_score += 1;
            }
            accepted.push((p, i, j));
        }
    }
    report.refused = groups
        .refused
        .iter()
        .map(|(c, merges)| Refusals {
            constraint: *c,
            description: c.describe(),
            merges: *merges,
        })
        .collect();
    progress(&format!(
        "grouping: {} links by NHS number, {} by score; {} merges refused by constraints",
        report.linked_by_nhs_number,
        report.linked_by_score,
        groups.refused.values().sum::<usize>()
    ));

    let all = groups.all();
    let keys = person_keys(records, &all);
    report.persons = all.len();
    let mut sizes: std::collections::BTreeMap<usize, usize> = Default::default();
    for g in &all {
        *sizes.entry(g.len()).or_default() += 1;
    }
    report.group_sizes = sizes.into_iter().collect();
    report.largest_groups = explain(records, &all, &accepted, &found, options.explain_groups);
    report.estimated_match_share = model.prior;
    report.household_cap = model.household_cap;
    report.weights = weights(&model);
    Linkage { keys, report }
}

/// Each group's person key: its smallest pid, or, when another group's
/// records hold that pid too (at another node), a key derived from it and
/// the group's first record's node, so no two groups share a key.
fn person_keys(records: &[LinkRecord], groups: &[Vec<u32>]) -> Vec<Token> {
    let mut keys = vec![[0u8; TOKEN_LEN]; records.len()];
    let mut taken: HashSet<Token> = HashSet::new();
    let mut ordered: Vec<(Token, u32, &Vec<u32>)> = groups
        .iter()
        .map(|g| {
            let (pid, source) = g
                .iter()
                .map(|&i| (records[i as usize].pid, records[i as usize].source))
                .min()
                .expect("groups are not empty");
            (pid, source, g)
        })
        .collect();
    ordered.sort_unstable_by_key(|(pid, source, _)| (*pid, *source));
    for (pid, source, group) in ordered {
        let key = if taken.insert(pid) {
            pid
        } else {
            let digest = Sha256::new()
                .chain_update(b"carrow person key")
                .chain_update(pid)
                .chain_update(source.to_le_bytes())
                .finalize();
            let mut derived = [0u8; TOKEN_LEN];
            derived.copy_from_slice(&digest[..TOKEN_LEN]);
            taken.insert(derived);
            derived
        };
        for &i in group {
            keys[i as usize] = key;
        }
    }
    keys
}

/// The largest groups of more than two records and the links that made them.
fn explain(
    records: &[LinkRecord],
    groups: &[Vec<u32>],
    accepted: &[(f64, u32, u32)],
    found: &Candidates,
    how_many: usize,
) -> Vec<GroupExplained> {
    let name = |i: u32| {
        let r = &records[i as usize];
        format!("{}:{}", r.source, hex::encode(&r.pid[..4]))
    };
    groups
        .iter()
        .filter(|g| g.len() > 2)
        .take(how_many)
        .map(|g| {
            let inside: HashSet<u32> = g.iter().copied().collect();
            GroupExplained {
                records: g.len(),
                members: g.iter().map(|&i| name(i)).collect(),
                links: accepted
                    .iter()
                    .filter(|(_, i, _)| inside.contains(i))
                    .map(|(p, i, j)| {
                        format!(
                            "{} ~ {} p={p:.4}: {}",
                            name(*i),
                            name(*j),
                            comparison::describe(&found.pairs[&(*i, *j)])
                        )
                    })
                    .collect(),
            }
        })
        .collect()
}

fn weights(model: &Model) -> Vec<LevelWeight> {
    let mut out = Vec::new();
    for (c, comparison) in COMPARISONS.iter().enumerate() {
        for (l, level) in comparison
            .levels
            .iter()
            .enumerate()
            .take(comparison.levels.len() - 1)
        {
            let (m, u) = (model.m[c][l], model.u[c][l]);
            out.push(LevelWeight {
                comparison: comparison.name,
                level,
                m,
                u,
                weight: (m / u).log2(),
                m_source: model.m_source[c],
            });
        }
    }
    out
}

#[cfg(test)]
mod tests;
