//! Blocking rules: which pairs of records linkage compares. Records sharing
//! a rule's key form a block, and only pairs within a block are scored, so
//! linkage never compares all pairs. Each key pairs two fields (so one wrong
//! field still leaves a pair another rule); none is as coarse as a date of
//! birth alone, which at a million records puts dozens of strangers in
//! every block. An NHS number, or a national id within one edit, is strong
//! enough alone.

use crate::comparison::bit;
use crate::fields::FieldTokens;
use crate::token::Token;

/// A block key: up to three tokens (unused places are zero).
pub type BlockKey = [Token; 3];

const NONE: Token = [0; 16];

/// One blocking rule.
pub struct BlockingRule {
    /// What the rule's records share, for reports.
    pub name: &'static str,
    /// Appends a record's keys under this rule (none when a field is missing).
    pub keys: fn(&FieldTokens, &mut Vec<BlockKey>),
    /// The comparisons (bits of [`crate::matching`]'s comparison list) that
    /// agree in every pair the rule finds, so its pairs say nothing of them.
    pub fixed: u16,
    /// Blocks larger than this are skipped, if less than the linkage-wide limit.
    pub max_block: Option<usize>,
}

fn push(out: &mut Vec<BlockKey>, parts: [Option<Token>; 3]) {
    if let [Some(a), Some(b), Some(c)] = parts {
        out.push([a, b, c]);
    }
}

/// Family and given names in a fixed order, so names written in each
/// other's place give the same key (the two share a token key).
fn names_unordered(f: &FieldTokens) -> Option<(Token, Token)> {
    let (a, b) = (f.family?, f.given?);
    Some(if a <= b { (a, b) } else { (b, a) })
}

/// Keys of each name (family or given, which share a token key) with `other`.
fn either_name_with(f: &FieldTokens, other: Option<Token>, out: &mut Vec<BlockKey>) {
    push(out, [f.family, other, Some(NONE)]);
    push(out, [f.given, other, Some(NONE)]);
}

/// Keys of every two words of the address (a street number and a street
/// name, say): one word may be misspelt and the pair still found.
fn address_word_pairs(f: &FieldTokens, out: &mut Vec<BlockKey>) {
    let words = &f.address_words;
    for (i, a) in words.iter().enumerate() {
        for b in &words[i + 1..] {
            out.push([*a, *b, NONE]);
        }
    }
}

/// The rules, in the order their pairs are found.
pub const BLOCKING_RULES: &[BlockingRule] = &[
    BlockingRule {
        name: "NHS number",
        keys: |f, out| push(out, [f.nhs_number, Some(NONE), Some(NONE)]),
        fixed: bit::NHS,
        max_block: None,
    },
    BlockingRule {
        name: "date of birth and postcode",
        keys: |f, out| push(out, [f.dob, f.postcode, Some(NONE)]),
        fixed: bit::DOB | bit::POSTCODE,
        max_block: None,
    },
    BlockingRule {
        name: "a name and date of birth",
        keys: |f, out| either_name_with(f, f.dob, out),
        fixed: bit::FAMILY | bit::GIVEN | bit::DOB,
        max_block: None,
    },
    BlockingRule {
        name: "names (either order) and postcode sector",
        keys: |f, out| {
            let names = names_unordered(f);
            push(
                out,
                [
                    names.map(|n| n.0),
                    names.map(|n| n.1),
                    f.sector.or(f.postcode),
                ],
            )
        },
        fixed: bit::FAMILY | bit::GIVEN | bit::POSTCODE,
        max_block: None,
    },
    BlockingRule {
        name: "national id within one edit",
        keys: |f, out| {
            for v in &f.national_id_variants {
                out.push([*v, NONE, NONE]);
            }
        },
        fixed: bit::NATIONAL_ID,
        max_block: None,
    },
    BlockingRule {
        name: "a name and postcode",
        keys: |f, out| either_name_with(f, f.postcode, out),
        fixed: bit::FAMILY | bit::GIVEN | bit::POSTCODE,
        max_block: None,
    },
    BlockingRule {
        name: "postcode and locality",
        keys: |f, out| push(out, [f.postcode, f.locality, Some(NONE)]),
        fixed: bit::POSTCODE | bit::LOCALITY,
        max_block: None,
    },
    BlockingRule {
        name: "a name and locality",
        keys: |f, out| either_name_with(f, f.locality, out),
        fixed: bit::FAMILY | bit::GIVEN | bit::LOCALITY,
        max_block: None,
    },
    BlockingRule {
        name: "date of birth and locality",
        keys: |f, out| push(out, [f.dob, f.locality, Some(NONE)]),
        fixed: bit::DOB | bit::LOCALITY,
        max_block: None,
    },
    BlockingRule {
        name: "two address words",
        keys: address_word_pairs,
        fixed: bit::ADDRESS,
        // Pairs of common words (a number and STREET) are in every town.
        max_block: Some(50),
    },
];
