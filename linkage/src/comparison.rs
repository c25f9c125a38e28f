//! How two records compare, field by field: each comparison has graded
//! levels (best first, "missing" last), computed from field tokens only.

use crate::fields::{Field, FieldTokens, share_variant, shared};
use crate::token::Token;

/// One comparison and its levels, best first; the last level is "missing".
pub struct Comparison {
    pub name: &'static str,
    pub levels: &'static [&'static str],
    /// Whether members of one household usually agree on it (address,
    /// postcode, locality): such agreement is weak evidence of one person.
    pub household: bool,
}

pub const COMPARISONS: [Comparison; 9] = [
    Comparison {
        name: "nhs_number",
        levels: &["agree", "disagree", "missing"],
        household: false,
    },
    Comparison {
        name: "national_id",
        levels: &["exact", "one edit", "disagree", "missing"],
        household: false,
    },
    Comparison {
        name: "family",
        levels: &["exact", "one edit", "phonetic", "disagree", "missing"],
        household: false,
    },
    Comparison {
        name: "given",
        levels: &[
            "exact", "one edit", "nickname", "initial", "disagree", "missing",
        ],
        household: false,
    },
    Comparison {
        name: "date_of_birth",
        levels: &["exact", "one digit", "year or day", "disagree", "missing"],
        household: false,
    },
    Comparison {
        name: "sex",
        levels: &["agree", "disagree", "missing"],
        household: false,
    },
    Comparison {
        name: "postcode",
        levels: &["exact", "one edit", "sector", "disagree", "missing"],
        household: true,
    },
    Comparison {
        name: "address",
        levels: &["all words", "most words", "a word", "disagree", "missing"],
        household: true,
    },
    Comparison {
        name: "locality",
        levels: &["exact", "one edit", "disagree", "missing"],
        household: true,
    },
];

/// Positions of the comparisons in [`COMPARISONS`].
pub mod at {
    pub const NHS: usize = 0;
    pub const NATIONAL_ID: usize = 1;
    pub const FAMILY: usize = 2;
    pub const GIVEN: usize = 3;
    pub const DOB: usize = 4;
    pub const SEX: usize = 5;
    pub const POSTCODE: usize = 6;
    pub const ADDRESS: usize = 7;
    pub const LOCALITY: usize = 8;
}

/// Bits of a comparison set, by position in [`COMPARISONS`].
pub mod bit {
    use super::at;
    pub const NHS: u16 = 1 << at::NHS;
    pub const NATIONAL_ID: u16 = 1 << at::NATIONAL_ID;
    pub const FAMILY: u16 = 1 << at::FAMILY;
    pub const GIVEN: u16 = 1 << at::GIVEN;
    pub const DOB: u16 = 1 << at::DOB;
    pub const POSTCODE: u16 = 1 << at::POSTCODE;
    pub const ADDRESS: u16 = 1 << at::ADDRESS;
    pub const LOCALITY: u16 = 1 << at::LOCALITY;
}

/// The agreement pattern of a pair: one level per comparison.
pub type Pattern = [u8; COMPARISONS.len()];

/// The "missing" level of comparison `c`.
pub fn missing(c: usize) -> u8 {
    COMPARISONS[c].levels.len() as u8 - 1
}

/// The "disagree" level of comparison `c`.
pub fn disagree(c: usize) -> u8 {
    COMPARISONS[c].levels.len() as u8 - 2
}

fn same(a: Option<&Token>, b: Option<&Token>) -> Option<bool> {
    Some(a? == b?)
}

/// The level of one comparison whose levels are: exact, each partial
/// agreement of `partial` (tried in order, only when needed), disagree,
/// missing. `exact` is `None` when either side is missing.
pub(crate) fn level(exact: Option<bool>, partial: &[&dyn Fn() -> bool]) -> u8 {
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

/// Family name levels: exact, one edit, phonetic, disagree, missing.
fn family(x: Option<&Token>, xv: &[Token], y: Option<&Token>, yv: &[Token], phonetic: bool) -> u8 {
    level(same(x, y), &[&|| share_variant(xv, yv), &|| phonetic])
}

/// Given name levels: exact, one edit, nickname, initial, disagree, missing.
fn given(a: &FieldTokens, b: &FieldTokens) -> u8 {
    level(
        same(a.given.as_ref(), b.given.as_ref()),
        &[
            &|| share_variant(&a.given_variants, &b.given_variants),
            &|| same(a.given_canonical.as_ref(), b.given_canonical.as_ref()) == Some(true),
            &|| same(a.given_initial.as_ref(), b.given_initial.as_ref()) == Some(true),
        ],
    )
}

/// Family and given name levels, taking one record's names the other way
/// round when that agrees better (they were written in each other's place).
fn compare_names(a: &FieldTokens, b: &FieldTokens) -> (u8, u8) {
    let phonetic = same(a.family_phonetic.as_ref(), b.family_phonetic.as_ref()) == Some(true);
    let straight = (
        family(
            a.family.as_ref(),
            &a.family_variants,
            b.family.as_ref(),
            &b.family_variants,
            phonetic,
        ),
        given(a, b),
    );
    if straight == (0, 0) {
        return straight;
    }
    // Only exact and one-edit agreement carry across the two parts (phonetic
    // codes, canonical forms and initials are of one part only).
    let crossed = |x: Option<&Token>, xv: &[Token], y: Option<&Token>, yv: &[Token]| {
        level(same(x, y), &[&|| share_variant(xv, yv)])
    };
    let to_levels = |l: u8| match l {
        0 => (0, 0),
        1 => (1, 1),
        2 => (3, 4),
        _ => (4, 5),
    };
    let f = to_levels(crossed(
        a.family.as_ref(),
        &a.family_variants,
        b.given.as_ref(),
        &b.given_variants,
    ));
    let g = to_levels(crossed(
        a.given.as_ref(),
        &a.given_variants,
        b.family.as_ref(),
        &b.family_variants,
    ));
    let swapped = (f.0, g.1);
    let known = |(f, g): (u8, u8)| f < 4 && g < 5;
    let rank = |(f, g): (u8, u8)| f.min(3) + g.min(4);
    if known(swapped) && known(straight) && rank(swapped) < rank(straight) {
        swapped
    } else {
        straight
    }
}

/// How two records compare.
pub fn compare(a: &FieldTokens, b: &FieldTokens) -> Pattern {
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

/// Why two records cannot be one person, whatever else they share: two
/// different valid NHS numbers (a mistyped NHS number fails its check
/// digit and is missing, so two valid ones are two people).
pub fn conflict(p: &Pattern) -> Option<Conflict> {
    (p[at::NHS] == disagree(at::NHS)).then_some(Conflict::NhsNumbers)
}

/// Whether a pair's national ids differ beyond one edit.
pub fn national_ids_differ(p: &Pattern) -> bool {
    p[at::NATIONAL_ID] == disagree(at::NATIONAL_ID)
}

/// Whether a pair's given names differ beyond a typo, a nickname or a
/// spelling (an initial in common is not enough: twins share one).
pub fn given_names_differ(p: &Pattern) -> bool {
    p[at::GIVEN] == 3 || p[at::GIVEN] == disagree(at::GIVEN)
}

/// Whether a pair's dates of birth differ beyond a one-digit typo or a
/// day and month swapped.
pub fn dates_of_birth_differ(p: &Pattern) -> bool {
    p[at::DOB] == disagree(at::DOB)
}

/// A shared NHS number or national id that the person's details do not
/// corroborate: both the birth date and the given name differ. (One of the
/// two differing is a typo or a replaced value, which the identifier
/// outweighs.) A record can carry a relative's number by mistake: a
/// parent's, a child's, a partner's, with another birth date and name.
pub fn uncorroborated_identifier(p: &Pattern) -> bool {
    (p[at::NHS] == 0 || p[at::NATIONAL_ID] == 0)
        && dates_of_birth_differ(p)
        && given_names_differ(p)
}

/// Whether a pair agrees on the person's details: birth date (within a
/// typo) and given name (within a typo, nickname or spelling).
pub fn details_agree(p: &Pattern) -> bool {
    p[at::DOB] <= 1 && p[at::GIVEN] <= 2
}

/// `p` with its identifier agreement taken as missing: how a pair is
/// weighed when its shared number is uncorroborated and one of its records
/// has another record whose details it shares (its own person, elsewhere),
/// so the number is most likely a relative's.
pub fn without_identifier(p: &Pattern) -> Pattern {
    let mut out = *p;
    if out[at::NHS] == 0 {
        out[at::NHS] = missing(at::NHS);
    }
    if out[at::NATIONAL_ID] == 0 {
        out[at::NATIONAL_ID] = missing(at::NATIONAL_ID);
    }
    out
}

/// Whether a pair agrees on something about the person, not only about
/// where they live: an identifier, the date of birth or the given name.
pub fn person_evidence(p: &Pattern) -> bool {
    p[at::NHS] == 0 || p[at::NATIONAL_ID] <= 1 || p[at::DOB] <= 1 || p[at::GIVEN] <= 2
}

/// A reason a link was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Conflict {
    NhsNumbers,
    /// Each group holds a national id that two of its records agree on,
    /// and the two differ beyond one edit (national ids carry no check
    /// digit, so one record's typo is not a second id).
    NationalIds,
    /// Each group holds a date of birth that two of its records agree on,
    /// and the two differ beyond a typo or a swap.
    DatesOfBirth,
    /// The group would hold more records of one source than one person has.
    RecordsPerSource,
}

impl Conflict {
    /// The constraint in words, for reports.
    pub fn describe(self) -> &'static str {
        match self {
            Conflict::NhsNumbers => "two different NHS numbers",
            Conflict::NationalIds => "two national ids, each held by two records",
            Conflict::DatesOfBirth => {
                "two dates of birth, each held by two records, further apart than a typo or a swap"
            }
            Conflict::RecordsPerSource => "more records at one node than one person has",
        }
    }
}

/// A pattern in words: each comparison's level, "missing" left out.
pub fn describe(p: &Pattern) -> String {
    COMPARISONS
        .iter()
        .zip(p)
        .filter(|(c, l)| **l as usize != c.levels.len() - 1)
        .map(|(c, l)| format!("{} {}", c.name, c.levels[*l as usize]))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::FieldTokeniser;
    use crate::identity::{Identity, RawIdentity};
    use crate::secret::LinkageSecret;

    fn tokens(raw: RawIdentity<'_>) -> FieldTokens {
        let secret = LinkageSecret::from_bytes([3u8; 32]);
        FieldTokeniser::new(&secret, "p").tokens(&Identity::normalise(&raw))
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

    fn level_name(p: &Pattern, name: &str) -> &'static str {
        let at = COMPARISONS.iter().position(|c| c.name == name).unwrap();
        COMPARISONS[at].levels[p[at] as usize]
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
        assert_eq!(level_name(&p, "family"), "one edit", "{p:?}");
        assert_eq!(level_name(&p, "given"), "exact", "{p:?}");
        assert_eq!(level_name(&p, "date_of_birth"), "exact");
        assert_eq!(
            level_name(&p, "address"),
            "a word",
            "22, MCRAE, PLACE of 5 and 6 words"
        );
        assert_eq!(level_name(&p, "locality"), "one edit");
        assert_eq!(level_name(&p, "postcode"), "one edit");
        assert_eq!(level_name(&p, "nhs_number"), "missing");
        assert_eq!(level_name(&p, "sex"), "missing");
    }

    #[test]
    fn nicknames_agree_and_a_relatives_number_is_not_evidence() {
        let person = |given: &str, dob: &str, nhs: Option<&'static str>| {
            tokens(RawIdentity {
                nhs_number: nhs,
                family_name: Some("Smith"),
                given_name: Some(given),
                date_of_birth: Some(dob),
                sex: Some("M"),
                postcode: Some("LS6 2QT"),
                address: Some("12 Park Road"),
                ..Default::default()
            })
        };
        let william = person("William", "1950-02-03", Some("9434765919"));
        let bill = person("Bill", "1950-02-03", None);
        let p = compare(&william, &bill);
        assert_eq!(level_name(&p, "given"), "nickname");
        assert_eq!(conflict(&p), None);
        assert!(person_evidence(&p));
        // Twins differ in their given names, even with the same initial.
        for twin in ["Walter", "Oliver"] {
            let p = compare(&william, &person(twin, "1950-02-03", None));
            assert!(given_names_differ(&p), "{twin}: {p:?}");
        }
        // A relative's NHS number on a record: shared, but the birth date
        // and given name are someone else's; weighed without the number,
        // nothing about the person agrees.
        let father = person("Henry", "1922-11-30", Some("9434765919"));
        let p = compare(&william, &father);
        assert!(uncorroborated_identifier(&p) && dates_of_birth_differ(&p));
        assert!(person_evidence(&p) && !person_evidence(&without_identifier(&p)));
        // Two NHS numbers are two people.
        let other = person("William", "1950-02-03", Some("4010232137"));
        assert_eq!(
            conflict(&compare(&william, &other)),
            Some(Conflict::NhsNumbers)
        );
        // Living at the same address is not evidence of being one person.
        let lodger = tokens(RawIdentity {
            family_name: Some("Smith"),
            postcode: Some("LS6 2QT"),
            address: Some("12 Park Road"),
            ..Default::default()
        });
        assert!(!person_evidence(&compare(&william, &lodger)));
    }
}
