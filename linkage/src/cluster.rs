//! Grouping linked records into persons with constraints, not bare
//! transitive closure. Links are taken strongest first; two groups merge
//! only when no record of one holds another NHS number than a record of the
//! other, the two groups do not each hold a different date of birth (beyond
//! a typo or a swap) or national id (beyond one edit) that two of their
//! records agree on,
//! and the merged group holds no more records of one source than one
//! person can have. A refused merge is counted by its reason, so one false
//! link can never chain two households, or a care home, into one "person".

use std::collections::BTreeMap;

use crate::comparison::{
    Conflict, Pattern, compare, conflict, dates_of_birth_differ, national_ids_differ,
};
use crate::fields::FieldTokens;
use crate::token::Token;

use crate::matching::LinkRecord;

/// A value two records of a group must agree on to count, when two
/// such values conflict, and the conflict they make.
type Corroborated = (
    fn(&FieldTokens) -> Option<Token>,
    fn(&Pattern) -> bool,
    Conflict,
);

/// Groups of records, merged under constraints.
pub struct Groups {
    parent: Vec<u32>,
    /// Records of each group, by its root.
    members: Vec<Vec<u32>>,
    max_per_source: usize,
    /// Merges refused, by reason.
    pub refused: BTreeMap<Conflict, usize>,
}

impl Groups {
    /// Every record alone; a group may hold at most `max_per_source`
    /// records of one source.
    pub fn new(records: usize, max_per_source: usize) -> Self {
        Self {
            parent: (0..records as u32).collect(),
            members: (0..records as u32).map(|i| vec![i]).collect(),
            max_per_source,
            refused: BTreeMap::new(),
        }
    }

    /// The group (root) of record `i`.
    pub fn find(&mut self, mut i: u32) -> u32 {
        while self.parent[i as usize] != i {
            let up = self.parent[self.parent[i as usize] as usize];
            self.parent[i as usize] = up;
            i = up;
        }
        i
    }

    /// The records of the group of record `i`.
    pub fn members(&mut self, i: u32) -> &[u32] {
        let root = self.find(i);
        &self.members[root as usize]
    }

    fn join(&mut self, a: u32, b: u32) {
        let (keep, gone) = if self.members[a as usize].len() >= self.members[b as usize].len() {
            (a, b)
        } else {
            (b, a)
        };
        self.parent[gone as usize] = keep;
        let moved = std::mem::take(&mut self.members[gone as usize]);
        self.members[keep as usize].extend(moved);
    }

    /// Merges the groups of `i` and `j` unconditionally (records that are
    /// one record to the queries: the same pid at one node). Whether they
    /// were apart.
    pub fn force(&mut self, i: u32, j: u32) -> bool {
        let (a, b) = (self.find(i), self.find(j));
        if a == b {
            return false;
        }
        self.join(a, b);
        true
    }

    /// Merges the groups of `i` and `j` unless a constraint forbids it:
    /// `Ok(true)` when merged, `Ok(false)` when already one group, the
    /// conflict otherwise (counted in [`refused`](Self::refused)).
    pub fn link(&mut self, i: u32, j: u32, records: &[LinkRecord]) -> Result<bool, Conflict> {
        let (a, b) = (self.find(i), self.find(j));
        if a == b {
            return Ok(false);
        }
        if let Err(why) = self.check(a, b, records) {
            *self.refused.entry(why).or_default() += 1;
            return Err(why);
        }
        self.join(a, b);
        Ok(true)
    }

    fn check(&self, a: u32, b: u32, records: &[LinkRecord]) -> Result<(), Conflict> {
        let (left, right) = (&self.members[a as usize], &self.members[b as usize]);
        let mut per_source: BTreeMap<u32, usize> = BTreeMap::new();
        for &r in left.iter().chain(right) {
            let n = per_source.entry(records[r as usize].source).or_default();
            *n += 1;
            if *n > self.max_per_source {
                return Err(Conflict::RecordsPerSource);
            }
        }
        for &x in left {
            for &y in right {
                let p = compare(&records[x as usize].fields, &records[y as usize].fields);
                if let Some(why) = conflict(&p) {
                    return Err(why);
                }
            }
        }
        let corroborated: [Corroborated; 2] = [
            (|f| f.dob, dates_of_birth_differ, Conflict::DatesOfBirth),
            (
                |f| f.national_id,
                national_ids_differ,
                Conflict::NationalIds,
            ),
        ];
        for (value, differ, why) in corroborated {
            for &x in &corroborated_values(left, records, value) {
                for &y in &corroborated_values(right, records, value) {
                    let p = compare(&records[x as usize].fields, &records[y as usize].fields);
                    if differ(&p) {
                        return Err(why);
                    }
                }
            }
        }
        Ok(())
    }

    /// Every group's records (roots only), largest first.
    pub fn all(&mut self) -> Vec<Vec<u32>> {
        let mut out: Vec<Vec<u32>> = (0..self.parent.len() as u32)
            .filter(|i| self.parent[*i as usize] == *i)
            .map(|i| self.members[i as usize].clone())
            .collect();
        out.sort_by_key(|g| std::cmp::Reverse(g.len()));
        out
    }
}

/// One record for each value (of `value`) that at least two records of
/// `group` hold.
fn corroborated_values(
    group: &[u32],
    records: &[LinkRecord],
    value: fn(&FieldTokens) -> Option<Token>,
) -> Vec<u32> {
    if group.len() < 2 {
        return Vec::new();
    }
    let mut seen: BTreeMap<Token, (u32, usize)> = BTreeMap::new();
    for &r in group {
        if let Some(v) = value(&records[r as usize].fields) {
            seen.entry(v).or_insert((r, 0)).1 += 1;
        }
    }
    seen.into_values()
        .filter(|(_, n)| *n >= 2)
        .map(|(r, _)| r)
        .collect()
}
